"""Shared test utilities: waiting on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from velora.broker import BrokerConfig, LocalBroker

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("VELORA_CACHE_DIR", REPO / ".cache"))
KAFKA_VERSION = os.environ.get("VELORA_KAFKA_VERSION", "4.0.2")


def make_broker(state_dir: Path) -> LocalBroker:
    """A broker with its own state folder and free ports (for tests that stop/start one)."""
    return LocalBroker(
        BrokerConfig(state_dir=state_dir, cache_dir=CACHE_DIR, version=KAFKA_VERSION, heap_mb=512)
    )


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or condition}: {last!r}"
            )
        time.sleep(interval)


def thread_stacks() -> str:
    """Every thread's stack in this process (an in-process server's too), for a failure message."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"--- thread {names.get(ident, ident)}\n{stack}")
    return "\n".join(parts)
