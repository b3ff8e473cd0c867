"""``velora tokenizer ...``: the PHI tokenizer (:mod:`phi.cli`), also ``velora-tokenizer``.

The same subcommands and exit codes as the standalone console script; the
tokenizer needs no ``VELORA_*`` setting (it works with the keyset file it is given).
"""

from __future__ import annotations

import argparse
import sys

from phi.cli import add_commands, run
from velora.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``tokenizer`` command group."""
    p = sub.add_parser(
        "tokenizer",
        help="PHI tokens with a keyset file (client- and sidecar-mode; docs/phi.md)",
        description="Tokenize, detokenize and search PHI values with an AES-SIV keyset file.",
    )
    add_commands(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return run(args, sys.stdin, sys.stdout, sys.stderr)
