"""Fetch the Apache Kafka broker's jars from Maven Central into a git-ignored cache.

The classpath is ``org.apache.kafka:kafka_2.13:<version>`` with its runtime
dependencies and a log4j2 binding for SLF4J (see ``pom.xml`` beside this file).
A second fetch of the same version finds the ``.complete`` marker and returns at once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from velora.errors import BrokerError

POM = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
_MARKER = ".complete"


def libs_dir(cache_dir: Path, version: str) -> Path:
    """Where the jars of one Kafka version live."""
    return cache_dir.resolve() / "kafka" / version / "libs"


def is_fetched(cache_dir: Path, version: str) -> bool:
    """True when a complete classpath for ``version`` is already cached."""
    return (libs_dir(cache_dir, version) / _MARKER).exists()


def fetch(cache_dir: Path, version: str, *, quiet: bool = False) -> Path:
    """Resolve and copy the broker's jars; return the folder that holds them.

    Raises :class:`BrokerError` with Maven's own output when it cannot resolve them.
    """
    target = libs_dir(cache_dir, version)
    if (target / _MARKER).exists():
        if not quiet:
            print(f"kafka {version}: jars already cached in {target}", file=sys.stderr)
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed to fetch the Kafka broker")
    if shutil.which("java") is None:
        raise BrokerError("java is not on PATH; the Kafka broker needs a JDK 17+")
    staging = target.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        f"-Dmaven.repo.local={cache_dir.resolve() / 'm2'}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    if not quiet:
        print(f"kafka {version}: fetching broker jars from Maven Central ...", file=sys.stderr)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        output = (proc.stdout + proc.stderr).strip()[-4000:]
        raise BrokerError(
            f"could not fetch org.apache.kafka:kafka_2.13:{version} "
            f"(exit {proc.returncode}): {' '.join(cmd)}\n{output}"
        )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / _MARKER).write_text(version + "\n", encoding="utf-8")
    if not quiet:
        count = len(list(target.glob("*.jar")))
        print(
            f"kafka {version}: {count} jars fetched in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
    return target
