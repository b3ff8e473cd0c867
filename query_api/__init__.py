"""The HTTP surface of a query node.

``create_app`` is imported on first use, so the token rules (``query_api.tokens``)
load without Starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from query_api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from query_api.app import create_app

        return create_app
    raise AttributeError(f"module 'query_api' has no attribute {name!r}")
