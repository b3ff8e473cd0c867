"""A Kafka connection attempt that fails or is cancelled closes its socket at once.

kafka-python 3.0.12 leaves such sockets to the garbage collector
(:mod:`velora.kafka_sockets`). Shown here with its own connect path: refused by a
closed port through a public client, and cancelled while the TCP connect is still
under way (a listener whose accept queue is full drops the SYN, so the connect
stays in progress; the attempt's task is then closed, as ``client.close()`` does).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import REPO
from velora import kafka_sockets

REFUSED = """
import gc, socket, sys
from velora import kafka_sockets
if sys.argv[1] == "installed":
    assert kafka_sockets.install()
unclosed = []
sys.unraisablehook = lambda u: unclosed.append(repr(u.object))
with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError
try:
    KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=3000)
except KafkaTimeoutError:  # could not bootstrap, as expected
    pass
gc.collect()
print(sum("socket" in u for u in unclosed))
"""


def _unclosed_after_refusals(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", REFUSED, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_refused_attempts_leave_sockets_to_the_collector_without_the_fix() -> None:
    assert _unclosed_after_refusals("plain") >= 1  # the kafka-python behaviour it repairs


def test_refused_attempts_close_their_sockets_with_the_fix() -> None:
    assert _unclosed_after_refusals("installed") == 0


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """A listener that never accepts, its queue already full: new SYNs are dropped."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    yield address
    for s in [*fillers, server]:
        s.close()


def test_an_attempt_closed_mid_connect_closes_its_socket(silent_listener) -> None:
    from kafka.net.inet import KafkaNetSocket
    from kafka.net.selector import NetworkSelector

    assert kafka_sockets.install()
    made: list[socket.socket] = []

    class Recording(KafkaNetSocket):
        SCHEMES = ()

        def socket(self, *args):
            made.append(socket.socket(*args))
            return made[-1]

    net = NetworkSelector()
    try:
        host, port = silent_listener
        addrinfo = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))
        attempt = Recording().connect(net, addrinfo)
        attempt.send(None)  # suspended, waiting for the connect to complete
        assert made and made[0].fileno() != -1
        attempt.close()  # what closing the client does to its pending tasks
        assert made[0].fileno() == -1
    finally:
        net.close()
