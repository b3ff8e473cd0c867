"""The dispatcher's HTTP client on the wire (webhooks/transport.py over webhooks/http1.py).

Each test runs a real TCP (or TLS) server on 127.0.0.1 that answers with scripted
bytes and records the requests it read, and a real :class:`WebhookClient` against it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import webhooks.http1 as http1
import webhooks.transport as transport
from webhooks.http1 import MAX_HEAD_BYTES, request_bytes
from webhooks.transport import MAX_RESPONSE_BYTES, Answer, WebhookClient

Script = Callable[[int, bytes], bytes | None]
"""``(request number on this connection, request) -> the bytes to answer`` (None: close)."""


def ok(body: bytes = b"{}", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


class ScriptedServer:
    """Reads HTTP/1.1 requests (Content-Length bodies) and answers what ``script`` says."""

    def __init__(self, script: Script, close_after_answer: bool = False) -> None:
        self.script = script
        self.close_after_answer = close_after_answer
        self.requests: list[bytes] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(n, request)
                n += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture(params=[asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable:
    """Each test on both event loops (the dispatcher runs on uvloop)."""
    return request.param


def _client(**kwargs: object) -> WebhookClient:
    options: dict = {"allow_insecure_loopback": True, "timeout_s": 2.0, "max_connections": 8}
    options.update(kwargs)
    return WebhookClient(lambda host, port: [], **options)


def exchange(
    run: Callable,
    script: Script,
    posts: int = 1,
    close_after_answer: bool = False,
    **kwargs: object,
) -> tuple[list[Answer], ScriptedServer]:
    server = ScriptedServer(script, close_after_answer)

    async def go() -> list[Answer]:
        port = await server.start()
        client = _client(**kwargs)
        try:
            url = f"http://127.0.0.1:{port}/hook?x=1"
            return [await client.post(url, b'{"a":1}', {"X-Test": "yes"}) for _ in range(posts)]
        finally:
            await client.aclose()
            await server.stop()

    return run(go()), server


def test_posts_go_over_one_kept_alive_connection_with_the_headers_and_body(run):
    answers, server = exchange(run, lambda n, r: ok(), posts=3)
    assert answers == [Answer(200, None, None)] * 3
    assert server.connections == 1 and len(server.requests) == 3
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook?x=1 HTTP/1.1" and body == b'{"a":1}'
    assert {b"User-Agent: Velora-Webhooks/1", b"Accept-Encoding: identity",
            b"X-Test: yes", b"Content-Length: 7"} <= set(lines)  # fmt: skip
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)


def test_a_redirect_is_an_answer_and_is_not_followed(run):
    answer = (
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n"
    )
    answers, server = exchange(run, lambda n, r: answer)
    assert answers == [Answer(302, "http_302", None)]
    assert len(server.requests) == 1


def test_retry_after_and_the_status_of_a_refusal_are_reported(run):
    answer = b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\nContent-Length: 2\r\n\r\nno"
    answers, _ = exchange(run, lambda n, r: answer)
    assert answers == [Answer(429, "http_429", "7")]


def test_a_chunked_answer_and_an_interim_answer_are_read_whole(run):
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    answers, server = exchange(run, lambda n, r: chunked, posts=2)
    assert answers == [Answer(202, None, None)] * 2 and server.connections == 1


def test_an_oversized_answer_is_cut_and_its_connection_not_used_again(run):
    big = b"x" * (MAX_RESPONSE_BYTES * 4)
    answers, server = exchange(run, lambda n, r: ok(big), posts=2)
    assert answers == [Answer(200, None, None)] * 2
    assert server.connections == 2  # the cut connection was closed, not read on


def test_an_answer_without_a_length_ends_with_the_connection(run):
    answer = b"HTTP/1.1 200 OK\r\n\r\nbye"
    answers, server = exchange(run, lambda n, r: answer, posts=2, close_after_answer=True)
    assert answers == [Answer(200, None, None)] * 2 and server.connections == 2


def test_a_kept_alive_connection_the_server_closed_is_replaced_once(run):
    # Each connection answers one request, then the server closes it while it sits idle.
    def script(n: int, request: bytes) -> bytes | None:
        return ok() if n == 0 else None

    answers, server = exchange(run, script, posts=3)
    assert answers == [Answer(200, None, None)] * 3
    # 3 delivered requests, and each reused connection's one unanswered try
    assert server.connections == 3 and len(server.requests) == 5


def test_a_second_answer_to_one_request_is_never_taken_for_the_next_one(run):
    answers, server = exchange(run, lambda n, r: ok() + ok(extra="Retry-After: 9\r\n"), posts=2)
    assert answers == [Answer(200, None, None)] * 2
    assert server.connections == 2  # the connection that answered twice was dropped


def test_a_connection_closed_before_any_answer_is_reported(run):
    answers, server = exchange(run, lambda n, r: None)
    assert answers == [Answer(None, "server_disconnected", None)]
    assert len(server.requests) == 1  # a new connection that failed is not tried again


def test_a_hanging_receiver_times_out(run):
    answers, _ = exchange(run, lambda n, r: b"HTTP/1.1 200 OK\r\nContent-Le", timeout_s=0.5)
    assert answers == [Answer(None, "timeout", None)]


def test_an_endless_answer_head_is_cut(run):
    endless = b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * (MAX_HEAD_BYTES * 2)
    answers, server = exchange(run, lambda n, r: endless, posts=2)
    assert answers == [Answer(None, "protocol_error", None)] * 2
    assert server.connections == 2  # the connection was dropped


def test_garbage_is_a_protocol_error(run):
    answers, _ = exchange(run, lambda n, r: b"SMTP ready\r\n\r\n")
    assert answers == [Answer(None, "protocol_error", None)]


def test_nothing_listening_is_a_connect_error(run):
    async def post() -> Answer:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = _client()
        try:
            return await client.post(f"http://127.0.0.1:{port}/", b"{}", {})
        finally:
            await client.aclose()

    assert run(post()) == Answer(None, "connect_error", None)


@pytest.mark.parametrize(
    ("headers", "url", "error"),
    [
        ({"X-Bad": "a\r\nInjected: 1"}, "http://127.0.0.1:9/", "invalid_header"),
        ({"X-Bad\n": "a"}, "http://127.0.0.1:9/", "invalid_header"),
        ({}, "http://127.0.0.1:99999/", "invalid_url"),
    ],
)
def test_what_cannot_be_sent_is_refused_before_any_connection(headers, url, error):
    async def post() -> Answer:
        client = _client()
        try:
            return await client.post(url, b"{}", headers)
        finally:
            await client.aclose()

    assert asyncio.run(post()) == Answer(None, error, None)


def test_request_bytes_refuse_a_split_header():
    with pytest.raises(ValueError):
        request_bytes("POST", "/", "h", {"A": "b\nc"}, b"")
    assert request_bytes("POST", "/p", "h:1", {"A": "b"}, b"xy") == (
        b"POST /p HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\nA: b\r\n\r\nxy"
    )


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_verifies_the_certificate_against_the_url_host_name(run, tmp_path, monkeypatch):
    """The address rules are other tests' subject: here they let the loopback TLS
    server through, to check the handshake, the name check and the trust check."""
    monkeypatch.setattr(transport, "_checked", lambda dest, addresses: addresses)
    cert, key = _certificate(tmp_path, "hooks.example")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    server = ScriptedServer(lambda n, r: ok())

    async def go() -> list[Answer]:
        port = await server.start(server_ctx)
        answers = []
        for host, ctx in (("hooks.example", trusting), ("other.example", trusting),
                          ("hooks.example", None)):  # fmt: skip
            client = WebhookClient(
                lambda h, p: [str(ipaddress.ip_address("127.0.0.1"))],
                allow_insecure_loopback=False,
                timeout_s=5.0,
                max_connections=4,
                ssl_context=ctx,
            )
            try:
                answers.append(await client.post(f"https://{host}:{port}/in", b"{}", {}))
            finally:
                await client.aclose()
        await server.stop()
        return answers

    trusted, wrong_name, untrusted = run(go())
    assert trusted == Answer(200, None, None)
    assert wrong_name == untrusted == Answer(None, "connect_error", None)
    assert len(server.requests) == 1 and b"\r\nHost: hooks.example:" in server.requests[0]


def test_idle_connections_past_their_keep_alive_are_swept(run):
    """An endpoint no longer sent to keeps no socket: the pool closes idle connections
    older than the keep-alive, and those their server closed, for every endpoint."""
    servers = [ScriptedServer(lambda n, r: ok()), ScriptedServer(lambda n, r: ok())]

    async def go() -> tuple[int, int, int]:
        ports = [await s.start() for s in servers]
        client = _client()
        try:
            for port in ports:
                await client.post(f"http://127.0.0.1:{port}/", b"{}", {})
            pool = client._pool
            held = pool.idle
            for idle in pool._idle.values():
                for conn in idle:
                    conn.idle_since -= http1.KEEPALIVE_S + 1  # as if 31 s had passed
            pool.sweep()
            swept = pool.idle
            await client.post(f"http://127.0.0.1:{ports[0]}/", b"{}", {})  # a new connection
            return held, swept, servers[0].connections
        finally:
            await client.aclose()
            for s in servers:
                await s.stop()

    held, swept, connections = run(go())
    assert (held, swept, connections) == (2, 0, 2)
