"""Repair a consumer-group join whose assignment kafka-python 3.0.12 never applies.

kafka-python runs a group join (JoinGroup, then SyncGroup) as a task on its I/O
thread and waits for it inside ``KafkaConsumer.poll``. A poll whose timeout ends
first returns early and leaves the task running; a later poll picks the result up,
but only while ``need_rejoin()`` is still true. A rejoin that started because the
subscribed topics' metadata changed is the exception: the group leader's
assignment, computed inside the task, records that metadata, so ``need_rejoin()``
turns false before the next poll looks, and the assignment the task received is
never applied. The member then stays ``REBALANCING`` with no partitions and no
heartbeats until the broker drops it, and nothing tells the consumer: it reads
nothing, silently. (Seen as a webhook dispatcher holding no partitions for 30 s
after its group's second generation, with a 50 ms poll.)

:func:`repair_dropped_join`, called after each poll, spots exactly that state (the
join task done, the member still ``REBALANCING``, no rejoin pending) and requests a
rejoin, which the next poll performs: the library's own path for a join that
completed after a poll gave up waiting. It reaches into kafka-python internals
through :class:`velora.kafka_internals.InternalsGuard`; on another kafka-python it
does nothing and the caller's own rule for a member left without partitions is
what recovers.
"""

from __future__ import annotations

from typing import Any

from velora.kafka_internals import InternalsGuard, require


def _probe() -> Any:
    from kafka.coordinator.consumer import ConsumerCoordinator
    from kafka.structs import MemberState

    require(ConsumerCoordinator, "need_rejoin", "request_rejoin")
    require(MemberState, "REBALANCING")
    return MemberState.REBALANCING


GUARD: InternalsGuard[Any] = InternalsGuard("the group join repair", _probe)


def dropped_join(consumer: Any) -> bool:
    """Whether ``consumer``'s last group join finished and its assignment was dropped."""
    rebalancing = GUARD.internals()
    if rebalancing is None:
        return False
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not all(
        hasattr(coordinator, name) for name in ("_join_task", "state", "need_rejoin")
    ):
        GUARD.decline("KafkaConsumer._coordinator has no _join_task, state or need_rejoin")
        return False
    task = coordinator._join_task
    if task is None or not getattr(task, "is_done", False):
        return False
    return coordinator.state is rebalancing and not coordinator.need_rejoin()


def repair_dropped_join(consumer: Any) -> bool:
    """Request a rejoin if ``consumer``'s last join was dropped (see the module docstring).

    Call it from the thread that polls ``consumer``, between polls. Returns whether
    a rejoin was requested.
    """
    if not dropped_join(consumer):
        return False
    consumer._coordinator.request_rejoin()
    return True
