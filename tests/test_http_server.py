"""velora.http_server: every limit of the one way services are served, over real sockets.

A small Starlette app runs under :func:`velora.http_server.make_server` (real
uvicorn, real httptools, port 0) with short timeouts; raw sockets play the client,
so that malformed, oversized and slow requests can be sent byte by byte.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import wait_for
from tests.raw_http import Answer, exchange, parse, request, split_answers
from velora.errors import AuthenticationError
from velora.http_errors import EXCEPTION_HANDLERS
from velora.http_protocol import LINGER_MAX_S, MAX_PIPELINED
from velora.http_server import listen, make_server
from velora.settings import Settings

FAST = {
    "http_header_timeout_s": 1.0,
    "http_body_timeout_s": 1.5,
    "http_keepalive_timeout_s": 1.0,
    "http_request_deadline_s": 1.0,
}
SLACK_S = 5.0  # a loaded two-core machine (load 10+ from other runs) may run a timer late


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "bytes": len(body),
            "client": request.client.host if request.client else None,
            "scheme": request.url.scheme,
        }
    )


async def slow(request: Request) -> Response:
    await anyio.sleep(30)
    return JSONResponse({})


async def guarded(request: Request) -> Response:
    raise AuthenticationError("missing bearer token")  # before reading the body, as ingest does


APP = Starlette(
    routes=[
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/slow", slow),
        Route("/guarded", guarded, methods=["POST"]),
    ],
    exception_handlers=EXCEPTION_HANDLERS,
)


@contextmanager
def serving(**overrides: object) -> Iterator[int]:
    """APP under make_server with these settings; yields the port."""
    settings = Settings.from_env({}, **{**FAST, **overrides})
    sock = listen("127.0.0.1", 0, settings.http_backlog)
    server = make_server(APP, settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="server start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving() as p:
        yield p


def error_type(answer: Answer) -> str:
    assert answer.headers.get("content-type") == "application/json", answer
    error = json.loads(answer.body)["error"]
    assert set(error) == {"type", "message", "details"}
    return error["type"]


def test_an_ordinary_request_is_served_and_the_connection_kept_alive(port):
    conn = socket.create_connection(("127.0.0.1", port))
    try:
        conn.settimeout(10)
        for _ in range(2):  # two requests on one connection
            conn.sendall(request("/echo"))
            raw = b""
            while b"\r\n\r\n" not in raw or len(parse(raw)[2]) < int(
                parse(raw)[1]["content-length"]
            ):
                raw += conn.recv(65536)
            status, headers, body = parse(raw)
            assert status == 200 and json.loads(body)["client"] == "127.0.0.1"
            assert "server" not in headers  # no product banner
    finally:
        conn.close()


def test_headers_over_the_limit_get_431_in_the_json_shape(port):
    answer = exchange(port, request("/echo", "X-Big: " + "a" * 20_000))
    assert answer.status == 431 and error_type(answer) == "headers_too_large"
    many = [f"X-H{i}: {'b' * 100}" for i in range(200)]  # 20 KB in many small headers
    answer = exchange(port, request("/echo", *many))
    assert answer.status == 431 and error_type(answer) == "headers_too_large"


@pytest.mark.parametrize("blind", [False, True])
def test_a_header_streamed_without_end_is_cut_at_the_limit_and_the_client_reads_431(port, blind):
    """A header that never ends: the server stops reading at the limit and answers; it
    drains what still comes for a moment, so a client that keeps sending (blind) gets
    the answer instead of a connection reset."""
    start = b"GET /echo HTTP/1.1\r\nHost: test\r\nX-Big: "
    answer = exchange(port, start, *([b"a" * 65536] * (64 if blind else 1024)), blind=blind)
    assert answer.status == 431 and error_type(answer) == "headers_too_large"
    assert not answer.reset


def test_headers_just_under_the_limit_pass(port):
    answer = exchange(port, request("/echo", "Connection: close", "X-Big: " + "a" * 15_000))
    assert answer.status == 200


def test_the_header_limit_counts_the_request_line_and_headers_to_the_byte(port):
    """16 KiB of request line and headers ("NAME: value\\r\\n" each) pass; one more
    byte is 431."""
    close = "Connection: close"
    others = len("GET /echo HTTP/1.1\r\n") + len("Host: test\r\n") + len(close) + 2
    value = 16_384 - others - len("X-Big: \r\n")
    assert exchange(port, request("/echo", close, "X-Big: " + "a" * value)).status == 200
    answer = exchange(port, request("/echo", close, "X-Big: " + "a" * (value + 1)))
    assert answer.status == 431 and error_type(answer) == "headers_too_large"


@pytest.mark.parametrize("length", [9_000, 100_000])
def test_an_over_long_url_gets_414_in_the_json_shape(port, length):
    """In one read with the rest of the head, and a URL longer than one read."""
    answer = exchange(port, request("/echo?q=" + "x" * length))
    assert answer.status == 414 and error_type(answer) == "uri_too_long"
    assert not answer.reset


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: test\r\nBad Header Name: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /echo\r\n\r\n",  # no HTTP version
        b"GET /echo HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /echo HTTP/2.0\r\nHost: test\r\n\r\n",  # read by the parser, not served
        b"GET /echo HTTP/1.1\nHost: test\n\n",  # bare LF line ends
    ],
)
def test_framing_errors_get_400_in_the_json_shape_not_plain_text(port, raw):
    answer = exchange(port, raw)
    assert answer.status == 400 and error_type(answer) == "bad_request"


def test_headers_trickled_byte_by_byte_are_cut_off_with_408(port):
    head = request("/echo")
    answer = exchange(port, *[head[i : i + 1] for i in range(len(head))], gap_s=0.3)
    assert answer.status == 408 and error_type(answer) == "request_timeout"
    assert 1.0 - 0.1 <= answer.closed_after_s <= 1.0 + SLACK_S


def test_a_body_trickled_byte_by_byte_is_cut_off_with_408(port):
    head = request("/echo", "Content-Length: 1000", method="POST")
    answer = exchange(port, head, *([b"x"] * 1000), gap_s=0.3)
    assert answer.status == 408 and error_type(answer) == "request_timeout"
    assert 1.5 - 0.1 <= answer.closed_after_s <= 1.5 + SLACK_S


@pytest.mark.parametrize("first", [b"", request("/echo")])
def test_idle_connections_are_closed_after_the_keepalive_timeout(port, first):
    """A connection that never sends a byte, and one idle after a response."""
    answer = exchange(port, first)
    assert not answer.reset
    assert 1.0 - 0.1 <= answer.closed_after_s <= 1.0 + SLACK_S
    assert answer.status == (200 if first else None)


def test_the_request_deadline_answers_503_with_retry_after(port):
    answer = exchange(port, request("/slow"))
    assert answer.status == 503 and error_type(answer) == "unavailable"
    assert answer.headers["retry-after"] == "1"
    assert answer.closed_after_s <= 1.0 + SLACK_S


def test_past_the_concurrency_limit_requests_get_503_json_with_retry_after():
    with serving(http_limit_concurrency=2) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            wait_for(lambda: True, timeout=1)  # both accepted before the third connects
            answer = exchange(port, request("/echo"))
        finally:
            for conn in held:
                conn.close()
        assert answer.status == 503 and error_type(answer) == "unavailable"
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        # with the idle connections gone, requests pass again
        ok = wait_for(
            lambda: exchange(port, request("/echo", "Connection: close")).status == 200,
            timeout=10,
        )
        assert ok


def test_forwarded_headers_are_never_trusted_even_from_loopback(port):
    answer = exchange(
        port,
        request(
            "/echo", "X-Forwarded-For: 203.0.113.9", "X-Forwarded-Proto: https", "Connection: close"
        ),
    )
    assert json.loads(answer.body) == {"bytes": 0, "client": "127.0.0.1", "scheme": "http"}


@pytest.mark.parametrize("blind", [False, True])
def test_an_answer_before_the_body_closes_the_connection_and_the_client_still_reads_it(port, blind):
    """401 before a 4 MiB body is read: Connection: close, no reset (the server drains
    what a blind client still sends), and the body is never parsed."""
    head = request("/guarded", f"Content-Length: {4 * 2**20}", method="POST")
    answer = exchange(port, head, *([b"x" * 65536] * 64), blind=blind)
    assert answer.status == 401 and error_type(answer) == "authentication_error"
    assert answer.headers["connection"] == "close"
    assert not answer.reset
    assert answer.closed_after_s <= LINGER_MAX_S + SLACK_S


def test_a_body_under_the_timeout_is_read_whole(port):
    body = b"y" * (3 * 2**20)
    answer = exchange(port, request("/echo", "Connection: close", method="POST", body=body))
    assert answer.status == 200 and json.loads(answer.body)["bytes"] == len(body)


def test_pipelined_requests_are_answered_in_order(port):
    answer = exchange(port, request("/echo") + request("/echo", "Connection: close"))
    assert answer.status == 200
    assert answer.body.count(b'"client":"127.0.0.1"') == 2


def test_a_bad_request_read_ahead_is_refused_after_the_answers_before_it(port):
    """The parser reads pipelined requests ahead of their turn; the refusal of a bad one
    waits for the answers owed to the requests before it, whole and in order."""
    raw = request("/echo") + request("/echo") + b"\x00 nonsense\r\n\r\n"
    answer = exchange(port, raw)
    got = split_answers(answer.raw)
    assert [status for status, _ in got] == [200, 200, 400]
    assert all(json.loads(body)["client"] == "127.0.0.1" for _, body in got[:2])
    assert json.loads(got[2][1])["error"]["type"] == "bad_request"
    assert not answer.reset


def test_a_head_over_the_limit_read_ahead_is_refused_after_the_answer_before_it(port):
    raw = request("/echo") + request("/echo", "X-Big: " + "a" * 20_000)
    answer = exchange(port, raw)
    got = split_answers(answer.raw)
    assert [status for status, _ in got] == [200, 431]
    assert json.loads(got[1][1])["error"]["type"] == "headers_too_large"


def test_a_connection_holds_a_bounded_number_of_pipelined_requests(port):
    """200 requests in one send: the one answered first and MAX_PIPELINED waiting
    behind it are served, in order; the next is refused with 503 and the connection
    closed, so the rest were never held."""
    answer = exchange(port, request("/echo") * 200)
    got = split_answers(answer.raw)
    assert [status for status, _ in got] == [200] * (1 + MAX_PIPELINED) + [503]
    assert json.loads(got[-1][1])["error"]["type"] == "unavailable"
    assert not answer.reset


def test_a_request_after_a_large_body_in_the_same_read_is_not_counted_as_its_head(port):
    """A head that begins in a read after another request's body: only its own bytes
    count toward the header limit, so a 3 MiB body followed by a small request in one
    send is served twice, not refused."""
    body = b"z" * (3 * 2**20)
    raw = request("/echo", method="POST", body=body) + request("/echo", "Connection: close")
    answer = exchange(port, raw)
    got = split_answers(answer.raw)
    assert [status for status, _ in got] == [200, 200]
    assert json.loads(got[0][1])["bytes"] == len(body)


def test_a_head_sent_in_pieces_is_bounded_across_them(port):
    """Under the limit in pieces: served. Over it, in pieces each well under it: 431."""
    head = request("/echo", "Connection: close", "X-Big: " + "a" * 15_000)
    pieces = [head[i : i + 4000] for i in range(0, len(head), 4000)]
    assert exchange(port, *pieces, gap_s=0.05).status == 200
    head = request("/echo", "Connection: close", "X-Big: " + "a" * 17_000)
    pieces = [head[i : i + 4000] for i in range(0, len(head), 4000)]
    answer = exchange(port, *pieces, gap_s=0.05)
    assert answer.status == 431 and error_type(answer) == "headers_too_large"


def test_an_upgrade_request_is_answered_as_a_plain_one_and_the_connection_closed(port):
    head = request("/echo", "Connection: Upgrade", "Upgrade: websocket")
    answer = exchange(port, head)
    assert answer.status == 200 and json.loads(answer.body)["bytes"] == 0
    assert answer.headers["connection"] == "close"  # not kept alive for another request
