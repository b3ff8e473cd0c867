"""``velora portal fetch``: install the portal's chart library from the npm registry.

Runs ``npm pack <name>@<version>`` (the ordinary npm client, into a temporary
folder), checks the tarball against the pinned integrity
(``query_api.portal_routes.UPLOT``, sha512 as the registry publishes it), and
extracts the files the portal serves into ``<cache_dir>/npm/<name>-<version>/``.
A ``.complete`` marker makes every later fetch return at once, as
``velora kafka fetch`` does for the broker's jars.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from velora.errors import ConfigError, Unavailable
from velora.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``velora portal fetch``."""
    p = sub.add_parser("portal", help="the portal page's assets")
    ps = p.add_subparsers(dest="portal_command", required=True, metavar="ACTION")
    fetch = ps.add_parser("fetch", help="fetch the pinned chart library from the npm registry")
    fetch.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    from query_api.portal_routes import UPLOT

    target = UPLOT.directory(settings.cache_dir)
    done = fetch_asset(UPLOT.name, UPLOT.version, UPLOT.integrity, UPLOT.files, target)
    print(f"{UPLOT.name} {UPLOT.version} {'ready' if done else 'already fetched'} in {target}")
    return 0


def fetch_asset(
    name: str, version: str, integrity: str, files: dict[str, str], target: Path
) -> bool:
    """Fetch and check one pinned npm package; False when it was already there."""
    marker = target / ".complete"
    if marker.exists():
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("npm is needed to fetch the portal's chart library (install Node.js)")
    with tempfile.TemporaryDirectory(prefix="velora-npm-") as tmp:
        result = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,
        )
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise Unavailable(f"npm pack {name}@{version} failed (exit {result.returncode})")
        tarball = Path(tmp) / f"{name}-{version}.tgz"
        data = tarball.read_bytes()
        got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if got != integrity:
            raise Unavailable(f"{name}@{version} does not match its pinned integrity")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for inner, served in files.items():
                member = tar.extractfile(inner)
                if member is None:
                    raise Unavailable(f"{name}@{version} has no {inner}")
                (target / served).write_bytes(member.read())
    marker.write_text(f"{name}@{version} {integrity}\n", encoding="utf-8")
    return True
