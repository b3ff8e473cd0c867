"""The process's own memory: resident size, handing freed heap back to the OS, and
keeping what start-up made out of the cycle collector's scans (:func:`freeze_start_up`).

After a burst of large, interleaved allocations (hundreds of uploads at once, each
read in 64 KiB pieces) two things keep the process as big as at its peak:
objects in reference cycles (an exception's traceback holds the frames that held
the data) wait for the cycle collector's rare full pass, and glibc keeps the
freed pages of its heap for reuse. :func:`release_free_memory` runs a full
collection, then asks glibc to return free pages (``malloc_trim(0)``, which also
releases free pages in the middle of the heap; skipped when the C library is not
glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from pathlib import Path


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


def release_free_memory() -> bool:
    """Collect cyclic garbage and return the heap's free pages to the OS (when glibc can)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def freeze_start_up() -> None:
    """Move what start-up made (modules, schemas, clients, the app) out of the cycle
    collector's scans, for a server about to serve: collect first, so no garbage is
    kept, then ``gc.freeze()``. Every full collection otherwise walks all of it, on
    the thread that holds the GIL, while every request waits."""
    gc.collect()
    gc.freeze()


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default) from ``/proc``; 0 elsewhere."""
    path = Path(f"/proc/{pid or os.getpid()}/status")
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0
