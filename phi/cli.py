"""``velora-tokenizer`` (also ``velora tokenizer``): PHI tokens with the customer's keyset.

Subcommands::

    keys generate --tenant T FILE       a new keyset (mode 0600; refuses to overwrite)
    keys rotate FILE                    a new primary key; older keys stay decrypt-only
    tokenize   --keyset FILE --domain D VALUE
    tokenize   --keyset FILE (--field PATH=DOMAIN ... | --events [--metadata-key K ...])
               [--format ndjson|json] [--progress]      < input > output
    detokenize (the same options)
    search-tokens --keyset FILE --domain D VALUE         one token per key, primary first

With ``--field`` or ``--events`` the input is read from stdin: NDJSON (one document
per line, streamed; the default) or one JSON document (``--format json``: an object
or a list of objects). ``--events`` applies the audit-event field map of
:mod:`phi.fields` (the schema's ``"phi"`` declarations). A progress bar goes to
stderr when asked (``--progress``) or when stderr is a terminal and the input a
file of more than 1 MiB.

**Failure.** A wrong keyset, a malformed token or a domain mismatch prints one
line ``velora-tokenizer: error: <where>: <reason>`` on stderr and exits 1 (usage
errors exit 2). Nothing of the failing value or document is printed: single values
print nothing, streams stop before the failing document (every line already
written is a whole document, fully processed).

Imports only the standard library, ``cryptography`` and the project's core error
types, so it runs where the customer's keys are without the server's stack.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from phi.keyset import Keyset, load_keyset, save_keyset
from velora.errors import ConfigError, ErrorDetail, ValidationError, VeloraError

PROG = "velora-tokenizer"
PROGRESS_MIN_BYTES = 1024 * 1024
PROGRESS_EVERY = 2000


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the tokenizer subcommands to ``parser`` (of ``velora-tokenizer`` or ``velora``)."""
    cmds = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    keys = cmds.add_parser("keys", help="generate or rotate a keyset file")
    kcmds = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = kcmds.add_parser("generate", help="write a new keyset (mode 0600)")
    gen.add_argument("--tenant", required=True, help="the tenant whose tokens the keyset makes")
    gen.add_argument("file", type=Path)
    gen.set_defaults(run=_generate)
    rot = kcmds.add_parser("rotate", help="add a new primary key; older keys decrypt only")
    rot.add_argument("file", type=Path)
    rot.set_defaults(run=_rotate)
    for name, direction in (("tokenize", "tokens"), ("detokenize", "values")):
        p = cmds.add_parser(name, help=f"turn one value or fields of JSON/NDJSON into {direction}")
        p.add_argument("--keyset", type=Path, required=True)
        p.add_argument("--domain", help="the token domain of VALUE (email, name, patient_id...)")
        p.add_argument("--field", action="append", default=[], metavar="PATH=DOMAIN")
        p.add_argument("--events", action="store_true", help="audit events: the schema's PHI map")
        p.add_argument("--metadata-key", action="append", default=[], metavar="KEY")
        p.add_argument("--format", choices=("ndjson", "json"), default="ndjson")
        p.add_argument("--progress", action="store_true", help="progress bar on stderr")
        p.add_argument("value", nargs="?", help="one value (with --domain)")
        p.set_defaults(run=_convert, reverse=name == "detokenize")
    search = cmds.add_parser("search-tokens", help="the tokens of VALUE under every key")
    search.add_argument("--keyset", type=Path, required=True)
    search.add_argument("--domain", required=True)
    search.add_argument("value")
    search.set_defaults(run=_search)


