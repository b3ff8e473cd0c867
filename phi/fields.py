"""Which fields of an audit event are PHI, and in which token domain.

The rules are declared in the schema (``schemas/avro/AuditEvent.v1.avsc``, the
``"phi"`` property of a field) and mirrored here, so the tokenizer CLI applies
them without the Avro stack; ``tests/test_phi_fields.py`` fails when the two drift.
A ``"phi"`` property is ``{"when": "type", "domains": {<type>: <domain>}}``: the
field is PHI when the record's ``type`` is one of the listed types, in that domain.

==================  ==========================  =============
field               PHI when                    domain
==================  ==========================  =============
``actor.id``        actor type ``member``       ``member_id``
``actor.name``      actor type ``member``       ``name``
``actor.email``     actor type ``member``       ``email``
``targets[].id``    ``member``/``patient``/     ``member_id``/``patient_id``/
                    ``claim``                   ``claim_id``
``targets[].name``  ``member``/``patient``/     ``name``
                    ``claim``
``metadata.<key>``  the tenant marks the key    ``metadata``
==================  ==========================  =============

Domains name kinds of data, not fields, so a member id correlates whether the
member acted or was acted on. :func:`map_event` applies one function to every PHI
value of an event in the public JSON shape or the Avro record shape (the two agree
on ``actor``, ``targets`` and ``metadata``) and returns a new event; ``None``
values are left alone. It never changes anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

ACTOR_RULES: dict[str, dict[str, str]] = {
    "id": {"member": "member_id"},
    "name": {"member": "name"},
    "email": {"member": "email"},
}
TARGET_RULES: dict[str, dict[str, str]] = {
    "id": {"member": "member_id", "patient": "patient_id", "claim": "claim_id"},
    "name": {"member": "name", "patient": "name", "claim": "name"},
}
METADATA_DOMAIN = "metadata"
DOMAINS = frozenset(
    d for rules in (ACTOR_RULES, TARGET_RULES) for m in rules.values() for d in m.values()
) | {METADATA_DOMAIN}

ValueFn = Callable[[str, str, str], str]
"""``fn(value, domain, path) -> new value``; ``path`` names the field (``targets[1].id``)."""


def _by_type(rules: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{type: ((field, domain), ...)}``: the PHI fields of each record type."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, by_type in rules.items():
        for kind, domain in by_type.items():
            out.setdefault(kind, []).append((name, domain))
    return {kind: tuple(fields) for kind, fields in out.items()}


_ACTOR_BY_TYPE = _by_type(ACTOR_RULES)
_TARGET_BY_TYPE = _by_type(TARGET_RULES)


def _map_fields(
    obj: Mapping[str, Any],
    by_type: Mapping[str, tuple[tuple[str, str], ...]],
    fn: ValueFn,
    path: str | None,
) -> dict[str, Any]:
    out = dict(obj)
    kind = obj.get("type")
    fields = by_type.get(kind, ()) if isinstance(kind, str) else ()
    for name, domain in fields:
        value = obj.get(name)
        if isinstance(value, str):
            out[name] = fn(value, domain, "" if path is None else f"{path}.{name}")
    return out


def map_event(
    event: Mapping[str, Any],
    fn: ValueFn,
    metadata_keys: Iterable[str] = (),
    *,
    paths: bool = True,
) -> dict[str, Any]:
    """A copy of ``event`` with ``fn`` applied to each PHI value (see the module docstring).

    ``paths=False`` passes ``""`` as every path (the ingest hot path needs none).
    """
    out = dict(event)
    actor = event.get("actor")
    if isinstance(actor, Mapping):
        out["actor"] = _map_fields(actor, _ACTOR_BY_TYPE, fn, "actor" if paths else None)
    targets = event.get("targets")
    if isinstance(targets, list | tuple):
        out["targets"] = [
            _map_fields(t, _TARGET_BY_TYPE, fn, f"targets[{i}]" if paths else None)
            if isinstance(t, Mapping)
            else t
            for i, t in enumerate(targets)
        ]
    keys = frozenset(metadata_keys)
    metadata = event.get("metadata")
    if keys and isinstance(metadata, Mapping):
        out["metadata"] = {
            k: fn(v, METADATA_DOMAIN, f"metadata.{k}" if paths else "")
            if k in keys and isinstance(v, str)
            else v
            for k, v in metadata.items()
        }
    return out


def id_domains(field: str) -> tuple[str, ...]:
    """The domains a plain ``actor_id`` or ``target_id`` filter value may be a token of."""
    rules = ACTOR_RULES if field == "actor_id" else TARGET_RULES
    return tuple(sorted(set(rules["id"].values())))
