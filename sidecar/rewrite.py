"""What the sidecar changes in the traffic it carries; it fails closed.

- **Requests** (:meth:`Rewriter.query`): a plain ``actor_id`` becomes its tokens
  under every key of the keyset (domain ``member_id``), comma-separated, which the
  query node matches as alternatives; a plain ``target_id`` becomes its tokens in
  the id domain of ``target_type`` when that is given, else of every id domain. A
  value that already is a token is passed as is.
- **Responses** (:meth:`Rewriter.response`): the PHI fields of every event (the
  field map of :mod:`phi.fields`) in a list answer (``{"events": [...]}``), a get
  answer (one event) or an NDJSON export are detokenized. Then the whole body is
  scanned for ``tok_v1_`` tokens: if one is left (a route whose shape the sidecar
  does not know, a CSV export, analytics ``top`` keys), nothing is forwarded.
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


def _fail(where: str, reason: str) -> SidecarFailure:
    return SidecarFailure(f"sidecar: {where}: {reason}", (ErrorDetail(where, reason),))


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

    def response(self, body: bytes, content_type: str) -> bytes:
        """A response body from Velora, detokenized; :class:`SidecarFailure` if unsafe."""
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
            out = json.dumps(data, ensure_ascii=False).encode()
        elif media == "application/x-ndjson":
            lines = []
            for n, line in enumerate(body.splitlines(), start=1):
                if line.strip():
                    event = self.event(_json(line, f"line {n}"), f"line {n}")
                    lines.append(json.dumps(event, ensure_ascii=False).encode())
            out = b"".join(line + b"\n" for line in lines)
        else:
            out = body
        _no_tokens_left(out)
        return out

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


def _no_tokens_left(body: bytes) -> None:
    if TOKEN_RE.search(body.decode("utf-8", "replace")):
        raise _fail("response", "holds tokens the sidecar cannot place (route not supported)")