def run(args: argparse.Namespace, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """Run parsed tokenizer arguments; the exit code (errors print one line on ``stderr``)."""
    try:
        return int(args.run(args, stdin, stdout, stderr) or 0)
    except VeloraError as exc:
        stdout.flush()
        print(f"{PROG}: error: {exc.message}", file=stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The ``velora-tokenizer`` console script."""
    parser = argparse.ArgumentParser(prog=PROG, description="Velora PHI tokens (AES-SIV).")
    add_commands(parser)
    args = parser.parse_args(argv)
    return run(args, sys.stdin, sys.stdout, sys.stderr)


def _generate(args: argparse.Namespace, _in: IO[str], out: IO[str], _err: IO[str]) -> int:
    keyset = Keyset.generate(args.tenant)
    save_keyset(keyset, args.file)
    print(f"keyset for tenant {keyset.tenant_id} written to {args.file}, "
          f"primary key {keyset.primary.kid}", file=out)  # fmt: skip
    return 0


def _rotate(args: argparse.Namespace, _in: IO[str], out: IO[str], _err: IO[str]) -> int:
    keyset = load_keyset(args.file).rotate()
    save_keyset(keyset, args.file, overwrite=True)
    print(f"new primary key {keyset.primary.kid}; {len(keyset.keys) - 1} older key(s) "
          "kept for decryption", file=out)  # fmt: skip
    return 0


def _search(args: argparse.Namespace, _in: IO[str], out: IO[str], _err: IO[str]) -> int:
    from phi.tokens import Tokenizer

    tokens = Tokenizer(load_keyset(args.keyset)).search_tokens(args.value, args.domain)
    out.write("".join(t + "\n" for t in tokens))
    return 0


def _convert(args: argparse.Namespace, stdin: IO[str], out: IO[str], err: IO[str]) -> int:
    from phi.fields import map_event
    from phi.paths import FieldPath
    from phi.tokens import Tokenizer

    paths = [FieldPath.parse(spec) for spec in args.field]
    document_mode = bool(paths) or args.events
    if document_mode == (args.value is not None):
        raise _usage("give either VALUE with --domain, or --field/--events with input on stdin")
    tok = Tokenizer(load_keyset(args.keyset))
    fn: Callable[[str, str, str], str] = (
        (lambda v, d, w: tok.detokenize(v, d, w))
        if args.reverse
        else (lambda v, d, _w: tok.tokenize(v, d))
    )
    if not document_mode:
        if not args.domain:
            raise _usage("VALUE needs --domain")
        out.write(fn(args.value, args.domain, "value") + "\n")
        return 0

    def convert(doc: Any, where: str) -> Any:
        if not isinstance(doc, dict):
            raise _at(where, "must be a JSON object")
        try:
            if args.events:
                doc = map_event(doc, fn, args.metadata_key)
            for path in paths:
                path.apply(doc, fn)
        except ValidationError as exc:
            raise _at(where, exc.message) from None
        return doc

    if args.format == "json":
        try:
            data = json.load(stdin)
        except ValueError:
            raise _at("input", "is not valid JSON") from None
        if isinstance(data, list):
            data = [convert(d, f"input[{i}]") for i, d in enumerate(data)]
        else:
            data = convert(data, "input")
        json.dump(data, out, ensure_ascii=False)
        out.write("\n")
        return 0
    bar = _Progress(stdin, err, args.progress)
    for n, line in _lines(stdin, bar):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise _at(f"line {n}", "is not valid JSON") from None
        out.write(json.dumps(convert(doc, f"line {n}"), ensure_ascii=False) + "\n")
    bar.close()
    return 0


def _lines(stdin: IO[str], bar: _Progress) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(stdin, start=1):
        bar.step(len(line))
        yield n, line


class _Progress:
    """A one-line progress bar on stderr: records, bytes and (for files) the percentage."""

    def __init__(self, stdin: IO[str], err: IO[str], forced: bool) -> None:
        self._err = err
        self._total = _input_size(stdin)
        big = self._total is not None and self._total > PROGRESS_MIN_BYTES
        self._on = forced or (big and err.isatty())
        self._records = self._bytes = 0
        self._started = time.monotonic()

    def step(self, size: int) -> None:
        self._records += 1
        self._bytes += size
        if self._on and self._records % PROGRESS_EVERY == 0:
            self._draw()

    def _draw(self) -> None:
        rate = self._records / max(time.monotonic() - self._started, 1e-6)
        line = f"\r{self._records:,} records, {rate:,.0f}/s"
        if self._total:
            done = min(1.0, self._bytes / self._total)
            filled = int(done * 30)
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done:4.0%} " + line[1:]
        self._err.write(line)
        self._err.flush()

    def close(self) -> None:
        if self._on:
            self._draw()
            self._err.write("\n")


def _input_size(stdin: IO[str]) -> int | None:
    try:
        st = os.fstat(stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _usage(reason: str) -> ConfigError:
    return ConfigError(reason)


def _at(where: str, reason: str) -> ValidationError:
    return ValidationError(f"{where}: {reason}", (ErrorDetail(where, reason),))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
