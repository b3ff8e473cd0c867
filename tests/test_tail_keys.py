"""Which ids have rows past the sorted copies' mark (ledger/tail_keys.py).

A page skips ``audit_events`` past the mark only on a "no"; these check that every
row whose keys are not known makes the answer "maybe" (the agreement test in
test_sorted_copies.py checks the pages themselves against the list query).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from ledger import tail_keys
from ledger.sorted_copies import TAIL_READ_MAX, CopyMarks, ReadMark
from ledger.tail_keys import ACTOR, TARGET, TailKeys, batch_keys, key
from query_api import sorted_pages
from query_api.filters import Filters

TARGETS = pa.struct([("type", pa.string()), ("id", pa.string()), ("name", pa.string())])


def rows(*events: tuple[str, str, list[str]]) -> pa.Table:
    """A batch of ``(tenant, actor, target ids)`` rows, as the writer numbers them."""
    return pa.table({
        "tenant_id": [e[0] for e in events],
        "actor_id": [e[1] for e in events],
        "targets": pa.array(
            [[{"type": "claim", "id": t, "name": None} for t in e[2]] for e in events],
            pa.list_(TARGETS),
        ),
    })  # fmt: skip


def test_a_batch_s_keys_are_its_actors_and_target_ids_per_tenant():
    batch = rows(
        ("acme", "u1", ["C1", "M:9"]),
        ("tenant-00", "u:2", []),
        ("acme", "u1", ["C1"]),
    )
    assert batch_keys(batch) == {
        key(ACTOR, "acme", "u1"),
        key(ACTOR, "tenant-00", "u:2"),
        key(TARGET, "acme", "C1"),
        key(TARGET, "acme", "M:9"),
    }
    # the tenant is length-prefixed, so no tenant and id pair reads as another
    assert key(ACTOR, "a", "b:c") != key(ACTOR, "a:b", "c")
    assert key(ACTOR, "acme", "C1") != key(TARGET, "acme", "C1")


def test_pages_ask_with_the_keys_of_the_ids_they_read_from_the_copies():
    assert sorted_pages.noted_keys("acme", Filters(actor_id="u1")) == (key(ACTOR, "acme", "u1"),)
    assert sorted_pages.noted_keys("acme", Filters(target_id="C1")) == (key(TARGET, "acme", "C1"),)
    several = Filters(actor_id="u1", actor_ids=("u1", "tok-u1"))  # a PHI mode's ids
    assert sorted_pages.noted_keys("acme", several) == (
        key(ACTOR, "acme", "u1"),
        key(ACTOR, "acme", "tok-u1"),
    )
    assert sorted_pages.noted_keys("acme", Filters(action="claim.viewed")) is None


def test_only_the_noted_keys_have_rows_past_the_mark():
    tail = TailKeys(unknown_upto=10)
    tail.note(11, 15, frozenset({"a1", "t1"}), mark=10)
    tail.note(16, 20, frozenset({"a2"}), mark=10)
    assert tail.newer(["a1"], mark=10, last=20)
    assert tail.newer(["zz", "a2"], mark=10, last=20)
    assert not tail.newer(["a3", "t9"], mark=10, last=20)
    # the mark passed the first batch: its keys are in the copies now
    assert not tail.newer(["a1"], mark=15, last=20)
    assert tail.newer(["a2"], mark=15, last=20)
    assert not tail.newer(["a2"], mark=20, last=20)  # nothing past the mark
    tail.forget(15)
    assert len(tail._noted) == 1


def test_rows_whose_keys_are_not_known_make_every_key_maybe():
    tail = TailKeys(unknown_upto=10)  # rows up to 10 were committed before any note
    tail.note(11, 12, frozenset({"a1"}), mark=5)
    assert tail.newer(["a9"], mark=5, last=12)  # rows 6..10 may hold a9
    assert not tail.newer(["a9"], mark=10, last=12)
    tail.unknown(14)  # a seq published without a note
    assert tail.newer(["a9"], mark=10, last=14)
    assert not tail.newer(["a9"], mark=14, last=14)
    assert tail.newer(["a9"], mark=14, last=15)  # last past every note: not known


def test_a_backlog_is_not_noted():
    n = tail_keys.MAX_NOTED_ROWS
    tail = TailKeys(unknown_upto=0)
    tail.note(1, n + 1, frozenset({"a1"}), mark=0)
    assert not tail._noted
    assert tail.newer(["a9"], mark=0, last=n + 1)
    tail.note(n + 2, n + 3, frozenset({"a1"}), mark=0)  # still a backlog
    assert not tail._noted
    tail.note(n + 4, n + 5, frozenset({"a1"}), mark=n)  # the keeper caught up
    assert tail.newer(["a9"], mark=n, last=n + 5)  # rows up to n + 3: not known
    assert not tail.newer(["a9"], mark=n + 3, last=n + 5)
    assert tail.newer(["a1"], mark=n + 3, last=n + 5)


@pytest.mark.parametrize("direct", [False, True])
def test_copy_marks_answer_per_page(direct):
    marks = CopyMarks(mark=100, last=100)
    u1, u2 = key(ACTOR, "acme", "u1"), key(ACTOR, "acme", "u2")
    marks.publish(101, 102, rows(("acme", "u1", ["C1"]), ("acme", "u1", [])))
    if direct:
        marks.last = 103  # written without the writer's note (a test's insert, say)
    assert marks.for_reads([u1]) == ReadMark(100, newer=True)
    assert marks.for_reads([u2]) == ReadMark(100, newer=direct)
    assert marks.for_reads() == ReadMark(100, newer=True)  # no keys: any row past the mark
    marks.mark = marks.last
    assert marks.for_reads([u1]) == ReadMark(marks.last, newer=False)
    marks.last = marks.mark + TAIL_READ_MAX + 1
    assert marks.for_reads([u1]) is None  # too many rows past the mark for the copies
