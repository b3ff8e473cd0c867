"""Server-mode PHI in SQL: exports' PHI columns and ``top`` keys opened a vector at a time.

An export is encoded by DuckDB and Arrow, never row by row in Python
(:mod:`query_api.exports`). For a server-mode tenant the PHI columns are wrapped
in SQL functions that open the tenant's tokens: :class:`PhiColumns` registers them
on the export's cursor as vectorized (Arrow) Python functions, one per token
domain plus one for ``metadata`` values, which call the request's
:class:`phi.policy.Revealer` (the one place that detokenizes; it caches every
token it opened, so a member named on a million rows costs one AES-SIV operation).
DuckDB calls them once per vector of rows and only for the rows whose record type
makes the field PHI (the field map of :mod:`phi.fields`, as ``CASE`` arms), so
the rest of the row, and every export of a tenant without server-mode, is
encoded exactly as before.

DuckDB keeps Python functions in the catalog that every cursor of the database
shares, so each export registers its functions under names of its own
(``velora_phi_<random>_<domain>``) and removes them when it ends: one export's
functions, which hold one tenant's keyset, are never reachable under a name
another export uses. Only constants of :mod:`phi.fields` are formatted into SQL;
the tenant's PHI metadata keys are compared inside the function, never in SQL.

:class:`CanonicalKeys` does the same for analytics ``top`` after a rotation: a
function that maps a token of an older key to the primary key's token of the same
value, so a value counts once whatever key its events were written under.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

import duckdb
import pyarrow as pa

from phi.fields import ACTOR_RULES, METADATA_DOMAIN, TARGET_RULES
from phi.policy import Revealer

ColumnSql = Callable[[str], str]
"""``sql(name)``: the SQL of ``actor_id``, ``actor_name``, ``actor_email``, ``targets``
(the list of ``{type, id, name}`` structs) or ``metadata`` in an export's SELECT."""

_TARGETS = (
    "list_transform(targets, lambda t: struct_pack(type := t.type, id := {id}, name := {name}))"
)


def plain_column(name: str) -> str:
    """The stored columns, as they are (every tenant but a server-mode one); ``targets``
    is stored as the list of ``{type, id, name}`` structs already."""
    return name


def _case(column: str, kind: str, by_type: Mapping[str, str], fn: Callable[[str], str]) -> str:
    arms = " ".join(f"WHEN '{t}' THEN {fn(d)}({column})" for t, d in sorted(by_type.items()))
    return f"CASE {kind} {arms} ELSE {column} END"


class PhiColumns:
    """The detokenizing SQL functions of one export, registered on its cursor."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, reveal: Revealer) -> None:
        self._cur = cur
        self._reveal = reveal
        self._prefix = f"velora_phi_{secrets.token_hex(8)}"
        self._names: list[str] = []
        domains = {d for rules in (ACTOR_RULES, TARGET_RULES) for m in rules.values()
                   for d in m.values()}  # fmt: skip
        try:
            for domain in sorted(domains):
                self._register(self._fn(domain), [duckdb.sqltype("VARCHAR")], self._opener(domain))
            if reveal.metadata_keys:
                varchar = duckdb.sqltype("VARCHAR")
                self._register(self._fn(METADATA_DOMAIN), [varchar, varchar], self._metadata)
        except BaseException:
            self.close()
            raise

    def _fn(self, domain: str) -> str:
        return f"{self._prefix}_{domain}"

    def _register(self, name: str, params: list, fn: Callable[..., pa.Array]) -> None:
        self._cur.create_function(
            name, fn, params, duckdb.sqltype("VARCHAR"), type="arrow", side_effects=False
        )
        self._names.append(name)

    def _opener(self, domain: str) -> Callable[[pa.Array], pa.Array]:
        reveal = self._reveal

        def open_column(values: pa.Array) -> pa.Array:
            return pa.array(reveal.values(values.to_pylist(), domain), pa.string())

        return open_column

    def _metadata(self, keys: pa.Array, values: pa.Array) -> pa.Array:
        marked = frozenset(self._reveal.metadata_keys)
        value = self._reveal.value
        return pa.array(
            [
                v if v is None or k not in marked else value(v, METADATA_DOMAIN)
                for k, v in zip(keys.to_pylist(), values.to_pylist(), strict=True)
            ],
            pa.string(),
        )

    def column(self, name: str) -> str:
        """The SQL of ``name`` (see :data:`ColumnSql`) with its PHI opened."""
        if name in ("actor_id", "actor_name", "actor_email"):
            return _case(name, "actor_type", ACTOR_RULES[name.removeprefix("actor_")], self._fn)
        if name == "targets":
            return _TARGETS.format(
                id=_case("t.id", "t.type", TARGET_RULES["id"], self._fn),
                name=_case("t.name", "t.type", TARGET_RULES["name"], self._fn),
            )
        if name == "metadata" and self._reveal.metadata_keys:
            fn = self._fn(METADATA_DOMAIN)
            return (
                "map_from_entries(list_transform(map_entries(metadata), lambda e: "
                f"struct_pack(key := e.key, value := {fn}(e.key, e.value))))"
            )
        return plain_column(name)

    def close(self) -> None:
        """Remove the functions from the catalog (the export is over)."""
        while self._names:
            name = self._names.pop()
            try:
                self._cur.remove_function(name)
            except duckdb.Error:  # pragma: no cover - the cursor is already closed
                pass


class CanonicalKeys:
    """A SQL function ``name(key)`` of one request: :meth:`Revealer.canonical` per value.

    Use as a context manager; the function is removed from the catalog on exit.
    """

    def __init__(
        self, cur: duckdb.DuckDBPyConnection, reveal: Revealer, domains: tuple[str, ...]
    ) -> None:
        self._cur = cur
        self.name = f"velora_phi_{secrets.token_hex(8)}_key"

        def canonical(values: pa.Array) -> pa.Array:
            return pa.array(
                [None if v is None else reveal.canonical(v, domains) for v in values.to_pylist()],
                pa.string(),
            )

        varchar = duckdb.sqltype("VARCHAR")
        cur.create_function(self.name, canonical, [varchar], varchar, type="arrow",
                            side_effects=False)  # fmt: skip

    def __enter__(self) -> CanonicalKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._cur.remove_function(self.name)
        except duckdb.Error:  # pragma: no cover - the cursor is already closed
            pass
