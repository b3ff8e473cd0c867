"""What the sidecar changes in the traffic it carries; it fails closed.

- **Requests** (:meth:`Rewriter.query`): a plain ``actor_id`` becomes its tokens
  under every key of the keyset (domain ``member_id``), comma-separated, which the
  query node matches as alternatives; a plain ``target_id`` becomes its tokens in
  the id domain of ``target_type`` when that is given, else of every id domain. A
  value that already is a token is passed as is.
- **Responses** (:meth:`Rewriter.response`): the PHI fields of every event (the
  field map of :mod:`phi.fields`) in a list answer (``{"events": [...]}``), a get
  answer (one event) or an export (NDJSON, CSV, Parquet: :mod:`sidecar.exports`,
  the first two as they stream) are detokenized; so are analytics ``top`` keys of
  the ``actor`` and ``target`` dimensions (two keys that open to one value, its
  tokens under two keys after a rotation, are added up and the items re-ranked),
  and an export job's ``filters`` (the tokens the sidecar sent, opened back to the
  value) with its ``download_url`` pointed at the sidecar. Then the whole body is
  scanned for ``tok_v1_`` tokens: if one is left (a route whose shape the sidecar
  does not know), nothing is forwarded.
- **Webhook deliveries** (:meth:`Rewriter.delivery`): each envelope's ``data`` is
  detokenized, in the delivery's own format (json, ndjson, Splunk HEC), and the
  body is scanned the same way.

Every problem raises :class:`SidecarFailure`, which the app answers with a 502 in
the one error shape; its message names the field, never a value or a token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from phi.fields import TARGET_RULES, id_domains, map_event
from phi.tokens import TOKEN_RE, is_token
from velora.errors import ErrorDetail, ValidationError, VeloraError


class SidecarFailure(VeloraError):
    """The sidecar cannot carry this message safely: answered with 502, nothing forwarded."""

    type_name = "bad_gateway"


class TokenCodec(Protocol):
    """What the sidecar needs of :class:`phi.tokens.Tokenizer` (a seam for fault injection)."""

    def search_tokens(self, value: str, domain: str) -> list[str]: ...

    def detokenize(self, token: str, domain: str, where: str = "token") -> str: ...


def fail(where: str, reason: str) -> SidecarFailure:
    """The failure naming ``where`` (a field or part of the message), never a value."""
    return SidecarFailure(f"sidecar: {where}: {reason}", (ErrorDetail(where, reason),))


_fail = fail
TOP_DOMAINS = {"actor": id_domains("actor_id"), "target": id_domains("target_id")}
"""Analytics ``top`` dimensions whose keys may be tokens, and of which domains."""


def dumps_event(event: Any) -> bytes:
    """One event as a line of an NDJSON export."""
    return json.dumps(event, ensure_ascii=False).encode()


class Rewriter:
    """Tokenize requests and detokenize responses with one tenant's keyset."""

    def __init__(self, tokenizer: TokenCodec, metadata_keys: Iterable[str] = ()) -> None:
        self._tok = tokenizer
        self._metadata_keys = tuple(metadata_keys)

    # -- requests -------------------------------------------------------------------
    def query(self, items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The query items to send to Velora: PHI filter values replaced by their tokens."""
        target_type = next((v for k, v in items if k == "target_type"), None)
        out = []
        for name, value in items:
            if name in ("actor_id", "target_id") and not _all_tokens(value):
                out.append((name, self._tokens(name, value, target_type)))
            else:
                out.append((name, value))
        return out

    def _tokens(self, name: str, value: str, target_type: str | None) -> str:
        if name == "actor_id":
            domains: tuple[str, ...] = ("member_id",)
        elif target_type in TARGET_RULES["id"]:
            domains = (TARGET_RULES["id"][target_type],)
        else:
            domains = id_domains("target_id")
        try:
            tokens = [t for d in domains for t in self._tok.search_tokens(value, d)]
        except Exception as exc:  # any tokenizer failure: never send the plain value
            raise _fail(name, f"could not tokenize ({type(exc).__name__})") from None
        if not tokens or not all(is_token(t) for t in tokens):
            raise _fail(name, "the tokenizer returned no valid token")
        return ",".join(tokens)

    # -- responses ------------------------------------------------------------------
    def _open(self, value: str, domain: str, where: str) -> str:
        if not is_token(value):
            return value
        try:
            plain = self._tok.detokenize(value, domain, where)
        except ValidationError as exc:
            raise _fail(where, exc.details[0].reason if exc.details else "does not open") from None
        except Exception as exc:  # a tokenizer bug or outage: never forward the token
            raise _fail(where, f"could not detokenize ({type(exc).__name__})") from None
        if not isinstance(plain, str) or is_token(plain):
            raise _fail(where, "the tokenizer returned no plaintext")
        return plain

    def event(self, event: Any, where: str = "event") -> Any:
        """One event (public JSON shape) with its PHI fields detokenized."""
        if not isinstance(event, dict):
            return event
        return map_event(
            event, lambda v, d, p: self._open(v, d, f"{where}.{p}"), self._metadata_keys
        )

    def response(self, body: bytes, content_type: str, base_url: str | None = None) -> bytes:
        """A response body from Velora, detokenized; :class:`SidecarFailure` if unsafe.

        ``base_url`` (the sidecar's own, as the caller reached it) replaces the origin
        of an export job's ``download_url``, so the download comes through here too.
        """
        from sidecar.exports import PARQUET, STREAMED, ExportStream, parquet

        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json":
            data = _json(body, "response")
            if isinstance(data, dict) and isinstance(data.get("events"), list):
                data = {
                    **data,
                    "events": [self.event(e, f"events[{i}]") for i, e in enumerate(data["events"])],
                }
            elif isinstance(data, dict) and "event_id" in data and "actor" in data:
                data = self.event(data)
            elif isinstance(data, dict) and isinstance(data.get("items"), list):
                data = self.top(data)
            elif isinstance(data, dict) and "download_url" in data:
                data = self.job(data, base_url)
            out = json.dumps(data, ensure_ascii=False).encode()
        elif media in STREAMED:
            stream = ExportStream(self, media)
            out = stream.feed(body) + stream.close()
        elif media == PARQUET:
            out = parquet(self, body)
        else:
            out = body
        _no_tokens_left(out)
        return out

    def top(self, data: dict[str, Any]) -> dict[str, Any]:
        """An analytics ``top`` answer with PHI keys opened (and merged, re-ranked)."""
        domains = TOP_DOMAINS.get(data.get("dimension"))  # type: ignore[arg-type]
        if domains is None:
            return data
        merged: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(data["items"]):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise _fail(f"items[{i}]", "is not a top item")
            key = self._open_any(item["key"], domains, f"items[{i}].key")
            if key in merged:
                merged[key]["count"] += item["count"]
                merged[key]["share"] += item["share"]
            else:
                merged[key] = {**item, "key": key}
        items = sorted(merged.values(), key=lambda it: (-it["count"], it["key"]))
        return {**data, "items": items}

    def job(self, data: dict[str, Any], base_url: str | None) -> dict[str, Any]:
        """An export job's status: its PHI filters opened, its download URL the sidecar's."""
        filters = data.get("filters")
        if isinstance(filters, dict):
            filters = dict(filters)
            for name in ("actor_id", "target_id"):
                value = filters.get(name)
                if isinstance(value, str) and _all_tokens(value):
                    domains = TOP_DOMAINS["actor" if name == "actor_id" else "target"]
                    first = value.split(",", 1)[0]  # every token holds the same value
                    filters[name] = self._open_any(first, domains, f"filters.{name}")
            data = {**data, "filters": filters}
        url = data.get("download_url")
        if isinstance(url, str) and base_url:
            ours = urlsplit(base_url)
            theirs = urlsplit(url)
            data = {**data, "download_url": urlunsplit((ours.scheme, ours.netloc, *theirs[2:]))}
        return data

    def _open_any(self, value: str, domains: Sequence[str], where: str) -> str:
        """A token of one of ``domains`` opened (SIV tells which); a plain value as is."""
        if not is_token(value):
            return value
        for domain in domains[:-1]:
            try:
                return self._open(value, domain, where)
            except SidecarFailure:
                continue
        return self._open(value, domains[-1], where)

    def delivery(self, body: bytes) -> bytes:
        """A webhook delivery body (json, ndjson or HEC), each envelope's data detokenized."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("delivery", "is not UTF-8") from None
        decoder = json.JSONDecoder()
        values, i = [], 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                break
            try:
                value, i = decoder.raw_decode(text, i)
            except ValueError:
                raise _fail("delivery", "is not JSON") from None
            values.append(value)
        out_values = []
        for n, value in enumerate(values):
            if isinstance(value, dict) and "sourcetype" in value and "event" in value:
                value = {**value, "event": self._envelope(value["event"], n)}
            else:
                value = self._envelope(value, n)
            out_values.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        if len(values) == 1 and "\n" not in text.strip():
            joined = out_values[0]
        elif "\n" in text.strip() or text.endswith("\n"):
            joined = "\n".join(out_values) + "\n"
        else:
            joined = "".join(out_values)
        out = joined.encode("utf-8")
        _no_tokens_left(out)
        return out

    def _envelope(self, envelope: Any, n: int) -> Any:
        if isinstance(envelope, dict) and isinstance(envelope.get("data"), dict):
            return {**envelope, "data": self.event(envelope["data"], f"delivery[{n}].data")}
        return envelope


def _all_tokens(value: str) -> bool:
    return all(is_token(p) for p in value.split(","))


def _json(body: bytes, where: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise _fail(where, "is not valid JSON") from None


def no_tokens_left(body: bytes) -> None:
    """:class:`SidecarFailure` if ``body`` still holds a token."""
    _no_tokens_left(body)


def _no_tokens_left(body: bytes) -> None:
    if TOKEN_RE.search(body.decode("utf-8", "replace")):
        raise _fail("response", "holds tokens the sidecar cannot place (route not supported)")
