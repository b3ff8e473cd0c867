"""What each PHI mode does to one tenant's events, on the way in and on the way out.

:class:`TenantPhi` is one tenant's policy, built from its ``TenantSettings`` (mode,
PHI metadata keys) and, in server-mode, its unwrapped keyset:

==========  ===============================  ==========================  ====================
mode        ingest (:meth:`~TenantPhi.protect`)  out (:meth:`~TenantPhi.reveal`)  id filters
==========  ===============================  ==========================  ====================
none        as validated                     as stored                   the value
server      every PHI value tokenized        tokens detokenized          value + its tokens
client      422 unless every PHI value is    as stored (tokens)          the token(s)
sidecar     a well-formed token              as stored (tokens)          the token(s)
==========  ===============================  ==========================  ====================

*none* is a tenant without a ``TenantSettings`` record (no mode chosen): nothing
is tokenized. A server-mode tenant whose keyset is missing or does not unwrap
fails closed both ways with :class:`~velora.errors.Unavailable` (503): ingest
writes nothing rather than plaintext, and nothing is served rather than tokens
where plaintext is due (the API, exports, analytics ``top`` keys, webhook
deliveries, which then retry). Out of the ledger, a server-mode PHI value that is
not a token (written before the mode was set) or a token that its keyset does not
open (written in client mode before a forced change, or another tenant's) is
returned as stored: history is never rewritten.

**Detokenizing on the way out happens here and only here.** Every serializer asks
the tenant's policy for a :class:`Revealer` (:meth:`TenantPhi.revealer`), one per
request, export or delivery: :meth:`Revealer.event` for one event in the public
shape (list, get, webhook envelopes), :meth:`Revealer.values` for a column of one
domain (exports, a batch at a time) and :meth:`Revealer.key` for an analytics key
whose domain is one of several. A revealer remembers every token it opened, so a
value repeated across a request costs one AES-SIV operation.

:class:`PhiDirectory` gives the policy of any tenant from two look-ups (the
control state's settings and wrapped keysets), caching each unwrapped keyset
until its record changes. :class:`PhiTransform` is the ingest transform
(:mod:`ingest.transform`) that applies :meth:`TenantPhi.protect`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phi.fields import id_domains, map_event
from phi.tokens import Tokenizer, is_token
from phi.wrap import KeysetWrapper
from schemas.events import AuditEvent, PhiKeyset, TenantSettings
from velora.errors import ConfigError, ErrorDetail, Unavailable, ValidationError

log = logging.getLogger(__name__)

TOKEN_MODES = frozenset({"client", "sidecar"})


def _no_keyset(tenant_id: str) -> Unavailable:
    return Unavailable(
        f"the PHI keyset of tenant {tenant_id} is not available; events are refused "
        "rather than written in plaintext, and answers rather than served as tokens",
        retry_after=5,
    )


@dataclass(frozen=True)
class TenantPhi:
    """One tenant's PHI policy (see the module docstring)."""

    tenant_id: str
    mode: str | None = None
    metadata_keys: tuple[str, ...] = ()
    tokenizer: Tokenizer | None = None

    def protect(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """The record to write: tokenized (server), checked (client, sidecar) or as given."""
        if self.mode is None:
            return record
        if self.mode == "server":
            tok = self.tokenizer
            if tok is None:
                raise _no_keyset(self.tenant_id)
            return map_event(record, tok.tokenize_at, self.metadata_keys, paths=False)
        problems: list[ErrorDetail] = []

        def check(value: str, domain: str, path: str) -> str:
            if not is_token(value):
                problems.append(
                    ErrorDetail(path, f"must be a tok_v1 token (tenant PHI mode {self.mode})")
                )
            return value

        map_event(record, check, self.metadata_keys)
        if problems:
            raise ValidationError(
                f"PHI fields must hold tokens: {', '.join(p.field for p in problems)}",
                tuple(problems),
            )
        return record

    def revealer(self) -> Revealer:
        """What detokenizes this tenant's events on the way out (one per request)."""
        return Revealer(self)

    def reveal(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """The event as the API returns it: server-mode tokens detokenized, else as stored."""
        return self.revealer().event(event)

    def id_filter_values(self, field: str, value: str) -> tuple[str, ...]:
        """What an ``actor_id``/``target_id`` filter matches.

        Server-mode: the plain value and its token under every key and id domain.
        Client- and sidecar-mode: the value, or several comma-separated tokens (the
        output of ``velora-tokenizer search-tokens``, one per key) matching any.
        """
        tok = self.tokenizer
        if self.mode in TOKEN_MODES:
            parts = tuple(value.split(","))
            return parts if len(parts) > 1 and all(is_token(p) for p in parts) else (value,)
        if self.mode != "server" or tok is None:
            return (value,)
        tokens = [t for d in id_domains(field) for t in tok.search_tokens(value, d)]
        return (value, *tokens)


NO_PHI = TenantPhi("")


class Revealer:
    """Detokenizes one tenant's PHI on the way out, caching each token it opened.

    Made per request (or export, or delivery) by :meth:`TenantPhi.revealer`: a
    server-mode tenant without a usable keyset raises :class:`Unavailable` here,
    before anything is served. Other modes return every value as stored
    (``active`` is False and the methods are the identity).
    """

    def __init__(self, phi: TenantPhi) -> None:
        self.tenant_id = phi.tenant_id
        self.metadata_keys = phi.metadata_keys
        self.active = phi.mode == "server"
        self._tok = phi.tokenizer
        if self.active and self._tok is None:
            raise _no_keyset(phi.tenant_id)
        self._opened: dict[tuple[str, str], str] = {}

    def value(self, value: str, domain: str, _path: str = "") -> str:
        """``value`` opened in ``domain``: as stored if it is no token of this tenant's key."""
        if not self.active or not value.startswith("tok_v1_"):
            return value
        cached = self._opened.get((value, domain))
        if cached is None:
            cached = self._open(value, domain)
            self._opened[(value, domain)] = cached
        return cached

    def _open(self, value: str, domain: str) -> str:
        assert self._tok is not None
        if not is_token(value):
            return value
        try:
            return self._tok.detokenize(value, domain)
        except ValidationError:
            return value  # not this tenant's server key: written in another mode

    def values(self, values: Sequence[str | None], domain: str) -> list[str | None]:
        """A column of one domain opened (``None`` stays ``None``)."""
        if not self.active:
            return list(values)
        return [None if v is None else self.value(v, domain) for v in values]

    def key(self, value: str, domains: Iterable[str]) -> str:
        """An analytics key that is a token of one of ``domains`` (SIV tells which)."""
        if not self.active or not is_token(value):
            return value
        for domain in domains:
            opened = self.value(value, domain)
            if opened != value:
                return opened
        return value

    @property
    def rotated(self) -> bool:
        """Whether the keyset has older keys (a value may be stored as several tokens)."""
        return self.active and self._tok is not None and len(self._tok.keyset.keys) > 1

    def canonical(self, value: str, domains: Iterable[str]) -> str:
        """One stored key per value: a token of an older key as the primary key's token.

        Grouping by it counts a value's events under every key as one key (analytics
        ``top`` after a rotation); a primary-key token or no token stays as it is.
        """
        tok = self._tok
        if not self.active or tok is None or not value.startswith("tok_v1_"):
            return value
        primary = tok.keyset.primary.kid
        if value.startswith(f"tok_v1_{primary}_"):
            return value
        for domain in domains:
            opened = self.value(value, domain)
            if opened != value:
                return tok.tokenize(opened, domain)
        return value

    def event(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """One event in the public shape (or the Avro record shape) with its PHI opened."""
        if not self.active:
            return event
        return map_event(event, self.value, self.metadata_keys)


class PhiDirectory:
    """The PHI policy of any tenant, from the control state; thread-safe.

    ``ready`` tells whether the look-ups are complete (the control state caught up):
    until then :meth:`tenant` raises :class:`Unavailable` rather than guess a mode.
    """

    def __init__(
        self,
        settings_of: Callable[[str], TenantSettings | None],
        keyset_of: Callable[[str], PhiKeyset | None],
        wrapper: KeysetWrapper,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings_of = settings_of
        self._keyset_of = keyset_of
        self._wrapper = wrapper
        self._ready = ready
        self._caught_up = False
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[TenantSettings, PhiKeyset | None, TenantPhi]] = {}

    def tenant(self, tenant_id: str) -> TenantPhi:
        """The policy of ``tenant_id`` now."""
        if not self._caught_up:  # once caught up, always (a lock fewer per event)
            if not self._ready():
                raise Unavailable("tenant PHI settings are still loading", retry_after=2)
            self._caught_up = True
        settings = self._settings_of(tenant_id)
        if settings is None:
            return TenantPhi(tenant_id)
        record = self._keyset_of(tenant_id) if settings.phi_mode == "server" else None
        with self._lock:
            cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] is settings and cached[1] is record:
            return cached[2]
        tokenizer = None
        if record is not None:
            try:
                tokenizer = Tokenizer(self._wrapper.unwrap(record.wrapped, tenant_id))
            except ConfigError as exc:  # fail closed, and try again at the next look-up
                log.error("PHI keyset of tenant %s unusable: %s", tenant_id, exc.message)
                raise Unavailable(exc.message, retry_after=5) from None
        policy = TenantPhi(tenant_id, settings.phi_mode, settings.phi_metadata_keys, tokenizer)
        with self._lock:
            self._cache[tenant_id] = (settings, record, policy)
        return policy


class PhiTransform:
    """The ingest transform of every tenant's PHI mode (``ingest.transform`` contract).

    ``transform_record`` is the fast form the pipeline prefers: it works on the
    validated Avro record and skips building an :class:`AuditEvent`.
    """

    def __init__(self, directory: PhiDirectory) -> None:
        self._directory = directory

    def transform_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record to encode for ``record["tenant_id"]``."""
        return dict(self._directory.tenant(record["tenant_id"]).protect(record))

    def __call__(self, event: AuditEvent) -> AuditEvent:
        """The event to write for ``event.tenant_id``."""
        return AuditEvent.from_avro(self.transform_record(event.to_avro()))
