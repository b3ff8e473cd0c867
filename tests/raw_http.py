"""A raw-socket HTTP/1.1 client for the tests that send what no HTTP library would.

Oversized, malformed and slow requests, pieces with gaps, blind senders, and an
answer read to EOF with the time the server took to close. Standard library only.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass


@dataclass
class Answer:
    """What the server sent back (status None: nothing parseable), and how it ended."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    closed_after_s: float  # when the server closed the connection (from the first send)
    reset: bool
    raw: bytes = b""  # every byte the server sent


def parse(raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Status, headers (lowercase names) and body of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return None, {}, raw
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def split_answers(raw: bytes) -> list[tuple[int | None, bytes]]:
    """Status and body of each answer, in order, in the bytes of pipelined answers
    (each with a ``Content-Length``); an unparseable rest is ``(None, rest)``."""
    out: list[tuple[int | None, bytes]] = []
    while raw:
        status, headers, rest = parse(raw)
        if status is None:
            return [*out, (None, raw)]
        length = int(headers.get("content-length", "0"))
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


def exchange(
    port: int, *pieces: bytes, gap_s: float = 0.0, blind: bool = False, wait_s: float = 15.0
) -> Answer:
    """Send ``pieces`` and read the answer to EOF.

    Between pieces the client waits up to ``gap_s`` for the server and stops sending
    once it has answered (as curl does), unless ``blind`` (as most clients do: send
    the whole request, then read).
    """
    conn = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    raw = b""
    reset = False
    try:
        for piece in pieces:
            if not blind and select.select([conn], [], [], gap_s)[0]:
                break  # the server answered or closed
            try:
                conn.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                reset = True
                break
        conn.settimeout(wait_s)
        rest, closed_by_reset = read_until_closed(conn)
        raw += rest
        reset = reset or closed_by_reset
    finally:
        conn.close()
    status, headers, body = parse(raw)
    return Answer(status, headers, body, time.monotonic() - started, reset, raw)


def request(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """A request's bytes: request line, ``Host``, ``headers`` lines, then ``body``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until_closed(conn: socket.socket) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes; and whether it closed with a reset."""
    raw = b""
    while True:
        try:
            data = conn.recv(65536)
        except ConnectionResetError:
            return raw, True
        if not data:
            return raw, False
        raw += data
