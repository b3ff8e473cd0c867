"""What the producer hands back: an :class:`Ack` per written event, or a rejection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from velora.errors import ErrorDetail


@dataclass(frozen=True, slots=True)
class Ack:
    """Kafka acknowledged (``acks=all``) one event at ``partition``/``offset``."""

    event_id: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """Item ``index`` of a batch was validated, written and acknowledged."""

    index: int
    ack: Ack
    status: Literal["accepted"] = "accepted"

    @property
    def event_id(self) -> str:
        """The event's id (given by the caller, or the UUIDv7 ingest assigned)."""
        return self.ack.event_id

    def to_json(self) -> dict[str, Any]:
        """Render for a batch response."""
        return {"index": self.index, "status": self.status, "event_id": self.ack.event_id}


@dataclass(frozen=True, slots=True)
class Rejected:
    """Item ``index`` of a batch failed validation; nothing of it was written."""

    index: int
    errors: tuple[ErrorDetail, ...]
    status: Literal["rejected"] = "rejected"

    def to_json(self) -> dict[str, Any]:
        """Render for a batch response."""
        return {
            "index": self.index,
            "status": self.status,
            "errors": [{"field": e.field, "reason": e.reason} for e in self.errors],
        }


SendResult = Accepted | Rejected
