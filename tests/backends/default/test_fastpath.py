"""The C fast path of wait() and send() (``_fastpath.c``) under gevent: what it takes
itself, what it hands to the Python path, and that both stay one connection.

These tests need gevent's monkey-patching (the socketpairs must be gevent sockets) and
the built extension, so they run in ``test_under_gevent.py``'s subprocess; elsewhere they
skip. That subprocess also runs ``test_websocket.py``, the backend's behaviour tests, on
the fast path.
"""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpRequest
from django.test import override_settings

from dwebsocket import ConnectionClosed, require_websocket
from dwebsocket.backends.default import transport as transport_module
from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.protocol.connection import Close, Connection, Ping, Pong
from dwebsocket.protocol.deflate import PerMessageDeflate
from tests.inprocess import Session
from tests.wire import TIMEOUT, masked


def _fast_path_runs() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return (
        monkey is not None
        and monkey.is_module_patched("socket")
        and transport_module._fastpath is not None
    )


SKIP_REASON = "needs gevent's monkey-patching and the C extension"
pytestmark = pytest.mark.skipif(not _fast_path_runs(), reason=SKIP_REASON)


def fast_view(body: Callable[[DefaultWebSocket, dict[str, Any]], None], seen: dict[str, Any]):  # type: ignore[no-untyped-def]
    """A view that accepts, checks that the fast path is on, counts what reaches
    ``_received()`` (reads the C code handed to Python), then runs ``body``."""

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        seen["fast"] = ws._fast is not None
        seen["to_python"] = calls = []
        received = ws._received

        def counting(data: bytes) -> None:
            calls.append(data)
            received(data)

        ws._received = counting  # type: ignore[method-assign]
        body(ws, seen)

    return view


@pytest.fixture
def seen() -> Iterator[dict[str, Any]]:
    yield {}


def echo_until_stop(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
    for message in ws:
        if message == "stop":
            break
        ws.send(message)


def echo_then_stop(session: Session, messages: list[str | bytes]) -> None:
    """Each message must come back (``echo_until_stop``), then the close."""
    for message in messages:
        session.client.send(message)
        assert session.client.recv() == message
    session.client.send("stop")
    assert session.client.recv() == Close(1000, "")
    session.finish()


def test_whole_frames_never_reach_python(seen: dict[str, Any]) -> None:
    messages: list[str | bytes] = ["", "a", "é" * 62, "x" * 126, b"", b"\x00" * 125, b"b" * 60000]
    with Session(fast_view(echo_until_stop, seen)) as session:
        session.expect_101()
        echo_then_stop(session, messages)
    assert seen["fast"] is True
    assert seen["to_python"] == []


def test_a_read_of_many_frames_keeps_their_order(seen: dict[str, Any]) -> None:
    """One read: whole frames (taken in C), a ping, a fragmented message and more whole
    frames (the rest, from the ping on, handed to Python): all in order, the pong first."""

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["messages"] = [ws.wait(TIMEOUT) for _ in range(5)]

    burst = b"".join(
        [
            masked(0x1, b"one"),
            masked(0x2, b"two"),
            masked(0x9, b"are you there"),
            masked(0x1, b"three", fin=False),
            masked(0x0, b"-four"),
            masked(0x1, b"five"),
            masked(0x2, b"six"),
        ]
    )
    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.sock.sendall(burst)
        assert session.client.next_event() == Pong(b"are you there")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["messages"] == ["one", b"two", "three-four", "five", b"six"]
    assert seen["to_python"][0] == burst[len(masked(0x1, b"one") + masked(0x2, b"two")) :]


def test_a_frame_split_over_reads(seen: dict[str, Any]) -> None:
    frame = masked(0x1, b"split in three")
    chunks = [frame[:1], frame[1:9], frame[9:]]

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        for chunk in chunks:
            session.client.sock.sendall(chunk)
            time.sleep(0.02)  # each its own read
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["message"] == "split in three"
    assert b"".join(seen["to_python"]) == frame


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
        (masked(0x1, b"x" * 200), 1009),  # over WEBSOCKET_MAX_MESSAGE_SIZE
        (masked(0x1, b"x")[:1] + b"\x01x", 1002),  # not masked
    ],
)
@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=100)
def test_what_the_core_refuses_closes_as_before(
    seen: dict[str, Any], frame: bytes, code: int
) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)
        seen["code"] = ws.close_code

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.sock.sendall(masked(0x1, b"fine") + frame)
        closing = session.client.recv()
        assert isinstance(closing, Close) and closing.code == code
        session.finish()
    assert seen["message"] == "fine"
    assert seen["code"] == code


