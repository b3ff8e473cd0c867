"""``velora.memory``: what a server made before serving leaves the
collector's scans, and no garbage is kept with it."""

from __future__ import annotations

import gc
import weakref

from velora.memory import SERVING_GC_THRESHOLDS, freeze_start_up, prepare_to_serve


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


def test_a_server_collects_less_often_with_start_up_frozen():
    before = gc.get_threshold()
    try:
        prepare_to_serve()
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert SERVING_GC_THRESHOLDS[0] > before[0]  # fewer young collections than Python's
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
