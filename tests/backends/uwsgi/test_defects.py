"""uWSGI's defects, each asserted: every test here states the correct behaviour and is a
strict xfail with the defect as reason, so a uWSGI that fixed one makes the run fail
(XPASS) and shows up. One row each in the capability table of docs/backends.rst.

Where it matters that the defect is uWSGI's and not dwebsocket's, the test talks to
``tests/backends/uwsgi/bare.py``: uWSGI's websocket API alone, no Django, no dwebsocket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from websockets.sync.client import ClientConnection, connect

import tests.backends.uwsgi.servers  # noqa: F401 - registers the uWSGI command lines used here
from dwebsocket.protocol.connection import Close
from dwebsocket.protocol.frames import encode_frame
from tests.backends.uwsgi.defects import DEFECTS
from tests.servers import ServerProcess
from tests.wire import TIMEOUT, RawClient, masked

pytestmark = pytest.mark.server


def defect(name: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=DEFECTS.get(name, name))


@pytest.fixture(scope="module")
def uwsgi_gevent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.servers import start_server

    srv = start_server("uwsgi-gevent", tmp_path_factory.mktemp("defects") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def ws(server: ServerProcess, path: str = "/echo/") -> ClientConnection:
    return connect(server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None)


def raw(server: ServerProcess, path: str = "/echo/", *, first: bytes = b"") -> RawClient:
    client = RawClient(socket.create_connection((server.host, server.port), timeout=TIMEOUT))
    client.handshake(path, first=first)
    return client


def ping_through(client: RawClient) -> None:
    """Send a ping and wait for the pong: uWSGI has parsed everything sent before it."""
    client.sock.sendall(masked(0x9, b""))
    while type(client.next_event()).__name__ != "Pong":
        pass


@defect("empty-message")
def test_empty_message_arrives(uwsgi_gevent: ServerProcess) -> None:
    with ws(uwsgi_gevent) as client:
        client.send("")
        assert client.recv(timeout=2) == ""


@defect("opcode-lost")
def test_binary_that_is_utf8_stays_binary(uwsgi_gevent: ServerProcess) -> None:
    with ws(uwsgi_gevent) as client:
        client.send(b"abc")
        assert client.recv(timeout=TIMEOUT) == b"abc"


@defect("opcode-lost")
def test_text_that_is_not_utf8_closes_1007(uwsgi_gevent: ServerProcess) -> None:
    with raw(uwsgi_gevent) as client:
        client.sock.sendall(masked(0x1, b"\xff\xfe"))
        assert client.recv() == Close(1007, client.conn.close_reason)


@defect("empty-pong")
def test_pong_echoes_the_ping_payload(uwsgi_gevent: ServerProcess) -> None:
    with raw(uwsgi_gevent) as client:
        client.sock.sendall(masked(0x9, b"payload"))
        event = client.next_event()
        assert type(event).__name__ == "Pong" and event.data == b"payload"  # type: ignore[union-attr]


@defect("close-reply")
def test_close_reply_echoes_the_code(uwsgi_gevent: ServerProcess) -> None:
    with raw(uwsgi_gevent) as client:
        client.sock.sendall(masked(0x8, (4000).to_bytes(2, "big") + b"bye"))
        assert client.recv() == Close(4000, "")


@defect(
    "uWSGI defect: the buffer of a fragmented message in progress is process-global; "
    "fragments interleaved on two connections of one worker mix"
)
def test_interleaved_fragments_stay_apart(uwsgi_gevent: ServerProcess) -> None:
    with raw(uwsgi_gevent) as a, raw(uwsgi_gevent) as b:
        a.sock.sendall(masked(0x1, b"from a, ", fin=False))
        ping_through(a)
        b.sock.sendall(masked(0x1, b"from b, ", fin=False))
        ping_through(b)
        a.sock.sendall(masked(0x0, b"end a"))
        b.sock.sendall(masked(0x0, b"end b"))
        assert (a.recv(), b.recv()) == ("from a, end a", "from b, end b")


@defect(
    "uWSGI defect: a continuation frame with no message in progress crashes the worker "
    "(uwsgi_buffer_destroy(NULL), uwsgi issue #2225), dropping every connection on it"
)
def test_lone_continuation_frame_closes_1002_and_spares_the_others(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server("uwsgi-gevent")
    with raw(server) as bystander, raw(server) as attacker:
        bystander.send("before")
        assert bystander.recv() == "before"
        attacker.sock.sendall(masked(0x0, b"no message in progress"))
        try:
            event = attacker.recv()
        except (EOFError, OSError):
            event = None
        bystander.send("after")
        try:
            answer = bystander.recv()
        except (EOFError, OSError):
            answer = None
        crashed = "Segmentation Fault" in server.log()
        assert (event, answer, crashed) == (
            Close(1002, event.reason if event else ""),
            "after",
            False,
        )


@defect(
    "uWSGI defect: a frame over --websocket-max-size drops the connection without a close "
    "frame (1009); only frames are limited, not messages"
)
def test_frame_over_uwsgis_limit_closes_1009(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("uwsgi-gevent-small-frames")  # --websocket-max-size 1 (KiB)
    with raw(server) as client:
        client.sock.sendall(masked(0x2, b"\xff" * 2048))
        try:
            event = client.recv()
        except (EOFError, OSError):
            event = None
        assert isinstance(event, Close) and event.code == 1009


def test_messages_over_the_limit_in_small_fragments_close_1009(
    make_server: Callable[..., ServerProcess],
) -> None:
    """Not a defect of ours: uWSGI accumulates fragments without limit, and the backend
    applies WEBSOCKET_MAX_MESSAGE_SIZE once uWSGI hands the message over."""
    server = make_server("uwsgi-gevent-small-frames", settings={"WEBSOCKET_MAX_MESSAGE_SIZE": 4096})
    with raw(server) as client:
        frames = [masked(0x2 if i == 0 else 0x0, b"\xff" * 1000, fin=i == 9) for i in range(10)]
        client.sock.sendall(b"".join(frames))
        event = client.recv()
        assert isinstance(event, Close) and event.code == 1009


@defect(
    "uWSGI defect: the --http router drops bytes sent with the upgrade request "
    "unless --http-raw-body is on"
)
def test_router_keeps_a_frame_sent_with_the_handshake(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server("uwsgi-bare-router")
    client = raw(server, "/", first=masked(0x1, b"first"))
    with client:
        client.sock.settimeout(2)  # the frame is gone: bound the wait for its echo
        assert client.recv() == "first"


@defect(
    "uWSGI defect: under --async --ugreen, Python's uwsgi.suspend() switches cores holding "
    "the GIL, so the next request hangs the worker (the backend suspends through ctypes)"
)
def test_python_suspend_serves_two_connections(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("uwsgi-bare-suspend")
    with raw(server, "/") as first:
        first.send("one")
        assert first.recv() == "one"
        second = RawClient(socket.create_connection((server.host, server.port), timeout=2))
        with second:
            second.handshake("/")
            second.send("two")
            assert second.recv() == "two"


@defect("ugreen-crash")
def test_ugreen_survives_requests_ending_out_of_order(
    make_server: Callable[..., ServerProcess],
) -> None:
    """uWSGI's own blocking echo under --async 60 --ugreen: rounds of 50 connections,
    closed first-opened first, until the worker crashes (at most 20 rounds)."""
    server = make_server("uwsgi-bare-ugreen")
    for _ in range(20):
        try:
            clients = [raw(server, "/") for _ in range(50)]
            for n, client in enumerate(clients):
                client.send(f"m{n}")
            for n, client in enumerate(clients):
                assert client.recv() == f"m{n}"
            for client in clients:
                client.sock.sendall(masked(0x8, b"\x03\xe8"))
                client.close()
        except (AssertionError, EOFError, OSError):
            pass  # connections the crash dropped: the log says why
        if "Segmentation Fault" in server.log():
            break
    assert "Segmentation Fault" not in server.log()


def test_close_frame_is_answered_once(uwsgi_gevent: ServerProcess) -> None:
    """When the view closes first, uWSGI must not answer the client's close reply with a
    second close frame: the backend reads that reply itself."""
    with raw(uwsgi_gevent, "/close/?code=1001&reason=away") as client:
        client.sock.sendall(masked(0x1, b"go"))
        assert client.recv() == Close(1001, "away")
        rest = b""
        while chunk := client.sock.recv(65536):
            rest += chunk
        assert encode_frame(0x8, b"") not in rest and rest == b""