def test_eof_ends_the_wait(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)
        seen["closed"] = ws.is_closed()
        seen["code"] = ws.close_code

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        time.sleep(0.05)  # the view waits in the fast path
        session.client.sock.shutdown(2)
        session.finish()
    assert seen == {"fast": True, "to_python": [b""], "message": None, "closed": True, "code": 1006}


def test_wait_with_a_timeout(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        started = time.monotonic()
        seen["first"] = ws.wait(0.05)
        seen["waited"] = time.monotonic() - started >= 0.05
        seen["closed"] = ws.is_closed()
        ws.send("go")
        seen["second"] = ws.wait(TIMEOUT)

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        assert session.client.recv() == "go"
        session.client.send("back")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert (seen["first"], seen["waited"], seen["closed"], seen["second"]) == (
        None,
        True,
        False,
        "back",
    )


@override_settings(WEBSOCKET_PING_INTERVAL=0.05, WEBSOCKET_PING_TIMEOUT=TIMEOUT)
def test_keepalive_pings_while_the_fast_path_waits(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)
        seen["closed"] = ws.is_closed()

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        assert isinstance(session.client.next_event(), Ping)  # the client core answers it
        assert isinstance(session.client.next_event(), Ping)  # and the next, an interval on
        session.client.send("still here")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert (seen["message"], seen["closed"]) == ("still here", False)


def test_database_connections_are_released_once_a_second(
    seen: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    releases: list[float] = []
    monkeypatch.setattr(
        transport_module, "release_idle_connections", lambda: releases.append(time.monotonic())
    )
    with Session(fast_view(echo_until_stop, seen)) as session:
        session.expect_101()
        for n in range(200):
            session.client.send(str(n))
            assert session.client.recv() == str(n)
        idle_from = time.monotonic()
        time.sleep(1.2)  # an idle wait is cut for the next check
        session.client.send("stop")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["to_python"] == []
    # The first wait checks; the next check comes a second later, from the idle wait.
    assert len(releases) >= 2
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(releases))
    assert releases[1] - idle_from < 1.1


def test_a_partly_written_frame_is_finished_before_any_other(seen: dict[str, Any]) -> None:
    """The kernel takes part of a large frame: the rest goes out (the view's greenlet
    waiting for room) before a frame another greenlet sends meanwhile."""
    big = b"B" * (8 << 20)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        rests: list[int] = []
        send_rest = ws._send_rest

        def counting(rest: bytes) -> None:
            rests.append(len(rest))
            send_rest(rest)

        ws._send_rest = counting  # type: ignore[method-assign]
        other = threading.Thread(target=lambda: (time.sleep(0.05), ws.send("after")))
        other.start()
        ws.send(big)
        other.join(TIMEOUT)
        seen["rests"] = rests

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        time.sleep(0.2)  # not reading: the socket buffers fill up
        assert session.client.recv() == big
        assert session.client.recv() == "after"
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert len(seen["rests"]) == 1 and 0 < seen["rests"][0] < len(big)


def test_two_readers_share_the_messages(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        got: list[Any] = []

        def reader() -> None:
            while (message := ws.wait(TIMEOUT)) not in (None, "stop"):
                got.append(message)
            ws.send("done")

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(TIMEOUT)
        seen["got"] = got

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        for n in range(50):
            session.client.send(str(n))
            time.sleep(0.001)
        session.client.send("stop")
        session.client.send("stop")
        assert session.client.recv() == "done"
        assert session.client.recv() == "done"
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert sorted(seen["got"], key=int) == [str(n) for n in range(50)]


def test_close_from_another_greenlet_ends_the_wait(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        closer = threading.Thread(target=lambda: (time.sleep(0.05), ws.close(4000)))
        closer.start()
        seen["message"] = ws.wait(TIMEOUT)
        closer.join(TIMEOUT)
        seen["code"] = ws.close_code
        with pytest.raises(ConnectionClosed):
            ws.send("too late")

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        assert session.client.recv() == Close(4000, "")  # the client core answers it
        session.finish()
    assert (seen["message"], seen["code"]) == (None, 4000)


def test_text_that_cannot_be_encoded_raises_as_before(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        with pytest.raises(UnicodeEncodeError):
            ws.send("\ud800")
        ws.send("fine")

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        assert session.client.recv() == "fine"
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_deflate_waits_in_c_and_frames_in_python(seen: dict[str, Any]) -> None:
    headers = {"Sec-WebSocket-Extensions": PerMessageDeflate.client_offer()}
    with Session(fast_view(echo_until_stop, seen), headers=headers) as session:
        response = session.expect_101()
        client = Connection(
            client=True,
            deflate=PerMessageDeflate.from_response(response["sec-websocket-extensions"]),
        )
        session.client.conn = client
        echo_then_stop(session, ["compressed " * 20, b"\x00" * 1000])
    assert seen["fast"] is True
    assert len(seen["to_python"]) == 3  # every read: RSV1 frames are the core's


def test_two_greenlets_share_one_iterator(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        messages = iter(ws)
        got: list[Any] = []

        def reader() -> None:
            got.extend(messages)  # until the peer goes away

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(TIMEOUT)
        seen["got"] = sorted(got)

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        time.sleep(0.05)  # both wait: one in the fast path, one for the read lock
        session.client.send("a")
        session.client.send("b")
        time.sleep(0.05)
        session.client.sock.shutdown(2)
        session.finish()
    assert seen["got"] == ["a", "b"]


def test_a_wait_that_outlives_the_session_reads_nothing(seen: dict[str, Any]) -> None:
    """A reader greenlet is woken in the loop turn in which the session ends and the
    socket's number goes to a new connection: it must not read that connection's bytes
    (Transport.release(): "the number may be reused")."""
    import gevent
    from gevent.socket import wait_read

    ready, other = socket.socketpair()

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        reader = gevent.spawn(lambda: list(ws))
        gevent.sleep(0.05)  # the reader waits in the fast path
        wait_read(ready.fileno())  # woken in the same turn of the loop as the reader
        number = session.server_sock.fileno()
        ws._shutdown()
        ws._transport.release()
        session.server_sock.close()
        victim, peer = socket.socketpair()
        with victim, peer:
            seen["reused"] = victim.fileno() == number
            peer.sendall(b"GET /private HTTP/1.1\r\n\r\n")
            reader.join(TIMEOUT)
            victim.setblocking(False)
            try:
                seen["victim got"] = victim.recv(100)
            except BlockingIOError:
                seen["victim got"] = b""  # read by the old session's reader

    session = Session(fast_view(body, seen))
    with session, ready, other:
        session.expect_101()
        time.sleep(0.1)
        session.client.sock.sendall(masked(0x1, b"hi"))  # readable in one loop turn ...
        other.sendall(b"!")  # ... with this
        session.finish()
    assert seen["reused"] is True  # the lowest free number: the scene is set
    assert seen["victim got"] == b"GET /private HTTP/1.1\r\n\r\n"
    assert all(b"private" not in data for data in seen["to_python"])


def test_a_negative_message_limit_is_left_to_the_core(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        # Set on the core: the setting refuses it (dwebsocket.E014) before it gets here.
        assert ws._conn is not None
        ws._conn.max_message_size = -1
        seen["message"] = ws.wait(TIMEOUT)
        seen["code"] = ws.close_code

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.send("x")
        closing = session.client.recv()
        assert isinstance(closing, Close) and closing.code == 1009
        session.finish()
    assert (seen["message"], seen["code"]) == (None, 1009)


def test_iteration_calls_a_subclass_wait(seen: dict[str, Any]) -> None:
    class Counting(DefaultWebSocket):
        waits = 0

        def wait(self, timeout: float | None = None) -> str | bytes | None:
            Counting.waits += 1
            return super().wait(timeout)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        ws.__class__ = Counting
        seen["messages"] = list(ws)
        seen["waits"] = Counting.waits

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.send("one")
        session.client.send("two")
        session.client.sock.shutdown(2)
        session.finish()
    assert seen["messages"] == ["one", "two"]
    assert seen["waits"] == 3  # two messages, then None: closed
