"""`velora keys` subcommands (filled in by the area that owns them)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's commands (none yet)."""
