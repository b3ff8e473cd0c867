"""The ``velora`` command line: one entry point, one subcommand module per area.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` and sets
``func`` on its parsers; ``func(args, settings) -> int`` is the exit code. Errors
of the project's own hierarchy print as one clear line and exit 2.

Command modules import only the standard library and the project's core at the
top; everything heavy (uvicorn, Starlette, DuckDB, pyarrow, kafka-python) is
imported inside the handler that needs it, so ``velora --help`` and the operator
commands start fast (``tests/test_cli.py`` checks what each one loads).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from velora.errors import VeloraError
from velora.settings import Settings

COMMAND_MODULES = (
    "cli.commands.kafka",
    "cli.commands.run",
    "cli.commands.node",
    "cli.commands.ingest",
    "cli.commands.ledger",
    "cli.commands.keys",
    "cli.commands.demo",
    "cli.commands.portal",
    "cli.commands.webhooks",
    "cli.commands.tenants",
    "cli.commands.tokenizer",
    "cli.commands.sidecar",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="velora",
        description="Velora audit ledger: broker, ingest, query node and operator tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def subcommand_names(parser: argparse.ArgumentParser | None = None) -> set[tuple[str, ...]]:
    """Every runnable command path, e.g. ``("kafka", "start")`` (used by tests)."""
    parser = parser or build_parser()
    paths: set[tuple[str, ...]] = set()

    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            paths.add(prefix)
            return
        for action in subs:
            for name, child in action.choices.items():
                walk(child, (*prefix, name))

    walk(parser, ())
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        for client in ("kafka", "aiokafka"):  # their INFO lines are connection chatter
            logging.getLogger(client).setLevel(logging.WARNING)
        return int(args.func(args, settings) or 0)
    except VeloraError as exc:
        print(f"velora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
