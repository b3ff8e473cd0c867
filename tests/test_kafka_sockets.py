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


@pytest.fixture
def suspended_attempt(silent_listener):
    """A kafka-python connect attempt on a new I/O loop, suspended while its TCP connect
    is under way: ``(loop, attempt, its socket)``; the loop is closed afterwards."""
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
    host, port = silent_listener
    addrinfo = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))
    attempt = Recording().connect(net, addrinfo)
    try:
        attempt.send(None)  # suspended, waiting for the connect to complete
        assert made and made[0].fileno() != -1
        yield net, attempt, made[0]
    finally:
        attempt.close()
        net.close()


def test_an_attempt_closed_mid_connect_closes_its_socket(suspended_attempt) -> None:
    _, attempt, sock = suspended_attempt
    attempt.close()  # what closing the client does to its pending tasks
    assert sock.fileno() == -1


def test_closing_the_loop_closes_a_socket_its_attempt_left_open(suspended_attempt) -> None:
    # An attempt still suspended in its connect that nobody closes (a task the
    # loop's close did not reach), its socket referenced from a cycle: closing the
    # loop closes the socket, rather than a later garbage collection.
    net, _, sock = suspended_attempt
    net.close()
    assert sock.fileno() == -1


HALF_BUILT = """
import gc, socket, sys, threading
from velora import kafka_clients, kafka_sockets
from velora.errors import Unavailable
from velora.settings import Settings
kafka_sockets.install()
unclosed = []
sys.unraisablehook = lambda u: unclosed.append(repr(u.object))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
held = []
def accept():  # accepts every connection and never answers: the bootstrap times out
    while True:
        try:
            held.append(server.accept()[0])
        except OSError:
            return
threading.Thread(target=accept, daemon=True).start()
settings = Settings.from_env({}, kafka_bootstrap="127.0.0.1:%d" % server.getsockname()[1])
kind, mode = sys.argv[1], sys.argv[2]
config = {"bootstrap_timeout_ms": 1500, "request_timeout_ms": 1000}
before = set(threading.enumerate())
try:
    if mode == "plain":
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
        cls = {"consumer": KafkaConsumer, "producer": KafkaProducer, "admin": KafkaAdminClient}
        cls[kind](bootstrap_servers=settings.kafka_bootstrap, **config)
    else:
        made = {"consumer": kafka_clients.new_consumer, "producer": kafka_clients.new_producer}
        made[kind](settings, "velora-test", **config)
except Exception as exc:
    assert isinstance(exc, Unavailable) or mode == "plain", exc
else:
    raise AssertionError("the bootstrap was expected to time out")
left = [t for t in set(threading.enumerate()) - before if t.name.startswith("kafka-io")]
for t in left:
    t.join(5)
gc.collect()
print(sum(t.is_alive() for t in left), sum("socket" in u for u in unclosed))
"""


def _half_built(kind: str, mode: str) -> tuple[int, int]:
    """(I/O threads still running, sockets left to the collector) after a client's
    constructor timed out bootstrapping against a broker that never answers."""
    out = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", HALF_BUILT, kind, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    threads, sockets = out.stdout.strip().splitlines()[-1].split()
    return int(threads), int(sockets)


@pytest.mark.parametrize("kind", ["consumer", "producer"])
def test_a_client_whose_constructor_fails_is_closed(kind: str) -> None:
    """kafka-python leaves a half-built client's I/O thread running (consumer) or its
    connected sockets to the collector (producer); the project's factory closes it."""
    threads, sockets = _half_built(kind, "plain")
    assert threads + sockets >= 1  # the kafka-python behaviour it repairs
    assert _half_built(kind, "factory") == (0, 0)


READ_AFTER_CLOSE = """
import logging, socket, sys
from velora import kafka_sockets
if sys.argv[1] == "installed":
    assert kafka_sockets.install()
from kafka.net.transport import KafkaTCPTransport

class Net:  # the transport's selector, as far as closing needs one
    def unregister_event(self, sock, events): pass
    def cancel(self, task): pass

errors = []
class Errors(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            errors.append(record.getMessage())
logging.getLogger("kafka").addHandler(Errors())
ours, theirs = socket.socketpair()
transport = KafkaTCPTransport(Net(), ours)
transport.close()  # the connection closes while its read task waits ...
data, err = transport._sock_recv()  # ... and the task wakes and reads
theirs.close()
print(repr(data), type(err).__name__, len(errors))
"""


def _read_after_close(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", READ_AFTER_CLOSE, mode], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return out.stdout.strip()


def test_a_read_after_close_logs_a_traceback_without_the_fix() -> None:
    assert _read_after_close("plain") == "b'' KafkaConnectionError 1"


def test_a_read_after_close_reads_nothing_and_logs_nothing_with_the_fix() -> None:
    assert _read_after_close("installed") == "b'' KafkaConnectionError 0"
