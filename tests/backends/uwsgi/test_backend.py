"""The uwsgi backend through real uWSGI processes: the rows of docs/backends.rst that the
shared server tests (tests/integration, parametrized over every server) do not cover.

uWSGI's defects are asserted in ``test_defects.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dwebsocket.protocol.frames import Opcode, encode_close_payload, encode_frame
from tests.servers import ServerProcess, flooding
from tests.wire import (
    TIMEOUT,
    RawClient,
    masked,
    next_answer_alone,
    read_http_response,
    upgrade_request,
)

pytestmark = pytest.mark.server

BACKEND_SERVERS = ["uwsgi-gevent", "uwsgi-async"]


#: A close timeout (the server's ``WEBSOCKET_CLOSE_TIMEOUT``, a client's) that must never
#: be waited out: it outlasts the test's own waits (``TIMEOUT``), which a wait on it fails.
FOREVER = 6 * TIMEOUT


def ws(server: ServerProcess, path: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("max_size", 8 << 20)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return connect(server.url(path), open_timeout=TIMEOUT, proxy=None, **kwargs)


def http_json(server: ServerProcess, path: str) -> Any:
    with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module", params=BACKEND_SERVERS)
def _uwsgi_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """The module's server of each kind, in a list: :func:`uwsgi_server` replaces one
    whose worker crashed."""
    from tests.conftest import assert_no_traceback
    from tests.servers import start_server

    servers = [start_server(request.param, tmp_path_factory.mktemp(request.param) / "server.log")]
    try:
        yield servers
    finally:
        for srv in servers:
            srv.stop()
    for srv in servers:
        assert_no_traceback(srv)


@pytest.fixture
def uwsgi_server(_uwsgi_servers: list[ServerProcess]) -> ServerProcess:
    """The shared server, started again first if its worker segfaulted: uWSGI's ugreen
    (``--async``) crashes the worker now and then when concurrent requests end out of
    order, in uWSGI's own code (docs/backends.rst, tests/backends/uwsgi/defects.py); the
    worker it respawns has lost every connection, so the next tests on it would all time
    out for a crash that happened after the test that caused it had passed."""
    from tests.servers import start_server

    srv = _uwsgi_servers[-1]
    if "Segmentation Fault" in srv.log():
        srv.stop()
        log = srv.log_path.with_name(f"server-{len(_uwsgi_servers)}.log")
        _uwsgi_servers.append(start_server(srv.name, log))
    return _uwsgi_servers[-1]


@pytest.fixture
def own_uwsgi_server(uwsgi_server: ServerProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the shared one's kind for one test alone: a flood leaves its worker
    busy (and, under ``--async``, its connections reset) after the test, so the next
    tests on a shared server failed for it."""
    from tests.conftest import assert_no_traceback
    from tests.servers import start_server

    srv = start_server(uwsgi_server.name, tmp_path / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
    assert_no_traceback(srv)


def test_text_and_binary_stay_apart_on_send(uwsgi_server: ServerProcess) -> None:
    """websocket_send for str, websocket_send_binary for bytes: never mixed up."""
    with ws(uwsgi_server, "/uwsgi/kinds/") as client:
        assert client.recv(timeout=TIMEOUT) == "text"
        assert client.recv(timeout=TIMEOUT) == b"bytes"


def test_echo_of_everything_but_empty_messages(uwsgi_server: ServerProcess) -> None:
    """The shared echo test minus empty messages (lost: test_defects.py). Binary that is
    not UTF-8 stays binary, text stays text, sizes up to 1 MiB in one frame."""
    messages = ["hello", "héllo wörld ☃ 🚀", b"\x00\x01\xfe\xff", "x" * 70000, b"\xff" * (1 << 20)]
    with ws(uwsgi_server, "/echo/") as client:
        for message in messages:
            client.send(message)
            answer = client.recv(timeout=TIMEOUT)
            assert answer == message and type(answer) is type(message)


def test_subprotocol_offered_but_not_chosen_is_not_echoed(uwsgi_server: ServerProcess) -> None:
    """uWSGI's own handshake would echo the client's whole offer (clients refuse that):
    the backend sends its own 101 through the WSGI wrapper."""
    with ws(uwsgi_server, "/echo/", subprotocols=["a", "b"]) as client:
        assert client.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in client.response.headers
        client.send("still works")
        assert client.recv(timeout=TIMEOUT) == "still works"


def test_server_close_frame_has_code_and_reason_and_nothing_follows(
    uwsgi_server: ServerProcess,
) -> None:
    """uWSGI has no API for a close code: the frame is written by hand, the peer's reply
    read by hand (uWSGI would answer it with a second close frame)."""
    with RawClient(socket.create_connection((uwsgi_server.host, uwsgi_server.port))) as client:
        client.handshake("/close/?code=4003&reason=r%C3%A9sum%C3%A9")
        client.sock.sendall(masked(0x1, b"go"))
        event = client.recv()
        assert (event.code, event.reason) == (4003, "résumé")  # type: ignore[union-attr]
        # The core answered with our close frame; the server ends TCP, writing nothing.
        rest = b""
        while chunk := client.sock.recv(65536):
            rest += chunk
        assert rest == b""


def test_send_from_another_thread_reaches_the_client_in_order(uwsgi_server: ServerProcess) -> None:
    """uWSGI allows its API only in the request's own greenlet/thread: a real thread's
    send() is handed to the view (waiting in wait()), which writes it."""
    with ws(uwsgi_server, "/uwsgi/from-thread/?n=50") as client:
        got = [client.recv(timeout=TIMEOUT) for _ in range(51)]
    assert got == [f"t{i}" for i in range(50)] + ["done"]


def test_deliver_overflow_closes_1008_and_counts_a_dropped_member(
    make_server: Callable[..., ServerProcess],
) -> None:
    """deliver() never blocks; past WEBSOCKET_SEND_QUEUE_SIZE bytes the view closes 1008,
    which counts in group_members_dropped_total and is logged at INFO, as with the
    default backend (docs/metrics.rst, docs/logging.rst; before, the uwsgi backend never
    counted it, 0.0, nor logged it)."""
    for name in BACKEND_SERVERS:
        server = make_server(name, settings={"WEBSOCKET_SEND_QUEUE_SIZE": 4096})
        with (
            ws(server, "/uwsgi/from-thread/?n=20&deliver=1") as client,
            pytest.raises(ClientClosed),
        ):
            while True:
                client.recv(timeout=TIMEOUT)
        assert client.close_code == 1008, name
        with urllib.request.urlopen(server.url("/metrics", "http"), timeout=TIMEOUT) as page:
            lines = page.read().decode().splitlines()
        ours = [line for line in lines if line.startswith("django_websocket_")]
        assert "django_websocket_group_members_dropped_total 1.0" in ours, (name, ours)
        slow = "[INFO dwebsocket] WebSocket peer 127.0.0.1 on /uwsgi/from-thread/ reads too "
        slow += "slowly (more than 4096 bytes queued): closing (1008)"
        assert server.log().count(slow) == 1, (name, server.log())


def test_wait_timeout_then_a_large_send(uwsgi_server: ServerProcess) -> None:
    """A timed-out wait() leaves no trace: under --async a uWSGI timeout would make the
    next write that has to wait fail (the backend uses a timerfd instead)."""
    with ws(uwsgi_server, "/uwsgi/wait-timeout/") as client:
        assert client.recv(timeout=TIMEOUT) == b"\x00" * (5 << 20)
        assert client.recv(timeout=TIMEOUT) == "timeout:None:False"


def test_a_flood_is_pushed_back_not_buffered(own_uwsgi_server: ServerProcess) -> None:
    """A client sending faster than its view consumes: the backend takes no more from
    uWSGI once 1,024 messages wait for the view (the default backend's bound), so TCP
    pushes the client back. It took every message uWSGI could read: a flood of small
    messages grew the worker's memory without bound (64 MiB of 1-byte messages: +80 MB)."""
    with RawClient.connect(
        own_uwsgi_server.host, own_uwsgi_server.port, "/uwsgi/backlog/"
    ) as client:
        assert client.recv() == "ready"
        flood = masked(Opcode.TEXT, b"go") + masked(Opcode.BINARY, b"\x01") * (600 << 10)
        client.sock.settimeout(2.0)  # the view looks away for 0.5 s, then reads or not
        with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
            client.sock.sendall(flood)  # 4.2 MiB: more than the socket buffers hold
        client.sock.settimeout(TIMEOUT)
        report = client.recv()
    assert isinstance(report, str) and int(report) <= 1024, report


#: A client that sends 1-byte messages to /echo/ as fast as it can, reading the echoes,
#: until killed: ``python -c _FLOODER HOST PORT``. It prints "flooding" once under way.
_FLOODER = """
import socket, sys, threading
sys.path.insert(0, ".")
from tests.wire import RawClient, masked
client = RawClient.connect(sys.argv[1], int(sys.argv[2]), "/echo/")
def drain():
    while client.sock.recv(65536):
        pass
threading.Thread(target=drain, daemon=True).start()
block = masked(1, b"m") * 10000
client.sock.sendall(block)
print("flooding", flush=True)
while True:
    client.sock.sendall(block)
"""


def test_a_client_flooding_its_view_does_not_starve_the_others(
    own_uwsgi_server: ServerProcess,
) -> None:
    """One client sends messages as fast as its view echoes them: another client of the
    same worker is still served meanwhile. The view's wait() found a message ready each
    time and never let the worker's event loop run: every other connection, and every
    new request, waited until the flood ended."""
    with (
        flooding(_FLOODER, own_uwsgi_server),
        RawClient.connect(own_uwsgi_server.host, own_uwsgi_server.port, "/echo/") as other,
    ):
        other.send("still served")
        assert other.recv() == "still served"


def test_request_finished_fires(uwsgi_server: ServerProcess) -> None:
    """The WSGI wrapper swallows Django's start_response after the 101, so Django's
    response closes normally and request_finished fires for WebSocket requests."""
    before = http_json(uwsgi_server, "/uwsgi/finished/")["finished"]
    with ws(uwsgi_server, "/echo/") as client:
        client.send("x")
        assert client.recv(timeout=TIMEOUT) == "x"
    # +1 for the first GET itself (it finished after answering), +1 for the WebSocket.
    deadline = time.monotonic() + TIMEOUT
    while True:
        after = http_json(uwsgi_server, "/uwsgi/finished/")["finished"]
        if after - before >= 2 or time.monotonic() > deadline:
            break
    assert after - before == 2


def test_broadcast_between_two_connections(uwsgi_server: ServerProcess) -> None:
    """send() from one view's greenlet/core to another connection wakes its owner, under
    --gevent and --async --ugreen (where the owner waits on an epoll fd and suspends
    through ctypes). Closed last-opened first: see test_defects.py for why."""
    with ws(uwsgi_server, "/uwsgi/broadcast/") as first:
        first.send("hello")
        assert first.recv(timeout=TIMEOUT) == "hello"
        with ws(uwsgi_server, "/uwsgi/broadcast/") as second:
            second.send("hi")
            assert second.recv(timeout=TIMEOUT) == "hi"
            second.send("all:news")
            assert second.recv(timeout=TIMEOUT) == "sent:1"
            assert first.recv(timeout=TIMEOUT) == "news"


def test_keepalive_is_uwsgis(make_server: Callable[..., ServerProcess]) -> None:
    """Keepalive pings are uWSGI's (--websocket-ping-freq), sent while the view waits; a
    client that never answers is dropped after --websocket-pong-tolerance. Both bounded."""
    import tests.backends.uwsgi.servers  # noqa: F401 - registers uwsgi-gevent-ping

    server = make_server("uwsgi-gevent-ping")
    with RawClient(socket.create_connection((server.host, server.port))) as client:
        deaf = client.conn = _DeafClient()  # type: ignore[assignment]  # never answers pings
        client.handshake("/echo/")
        data = deaf.received  # what came with the 101
        while chunk := client.sock.recv(65536):
            data += chunk
    assert data.startswith(b"\x89\x00")  # uWSGI's ping: always empty


def _signals(server: ServerProcess, path: str, last: str) -> list[str]:
    """The signals recorded for ``path`` (a ``?id=`` view), once one starts with ``last``."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        seen: list[str] = http_json(server, path)["signals"]
        if any(s.startswith(last) for s in seen):
            return seen
        assert time.monotonic() < deadline, f"nothing starting with {last!r} in {seen}"
        time.sleep(0.05)


def test_a_peer_that_answers_no_ping_is_closed_1011(
    make_server: Callable[..., ServerProcess],
) -> None:
    """uWSGI's keepalive gives up on a client that answers no ping by failing the next
    recv, as it fails after the peer's close frame. The backend tells the two apart: the
    client gets a 1011 close frame ("keepalive ping timeout"), and the view and
    websocket_closed see 1011, as with the default backend at WEBSOCKET_PING_TIMEOUT (it
    read 1005, a close by the client, and no close frame went out). A client that
    answers the pings and closes after a longer silence still reads as its close."""
    import tests.backends.uwsgi.servers  # noqa: F401 - registers uwsgi-gevent-ping

    server = make_server("uwsgi-gevent-ping")  # a ping every second, a second to answer
    path = f"/uwsgi/signalled/?id={uuid.uuid4().hex}"
    with RawClient(socket.create_connection((server.host, server.port))) as client:
        deaf = client.conn = _DeafClient()  # type: ignore[assignment]  # never answers pings
        client.handshake(path)
        data = deaf.received
        while chunk := client.sock.recv(65536):
            data += chunk
    close = encode_frame(Opcode.CLOSE, encode_close_payload(1011, "keepalive ping timeout"))
    assert data.startswith(b"\x89\x00") and data.endswith(close)
    assert _signals(server, path, "view") == [
        "opened",
        "closed 1011",
        "view 1011 keepalive ping timeout",
    ]

    path = f"/uwsgi/signalled/?id={uuid.uuid4().hex}"
    with ws(server, path) as answering:  # answers uWSGI's pings
        time.sleep(2.5)  # silent for longer than the tolerance: pongs only
        answering.send("still here")
        assert answering.recv(timeout=TIMEOUT) == "still here"
        time.sleep(2.5)
    assert _signals(server, path, "view") == ["opened", "closed 1005", "view 1005 "]


class _DeafClient:
    """Stands in for the core on the client side: swallows everything, answers nothing."""

    eof = False

    def __init__(self) -> None:
        self.received = b""

    def receive_data(self, data: bytes) -> list[Any]:
        self.received += data
        return []

    def data_to_send(self) -> bytes:
        return b""


def test_100_connections_on_one_gevent_100_worker(
    make_server: Callable[..., ServerProcess],
) -> None:
    """The issue's load test: one worker, --gevent 100, 100 connections at once. Echo on
    every one, then a broadcast from one view to the 99 others through send() from its
    greenlet. Timings are printed, not asserted."""
    server = make_server("uwsgi-gevent")
    n = 100
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws(server, "/uwsgi/broadcast/")) for _ in range(n)]
        started = time.monotonic()
        for i, client in enumerate(clients):
            client.send(f"echo {i}")
        echoed = [client.recv(timeout=TIMEOUT) for client in clients]
        echo_time = time.monotonic() - started
        assert echoed == [f"echo {i}" for i in range(n)]
        started = time.monotonic()
        clients[0].send("all:to everyone")
        assert clients[0].recv(timeout=TIMEOUT) == f"sent:{n - 1}"
        received = [client.recv(timeout=TIMEOUT) for client in clients[1:]]
        broadcast_time = time.monotonic() - started
        assert received == ["to everyone"] * (n - 1)
        print(
            f"\n[uwsgi --gevent 100] {n} connections: echo on all in "
            f"{echo_time * 1000:.1f} ms, broadcast to {n - 1} in {broadcast_time * 1000:.1f} ms"
        )


def test_groups_reach_members_and_forget_them_on_close(uwsgi_server: ServerProcess) -> None:
    """Groups call deliver() on members; websocket_closed makes a closed member leave."""
    room = "/group/uwsgi-room/"
    with ws(uwsgi_server, room) as first, ws(uwsgi_server, room) as second:
        assert first.recv(timeout=TIMEOUT) == second.recv(timeout=TIMEOUT) == "joined"
        first.send("to the room")
        assert second.recv(timeout=TIMEOUT) == "to the room"
        assert first.recv(timeout=TIMEOUT) == "to the room"
    deadline = time.monotonic() + TIMEOUT
    while http_json(uwsgi_server, "/group/uwsgi-room/status/")["members"] != 0:
        assert time.monotonic() < deadline, "closed members stayed in the group"


def test_a_close_in_websocket_opened_is_signalled_after_it(uwsgi_server: ServerProcess) -> None:
    """A websocket_opened receiver that closes the connection (its close frame goes out
    at once): websocket_closed follows the receivers of websocket_opened, never runs in
    their middle, so a "who is online" receiver connected after the closing one lets the
    connection go (it used to add it after websocket_closed had removed it)."""
    path = f"/uwsgi/close-in-opened/?id={uuid.uuid4().hex}"
    with ws(uwsgi_server, path) as client, pytest.raises(ClientClosed):
        client.recv(timeout=TIMEOUT)
    assert (client.close_code, client.close_reason) == (4000, "not today")
    deadline = time.monotonic() + TIMEOUT
    while not any(s.startswith("closed") for s in http_json(uwsgi_server, path)["signals"]):
        assert time.monotonic() < deadline, "no websocket_closed"
        time.sleep(0.05)
    seen = http_json(uwsgi_server, path)
    assert seen["signals"] == ["opened", "opened returned", "closed 4000"]
    assert seen["online"] is False


def test_a_session_killed_while_it_closes_still_signals_the_close(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A request timeout (gevent.Timeout around the view) that expires while the session
    waits for the client's close frame: websocket_closed is still sent (groups, users and
    the open-connections gauge let the connection go) and the client sees EOF at once:
    once the timeout fired, not when uWSGI's request ended WEBSOCKET_CLOSE_TIMEOUT later
    (:data:`FOREVER` here: the client's read times out first) -- or never."""
    server = make_server("uwsgi-gevent", settings={"WEBSOCKET_CLOSE_TIMEOUT": FOREVER})
    path = f"/uwsgi/killed-while-closing/?id={uuid.uuid4().hex}&after=0.5"
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    with RawClient(sock) as client:
        client.conn = _DeafClient()  # type: ignore[assignment]  # never answers the close
        client.handshake(path)
        while client.sock.recv(65536):
            pass
    deadline = time.monotonic() + TIMEOUT
    while not any(s.startswith("closed") for s in http_json(server, path)["signals"]):
        assert time.monotonic() < deadline, "no websocket_closed"
        time.sleep(0.05)
    seen = http_json(server, path)
    assert seen["signals"] == ["opened", "closed 1000"]
    assert seen["online"] is False


def test_a_send_after_a_close_before_the_accept_still_completes_the_handshake(
    uwsgi_server: ServerProcess,
) -> None:
    """Another thread's close(4001) before the view accepted, then the view's send():
    the client gets the 101 and the 4001 close frame, as for a wait() there (the send
    used to raise before accepting, and the session's HttpResponse(101) then reached the
    client as a 101 without Upgrade or Sec-WebSocket-Accept: a failed handshake)."""
    with ws(uwsgi_server, "/uwsgi/closed-before-accept/") as client, pytest.raises(ClientClosed):
        client.recv(timeout=TIMEOUT)
    assert (client.close_code, client.close_reason) == (4001, "closed early")


def test_under_gevent_early_monkey_patch(make_server: Callable[..., ServerProcess]) -> None:
    """--gevent-early-monkey-patch (docs/deployment.rst: needed as soon as views use a
    database driver) replaces selectors.DefaultSelector with gevent's, which has no fd to
    wait on, and makes socket.socket gevent's, whose recv() waits even with MSG_DONTWAIT.
    Echo, a helper thread's sends (a greenlet here) while the view waits, a wait that
    times out; each session ends at once when the client closes (its close frame is
    answered, then TCP ends: the client does not wait for its close timeout). Both close
    timeouts are :data:`FOREVER`: a close waiting either does not end within ``TIMEOUT``."""
    import tests.backends.uwsgi.servers  # noqa: F401 - registers uwsgi-gevent-patched

    server = make_server("uwsgi-gevent-patched", settings={"WEBSOCKET_CLOSE_TIMEOUT": FOREVER})

    @contextlib.contextmanager
    def session(path: str) -> Iterator[ClientConnection]:
        with ws(server, path, close_timeout=FOREVER) as client:
            yield client
            closing = threading.Thread(target=client.close, daemon=True)
            closing.start()
            closing.join(TIMEOUT)
            assert not closing.is_alive(), f"{path}: the close waited a close timeout"

    with session("/echo/") as client:
        client.send("hello")
        assert client.recv(timeout=TIMEOUT) == "hello"
    with session("/uwsgi/from-thread/?n=5") as client:
        got = [client.recv(timeout=TIMEOUT) for _ in range(6)]
    assert got == [f"t{i}" for i in range(5)] + ["done"]
    with session("/uwsgi/wait-timeout/") as client:
        assert client.recv(timeout=TIMEOUT) == b"\x00" * (5 << 20)
        assert client.recv(timeout=TIMEOUT) == "timeout:None:False"


def _worker_pid(server: ServerProcess) -> int:
    """The pid of the one worker of ``server`` (started with ``--processes 1``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                # pid (comm) state ppid ...: comm may hold spaces, not ")".
                if int(f.read().rsplit(")", 1)[1].split()[1]) == server.process.pid:
                    return int(entry)
    raise AssertionError("no uWSGI worker found")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _leave_free(pid: int, free: int) -> None:
    """Lower the worker's soft fd limit to what it holds now plus ``free``."""
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_fds(pid) + free, hard))


