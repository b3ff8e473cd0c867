"""The process's own memory: resident size, handing freed heap back to the OS, and
keeping what start-up made out of the cycle collector's scans (:func:`freeze_start_up`),
and a server's collector thresholds (:func:`prepare_to_serve`).

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


SERVING_GC_THRESHOLDS = (10_000, 20, 20)
"""The cycle collector's thresholds for a server under load (Python's defaults: 700,
10, 10): the query node and the webhook dispatcher (:func:`prepare_to_serve`).

A request or a delivery allocates a few dozen short-lived containers (the request
and its headers, the principal, coroutines, tasks, futures), so with the defaults the
young generation is collected every few requests. Whatever is in flight then
survives, is moved to the older generations, and soon counts for a full collection,
which walks every tracked object (the query node's heads included) on the thread
that holds the GIL, while every request waits. Reference cycles are still
collected, in fewer, larger passes. Measured:

- The query node (10M events, the query benchmark's node and scenarios, one node
  per run, two runs each): over the same 80 s of load, 94 young collections instead
  of 2,450-2,600 and one full collection instead of 20-21 (of 26-57 ms each); the
  maximum rate of the biggest tenant's first page 632-651 req/s against 553-559, of
  one target id's head pages 460-511 against 286-307 (``docs/ledger.md``).
- The webhook dispatcher (with start-up frozen too): 0.445 ms of CPU per json event
  instead of 0.473, and 2,043 and 2,067 events/s instead of 1,923 and 1,901 (the
  webhook benchmark's json throughput alone, alternating, two rounds each;
  ``docs/webhooks.md``).
"""


def prepare_to_serve(thresholds: tuple[int, int, int] = SERVING_GC_THRESHOLDS) -> None:
    """For a server about to serve: freeze what start-up made out of the collector's
    scans (:func:`freeze_start_up`), then collect less often (``thresholds``)."""
    freeze_start_up()
    gc.set_threshold(*thresholds)


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
