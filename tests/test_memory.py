"""``velora.memory.freeze_start_up``: what a server made before serving leaves the
collector's scans, and no garbage is kept with it."""

from __future__ import annotations

import gc
import weakref

from velora.memory import freeze_start_up


class Node:
    """Something start-up made: a container the cycle collector tracks."""

    def __init__(self) -> None:
        self.me = self


def test_start_up_objects_leave_the_collectors_scans_and_garbage_is_collected_first():
    gc.disable()  # no automatic collection frees the garbage before the freeze does
    kept = Node()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage  # unreachable, but only a cycle collection frees it
    assert gone() is not None
    try:
        freeze_start_up()
        assert gone() is None  # collected before the freeze, not frozen for good
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # no scan walks it any more
    finally:
        gc.unfreeze()
        gc.enable()
    assert any(o is kept for o in gc.get_objects())
