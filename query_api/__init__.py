"""The HTTP surface of a query node."""

from query_api.app import create_app

__all__ = ["create_app"]
