"""The copy warmer: keeps the sorted copies in DuckDB's buffer pool.

A page of one actor or one target id (:mod:`query_api.sorted_pages`) reads one row
group of every run of a sorted copy (:mod:`ledger.sorted_copies`): the key, ``seq``,
the tenant and the id itself over the row group, then every column of the page's
rows, one vector each. The first time a row group is asked for, DuckDB reads those
blocks from the file. On a host that reclaims idle file pages early (the benchmark
host pages out any file page left untouched for about 6 s) each is a disk read, so
the first ask of an id costs a few dozen of them: at 10M events, one actor's first
ask at the node took 30-33 ms at p50 and 78-81 ms at p99, and 28-29 ms and 39-43 ms
with the copies warm.

The warmer reads every column of every run (DuckDB's buffer pool is the process's
own memory, which no page-cache reclaim touches: about 140 MB per million events,
1.4 GB and 12 s from a cold disk at 10M), newest run first, and each new or merged
run once the copy keeper has written it. It stops while DuckDB uses
:data:`BUDGET_SHARE` of its memory limit or more, and goes on once it uses less: the
writer's and the analytics' memory come first, and DuckDB evicts warmed blocks like
any others when it needs the room.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import duckdb

from ledger.keeper import Keeper
from ledger.sorted_copies import BY_ACTOR, BY_TARGET, Run, runs
from ledger.store import LedgerStore

INTERVAL_S = 5.0
"""How often the warmer looks for runs the copy keeper wrote (the keeper's own pace)."""
BUDGET_SHARE = 0.5
"""The share of DuckDB's memory limit past which no more runs are warmed."""
COPIES = (BY_ACTOR, BY_TARGET)
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")


def size_bytes(text: str) -> int | None:
    """Bytes of a size as DuckDB prints one (``'18.8 GiB'``, ``'500.0 MiB'``); None
    when ``text`` is not one."""
    found = _SIZE.match(text)
    if found is None or found.group(2) not in _UNITS:
        return None
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def memory(cur: duckdb.DuckDBPyConnection) -> tuple[int, int | None]:
    """DuckDB's memory in use, in bytes, and its memory limit (None: unreadable)."""
    used = cur.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()
    limit = cur.execute("SELECT current_setting('memory_limit')").fetchall()
    return int(used[0][0] or 0), size_bytes(str(limit[0][0]))


def warm_run(cur: duckdb.DuckDBPyConnection, run: Run) -> None:
    """Read every column of ``run`` in both copies (DuckDB keeps the blocks)."""
    for table in COPIES:
        # hash() of each value: DuckDB answers count() and min/max from statistics,
        # and would read nothing
        cur.execute(
            f"SELECT sum(hash(COLUMNS(*))) FROM {table} WHERE seq BETWEEN ? AND ?",  # noqa: S608
            [run.lo, run.hi],
        ).fetchall()


class Warmth:
    """Which stored runs are warm; :meth:`round` warms the others within the budget."""

    def __init__(self, share: float = BUDGET_SHARE) -> None:
        self.share = share
        self.warm: set[Run] = set()
        self.over_budget = False
        """Whether the last round stopped at the budget with runs still cold."""
        self.seconds = 0.0
        """Time spent warming so far."""

    def round(
        self, cur: duckdb.DuckDBPyConnection, go_on: Callable[[], bool] = lambda: True
    ) -> int:
        """Warm the stored runs not warm yet, newest first, while DuckDB's memory use
        is under the budget and ``go_on()``; the runs warmed. Merged runs are
        forgotten (their rows now lie in the run that replaced them)."""
        stored = runs(cur)
        self.warm &= set(stored)
        cold = [r for r in reversed(stored) if r not in self.warm]
        warmed = 0
        self.over_budget = False
        for run in cold:
            if not go_on():
                break
            used, limit = memory(cur)
            if limit is None or used >= limit * self.share:
                self.over_budget = True
                break
            started = time.monotonic()
            warm_run(cur, run)
            self.seconds += time.monotonic() - started
            self.warm.add(run)
            warmed += 1
        return warmed

    def status(self) -> dict[str, object]:
        """The warm runs, whether the budget stopped the last round, the seconds spent."""
        return {
            "warm_runs": len(self.warm),
            "over_budget": self.over_budget,
            "warm_s": round(self.seconds, 1),
        }


class CopyWarmer(Keeper):
    """Warms ``store``'s sorted copies as the copy keeper writes them (a daemon thread)."""

    NAME = "copy-warmer"

    def __init__(
        self,
        store: LedgerStore,
        interval: float = INTERVAL_S,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(interval, busy)
        self.store = store
        self.warmth = Warmth()

    def _round(self) -> None:
        if self.warmth.round(self.store.db.cursor(), self._go_on):
            self._stepped()

    def status(self) -> dict[str, object]:
        """What ``/readyz`` shows: :meth:`Warmth.status` and :meth:`Keeper.status`."""
        return {**self.warmth.status(), **super().status()}