def _refused_with_503(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws(server, "/echo/", ping_interval=None)
    response = refused.value.response
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, uses prlimit")
def test_a_worker_out_of_file_descriptors_refuses_with_503_and_recovers(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A connection needs fds of its own (an epoll fd and an eventfd under --gevent): a
    worker that has none left answers the handshake with 503 and Retry-After -- not a 101
    followed by a dropped connection and two tracebacks -- also with no fd at all left
    for the refusal itself. Its open connections keep working and close cleanly (with
    no fd to spare), and once fds are free again it serves as before. (With none left
    for the TCP connection itself uWSGI does not accept it: the client waits in the
    listen backlog, which is uWSGI's.)"""
    server = make_server("uwsgi-gevent")
    with ws(server, "/echo/") as client:  # the worker has served one session
        client.send("warm")
        assert client.recv(timeout=TIMEOUT) == "warm"
    pid = _worker_pid(server)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(ws(server, "/echo/", ping_interval=None))
        closer = stack.enter_context(ws(server, "/close/?code=4003&reason=bye", ping_interval=None))
        _leave_free(pid, 2)  # the TCP connection and an epoll fd, no eventfd
        _refused_with_503(server)
        _leave_free(pid, 1)  # the TCP connection, nothing for the connection's own
        _refused_with_503(server)
        echo.send("still here")
        assert echo.recv(timeout=TIMEOUT) == "still here"
        _leave_free(pid, 0)
        closer.send("go")  # the view closes: its close handshake needs no new fd
        with pytest.raises(ClientClosed):
            closer.recv(timeout=TIMEOUT)
        assert (closer.close_code, closer.close_reason) == (4003, "bye")
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        echo.send("and after")
        assert echo.recv(timeout=TIMEOUT) == "and after"
    with ws(server, "/echo/") as client:
        client.send("serving")
        assert client.recv(timeout=TIMEOUT) == "serving"


def _outcome(server: ServerProcess, path: str) -> int | tuple[int | None, str | None]:
    """The HTTP status that refused the handshake, or the close code and reason after a 101."""
    try:
        with ws(server, path) as client, contextlib.suppress(ClientClosed):
            client.recv(timeout=TIMEOUT)
    except InvalidStatus as refused:
        return refused.response.status_code
    return client.close_code, client.close_reason


def test_a_close_before_the_accept_then_a_refusal_as_with_the_default_backend(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A close before the view accepted, then a refusal (a 403, an exception) or a
    wait(), on the default backend and the uwsgi backend alike. close() -- by the view or
    by another thread -- is a close handshake: the default backend runs it at once, so the
    client gets the 101 and the close frame whatever the view does next (under uWSGI only
    the view's core may write: a close asked for by another thread used to be dropped
    when the view then raised, a 500 instead). Deliveries over the send queue before the
    handshake are no close yet: the view's refusal reaches the client (under uWSGI a 101
    and a 1008 close used to), and an accept is followed by the 1008."""
    closed = (4003, "no")
    expected = {
        ("view", "refuse"): closed,
        ("view", "raise"): closed,
        ("view", "accept"): closed,
        ("thread", "refuse"): closed,
        ("thread", "raise"): closed,
        ("thread", "accept"): closed,
        ("overflow", "refuse"): 403,
        ("overflow", "raise"): 500,
        ("overflow", "accept"): (1008, "send queue overflow"),
    }
    default = {"ROOT_URLCONF": "tests.backends.uwsgi.urls"}  # these views, on gevent
    for name in ["gevent", *BACKEND_SERVERS]:
        server = make_server(name, settings=default if name == "gevent" else {})
        seen = {
            (by, then): _outcome(server, f"/uwsgi/close-then-refuse/?by={by}&then={then}")
            for by, then in expected
        }
        assert seen == expected, name


def test_a_send_from_another_thread_as_the_view_closes_is_delivered_or_raises(
    uwsgi_server: ServerProcess,
) -> None:
    """Another thread's send() at the moment the view's close has written everything
    queued and is about to write its close frame: the message reaches the client before
    the close frame, as on the default backend, where every send() that returned was
    written before it (it used to be queued, the send() returned, and the close dropped
    it). Whatever the timing, a send() that returned is delivered; one that is not
    raises ConnectionClosed."""
    path = f"/uwsgi/send-in-the-close/?id={uuid.uuid4().hex}"
    received = []
    with ws(uwsgi_server, path) as client, pytest.raises(ClientClosed):
        while True:
            received.append(client.recv(timeout=TIMEOUT))
    assert (client.close_code, client.close_reason) == (4004, "bye")
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            sent = http_json(uwsgi_server, path)["send"]
            break
        except urllib.error.HTTPError as not_yet:
            assert not_yet.code == 404 and time.monotonic() < deadline, "no send() ended"
            time.sleep(0.05)
    assert (sent, received) == ("returned", ["from the thread"])


@pytest.mark.parametrize("use", ["accept", "send"])
def test_a_helper_using_the_connection_after_the_views_answer_is_refused(
    uwsgi_server: ServerProcess, use: str
) -> None:
    """tests.views.answered_then_a_helper_uses: the view answers 403 unaccepted, then
    another greenlet or thread's accept() or send() starts. It raises ConnectionClosed
    (1006), as on the default backend, and the client gets the 403 alone. Before, send()
    queued the message for an owner that had answered already and returned, the message
    lost without a word; accept() raised InvalidState (not the request's greenlet)."""
    key = uuid.uuid4().hex
    with socket.create_connection((uwsgi_server.host, uwsgi_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(f"/answered-then-a-helper-uses/?id={key}&use={use}"))
        status, _, body = read_http_response(sock)
        assert (status, body) == (403, b"answered\n")
        deadline = time.monotonic() + TIMEOUT
        while not (seen := http_json(uwsgi_server, f"/opened-while-gone/?id={key}"))["signals"]:
            assert time.monotonic() < deadline, seen
            time.sleep(0.02)
        assert seen["signals"] == ["helper: ConnectionClosed 1006"]
        next_answer_alone(sock)


def test_each_session_logs_its_open_and_its_close_at_debug(uwsgi_server: ServerProcess) -> None:
    """docs/logging.rst, DEBUG: every connection's open (peer, path, how it was taken over,
    subprotocol) and its close (peer, path, code and reason, how long it was open), as
    the default and ASGI backends log them. The uwsgi backend logged neither. (uWSGI's
    --http-socket gives no REMOTE_PORT: the peer is its address.)"""
    mark = uwsgi_server.mark()
    with ws(uwsgi_server, "/close/?code=4003&reason=bye") as client, pytest.raises(ClientClosed):
        client.send("go")
        client.recv(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while "WebSocket closed" not in uwsgi_server.log(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [
        line.split("] ", 1)[1]
        for line in uwsgi_server.log(mark).splitlines()
        if line.startswith("[DEBUG dwebsocket] WebSocket ")
    ]
    assert lines[0] == (
        "WebSocket opened: 127.0.0.1 /close/ via uwsgi backend (subprotocol None, compression off)"
    ), lines
    assert lines[1].startswith("WebSocket closed: 127.0.0.1 /close/ code 4003 (bye) after "), lines
    assert len(lines) == 2, lines


@pytest.mark.parametrize("name", BACKEND_SERVERS)
def test_a_message_over_the_limit_fails_the_connection_without_waiting(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """A message over WEBSOCKET_MAX_MESSAGE_SIZE fails the connection (RFC 6455 7.1.7):
    the 1009 close frame, then EOF at once, as on the default backend -- without waiting
    WEBSOCKET_CLOSE_TIMEOUT (5 s here) for a close frame from a client that broke the
    rules. The uwsgi backend waited for it inside the view's read(), count_messages() or
    wait(timeout), which must not block (or not past their timeout). That close timeout
    is :data:`FOREVER` here: EOF after it is the client's read timing out first."""
    server = make_server(name, settings={"WEBSOCKET_CLOSE_TIMEOUT": FOREVER})
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    with RawClient(sock) as client:
        client.handshake("/echo/")
        deaf = client.conn = _DeafClient()  # type: ignore[assignment]  # answers nothing
        client.sock.sendall(masked(0x2, b"\x00" * ((1 << 20) + 1)))
        data = deaf.received
        while chunk := client.sock.recv(65536):  # EOF at once
            data += chunk
    reason = f"message of {(1 << 20) + 1} bytes exceeds {1 << 20}"
    assert data.endswith(encode_frame(Opcode.CLOSE, encode_close_payload(1009, reason))), data


def test_async_cores_without_a_suspend_engine_are_refused_with_501(
    make_server: Callable[..., ServerProcess],
) -> None:
    """uWSGI --async N without --ugreen (or --greenlet): nothing switches cores, so a
    view waiting for messages held the whole worker -- every other handshake and plain
    HTTP request waited until that WebSocket closed. The handshake is refused with 501
    naming why (as the default backend's takeover is), and the worker goes on serving."""
    import tests.backends.uwsgi.servers  # noqa: F401 - registers uwsgi-async-plain

    server = make_server("uwsgi-async-plain")
    reason = "cannot serve uWSGI --async cores without --ugreen"
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/echo/"))
        status, _headers, body = read_http_response(sock)
    assert status == 501 and reason.encode() in body, (status, body)
    with urllib.request.urlopen(server.url("/echo/", "http"), timeout=TIMEOUT) as page:
        assert page.read() == b"echo: plain HTTP\n"
    assert reason in server.log()
