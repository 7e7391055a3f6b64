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


def fast_view(  # type: ignore[no-untyped-def]
    body: Callable[[DefaultWebSocket, dict[str, Any]], None],
    seen: dict[str, Any],
    before_accept: Callable[[DefaultWebSocket], None] | None = None,
):
    """A view that accepts, checks that the fast path is on, counts what reaches
    ``_received()`` (reads the C code handed to Python), then runs ``body``."""

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        if before_accept is not None:
            before_accept(ws)
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


# -- large frames: the rest of one that a read began is read into its message --

LARGE: list[str | bytes] = [
    b"L" * 65536,  # 65,550 bytes: a read of 64 KiB, then its last 14
    "é" * 40000,  # 80,004 bytes of text, not ASCII
    bytes(range(256)) * 500,  # 128,000 bytes: more than half in the first read
    "a" * 5000,  # whole in one read: the scan takes it
]


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=1 << 20)
def test_a_large_frame_is_read_into_its_message(seen: dict[str, Any]) -> None:
    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        got = seen["messages"] = []
        for _ in LARGE:
            time.sleep(0.1)  # the whole frame is in the socket before the first read
            got.append(ws.wait(TIMEOUT))
            ws.send(str(len(got)))

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        for n, message in enumerate(LARGE, 1):
            session.client.send(message)
            assert session.client.recv() == str(n)
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["messages"] == LARGE
    assert seen["to_python"] == []


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=1 << 20)
@pytest.mark.parametrize("first", [60000, 20000], ids=["most-here", "most-to-come"])
def test_a_large_frame_whose_rest_is_late_goes_to_python_as_received(
    seen: dict[str, Any], first: int
) -> None:
    """The rest is not in the socket yet: what was read goes to the general path as it
    came (header, key, masked payload), which waits for the rest."""
    frame = masked(0x2, bytes(range(256)) * 256)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        time.sleep(0.05)  # the view waits in the fast path
        session.client.sock.sendall(frame[:first])
        time.sleep(0.1)
        session.client.sock.sendall(frame[first:])
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["message"] == bytes(range(256)) * 256
    assert b"".join(seen["to_python"]) == frame
    assert seen["to_python"][0] == frame[:first]


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=100_000)
@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\xff" + b"a" * 70000, 1007), (b"a" * 100_001, 1009)],
    ids=["invalid-utf8", "too-big"],
)
def test_a_large_frame_the_core_refuses_closes_as_before(
    seen: dict[str, Any], payload: bytes, code: int
) -> None:
    frame = masked(0x1, payload)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        time.sleep(0.1)  # the whole frame is in the socket
        seen["message"] = ws.wait(TIMEOUT)
        seen["code"] = ws.close_code

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.sock.sendall(frame)
        closing = session.client.recv()
        assert isinstance(closing, Close) and closing.code == code
        session.finish()
    assert (seen["message"], seen["code"]) == (None, code)
    to_python = b"".join(seen["to_python"])  # as received (too big: the core stops early)
    assert frame.startswith(to_python) and len(to_python) >= 65536


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=1 << 20)
def test_a_large_frame_after_others_in_its_read_goes_to_python(seen: dict[str, Any]) -> None:
    """Only a read that begins with the large frame reads on into it."""
    small, large = masked(0x1, b"first"), masked(0x2, b"B" * 65536)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        time.sleep(0.1)
        seen["messages"] = [ws.wait(TIMEOUT), ws.wait(TIMEOUT)]

    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.sock.sendall(small + large)
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["messages"] == ["first", b"B" * 65536]
    # (a read of a full 64 KiB goes to the general path whole, as before: it reads on)
    assert b"".join(seen["to_python"]) in (large, small + large)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
        (masked(0x1, b"x" * 200), 1009),  # over WEBSOCKET_MAX_MESSAGE_SIZE
        (masked(0x1, b"x")[:1] + b"\x01x", 1002),  # not masked
    ],
    ids=["invalid-utf8", "too-big", "not-masked"],  # the masks are random: ids stay put
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


def _deflate_session(seen: dict[str, Any], view: Any, offer: str | None = None) -> Any:
    """A session whose client negotiated permessage-deflate (``offer``: the browser's)."""
    headers = {"Sec-WebSocket-Extensions": offer or PerMessageDeflate.client_offer()}
    return Session(view, headers=headers)


def _deflate_client(session: Session, response: dict[str, str]) -> Connection:
    client = Connection(
        client=True,
        deflate=PerMessageDeflate.from_response(response["sec-websocket-extensions"]),
    )
    session.client.conn = client
    return client


def test_compressed_frames_are_taken_in_c(seen: dict[str, Any]) -> None:
    messages: list[str | bytes] = ["compressed " * 20, b"\x00" * 1000, "é" * 300, b"", ""]
    with _deflate_session(seen, fast_view(echo_until_stop, seen)) as session:
        _deflate_client(session, session.expect_101())
        echo_then_stop(session, messages)
    assert seen["fast"] is True
    assert seen["to_python"] == []  # RSV1 frames too: inflated and answered in C


def test_compressed_frames_go_to_python_without_the_c_streams(seen: dict[str, Any]) -> None:
    from dwebsocket.protocol import deflate

    saved = deflate.Deflater, deflate.Inflater
    deflate.Deflater, deflate.Inflater = deflate.PyDeflater, deflate.PyInflater
    try:
        with _deflate_session(seen, fast_view(echo_until_stop, seen)) as session:
            _deflate_client(session, session.expect_101())
            echo_then_stop(session, ["compressed " * 20, b"\x00" * 1000])
    finally:
        deflate.Deflater, deflate.Inflater = saved
    assert seen["fast"] is True
    assert len(seen["to_python"]) == 3  # every read: the zlib module's streams are Python's


@pytest.mark.parametrize(
    ("frame", "close"),
    [
        (b"\xff\xff\xff\xff", 1002),  # corrupt
        (b"\x03\x00\x01", 1002),  # the peer ended the stream (BFINAL), then more data
        (b"\x03\x00", 0),  # ... then nothing: "" (RFC 7692 7.2.3.3), and a new stream
        (None, 1009),  # over the message limit after decompression
        (b"\xfb\xff\x00", 1007),  # text that is not UTF-8 (a stored block of ff)
    ],
)
def test_a_compressed_message_c_does_not_take_closes_as_python_decides(
    seen: dict[str, Any], frame: bytes | None, close: int
) -> None:
    """The C path keeps zlib's outcome for deflate.py's rules: the same close code and
    reason as the pure-Python path gives (tests/fuzz compares them byte for byte)."""
    import zlib

    if frame is None:  # 2 MiB of zeros: a bomb past the 1 MiB default limit
        z = zlib.compressobj(wbits=-9)
        frame = (z.compress(b"\0" * (2 << 20)) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    elif close == 1007:
        z = zlib.compressobj(wbits=-9)
        frame = (z.compress(b"\xff\xfe") + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    with _deflate_session(seen, fast_view(echo_until_stop, seen)) as session:
        _deflate_client(session, session.expect_101())
        session.client.send("first")
        assert session.client.recv() == "first"
        session.client.sock.sendall(masked(0x1, frame, rsv1=True))
        if not close:
            assert session.client.recv() == ""
            echo_then_stop(session, ["after"])
            return
        event = session.client.recv()
        assert isinstance(event, Close) and event.code == close, event
        session.finish()
    assert seen["fast"] is True


def _compressed(data: bytes, z: Any = None) -> bytes:
    """``data`` as one permessage-deflate message's payload (``z``: the client's stream,
    for context takeover across messages)."""
    import zlib

    z = z or zlib.compressobj(wbits=-9)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize("count", [10, 1100])
@pytest.mark.parametrize(
    ("payload", "close"),
    [
        (b"\xff" * 700, 1002),  # not a deflate stream
        (_compressed(b"\0" * (2 << 20)), 1009),  # over the limit once inflated
        (_compressed(bytes(range(256)) * 4), 1007),  # text that is not UTF-8
    ],
    ids=["corrupt", "bomb", "not-utf8"],
)
def test_a_compressed_message_c_does_not_take_behind_many_it_did(
    seen: dict[str, Any], count: int, payload: bytes, close: int
) -> None:
    """``count`` small compressed messages, then one the C path leaves to Python, in one
    write: every message before it reaches the view in order (with 1,100 the rest of the
    read waits for the view to drain the backlog first), then the close Python decides."""
    import zlib

    got: list[Any] = []

    def body(ws: Any, seen: dict[str, Any]) -> None:
        got.extend(ws)

    with _deflate_session(seen, fast_view(body, seen)) as session:
        _deflate_client(session, session.expect_101())
        z = zlib.compressobj(wbits=-9)
        frames = b"".join(masked(0x1, _compressed(b"x", z), rsv1=True) for _ in range(count))
        session.client.sock.sendall(frames + masked(0x1, payload, rsv1=True))
        event = session.client.recv()
        assert isinstance(event, Close) and event.code == close, event
        session.finish()
    assert got == ["x"] * count
    assert seen["fast"] is True


def test_the_c_compressed_send_path_writes_what_the_python_one_does(
    seen: dict[str, Any],
) -> None:
    from dwebsocket.protocol import deflate

    messages = [m for n in SIZES for m in _messages_of_size(n)] * 2  # context taken over

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        assert ws.wait(TIMEOUT) == "go"
        for message in messages:
            ws.send(message)

    # What the pure-Python codec, negotiated the same way, writes for the same messages.
    saved = deflate.Deflater, deflate.Inflater
    deflate.Deflater, deflate.Inflater = deflate.PyDeflater, deflate.PyInflater
    try:
        negotiated = PerMessageDeflate.negotiate(
            [("permessage-deflate", [("client_max_window_bits", None)])]
        )
    finally:
        deflate.Deflater, deflate.Inflater = saved
    assert negotiated is not None
    python = Connection(deflate=negotiated[0])
    expected = b"".join(python.send_message(m) for m in messages)
    with _deflate_session(seen, fast_view(body, seen)) as session:
        session.expect_101()
        session.client.send("go")
        received = b""
        while len(received) < len(expected):
            chunk = session.client.sock.recv(1 << 20)
            assert chunk, f"EOF after {len(received)} of {len(expected)} bytes"
            received += chunk
        assert received[: len(expected)] == expected
        session.client.receive(received[len(expected) :])  # the close frame, maybe
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["fast"] is True


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


# -- Python code that runs between a read and its hand-off (finalizers, gc callbacks) --


class _Hostile:
    """A reference cycle whose finalizer runs ``act`` when ``when()`` holds, at the
    collection that frees it; it makes another one until it has acted."""

    def __init__(self, when: Callable[[], bool], act: Callable[[], None]) -> None:
        self.me = self
        self.when, self.act = when, act

    def __del__(self) -> None:
        if _Hostile.over:
            return
        if self.when():
            self.act()
        else:
            _Hostile(self.when, self.act)

    over = False


@pytest.fixture
def collect_often() -> Iterator[None]:
    """A garbage collection at (nearly) every allocation of a tracked object, as an
    application with many of them may see at any allocation."""
    import gc

    saved = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    _Hostile.over = False
    try:
        yield
    finally:
        _Hostile.over = True
        gc.set_threshold(*saved)
        gc.collect()


def _has_pending_data(sock: socket.socket) -> bool:
    from gevent.monkey import get_original

    select = get_original("select", "select")
    return bool(select([sock.fileno()], [], [], 0)[0])


class _LockThatRuns:
    """The connection's core lock, with Python code run in ``locked()``: the C fast path
    asks it between waking up and reading, as it may ask any Python object."""

    def __init__(self, lock: Any, run: Callable[[], None]) -> None:
        self._lock, self.run = lock, run

    def locked(self) -> bool:
        self.run()
        return bool(self._lock.locked())

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self._lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.mark.parametrize("hostile", ["calls-the-others-wait", "yields-to-the-others-greenlet"])
@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # B's client does not answer B's close
def test_python_run_during_a_read_never_hands_over_another_connections_bytes(
    seen: dict[str, Any], hostile: str, collect_often: None
) -> None:
    """Connection A reads a frame of invalid UTF-8. If Python code runs while A's read
    is in the shared receive buffer (before the fix: the decoder's exception started a
    collection, whose finalizer ran), and that code makes connection B read, B's bytes
    must never reach A: A fails with 1007, B gets its own message.

    To make that collection certain rather than likely, the core lock's ``locked()``,
    which the fast path asks just before it reads, leaves the youngest generation one
    allocation short of a collection: the next allocation of a tracked object (the
    decoder's exception, before the fix) starts one."""
    import gc

    import gevent

    b_side: dict[str, Any] = {}
    b_ready = threading.Event()
    b_done = threading.Event()

    @require_websocket
    def view_b(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        b_side["ws"] = ws
        b_ready.set()
        if hostile == "yields-to-the-others-greenlet":
            b_side["message"] = ws.wait(TIMEOUT)  # B's own greenlet reads, when it runs
        b_done.wait(TIMEOUT)

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        seen["message"] = ws.wait(TIMEOUT)
        seen["code"] = ws.close_code

    frame_b = masked(0x1, b"from B")
    frame_a = masked(0x1, b"\xff\xfe\xfd\xfc\xfb\xfa")  # as long as B's: the same read size
    state = {"sent": False, "acted": False}

    def inside_as_read() -> bool:
        # A's frame is sent and read off its socket, and not yet handed to Python.
        return (
            state["sent"]
            and not state["acted"]
            and session_a.server_sock.fileno() >= 0
            and not _has_pending_data(session_a.server_sock)
            and seen.get("to_python") == []
        )

    def act() -> None:
        state["acted"] = True
        if hostile == "calls-the-others-wait":
            b_side["message"] = b_side["ws"].wait(TIMEOUT)
        else:
            session_b.client.sock.sendall(frame_b)
            gevent.sleep(0.05)

    class Tracked:
        """An object the collector tracks."""

    def prime() -> None:
        if state["sent"] and not state["acted"]:
            gc.collect(0)  # the count of the youngest generation is 0 ...
            [].copy()  # ... a list is free for reuse, so PyList_New(0) counts nothing ...
            state["one"] = Tracked()  # ... and one more makes it 1 = the threshold

    def before_accept(ws: DefaultWebSocket) -> None:
        ws._core = _LockThatRuns(ws._core, prime)

    session_a = Session(fast_view(body, seen, before_accept))
    session_b = Session(view_b)
    with session_a, session_b:
        session_a.expect_101()
        session_b.expect_101()
        assert b_ready.wait(TIMEOUT)
        if hostile == "calls-the-others-wait":
            session_b.client.sock.sendall(frame_b)  # waiting in B's socket, unread
        time.sleep(0.1)  # A waits in the fast path (and B in its own, when it waits)
        _Hostile(lambda: inside_as_read() or state["acted"], act)
        session_a.client.sock.sendall(frame_a)
        state["sent"] = True
        assert session_a.client.recv() == Close(1007, session_a.client.conn.close_reason)
        session_a.finish()
        if hostile == "yields-to-the-others-greenlet" and not state["acted"]:
            session_b.client.sock.sendall(frame_b)  # B's wait ends
        b_done.set()
        session_b.finish()
    assert (seen["message"], seen["code"]) == (None, 1007)
    assert seen["to_python"] in ([], [frame_a]), seen["to_python"]  # never B's bytes
    assert b_side.get("message") in (None, "from B")
    if hostile == "yields-to-the-others-greenlet":
        assert b_side["message"] == "from B"


def test_a_session_ended_between_the_wake_and_the_read_reads_nothing() -> None:
    """Python code that runs after the waiter woke and before read(2) may end the
    session (as end_session() in another greenlet), and the server may then give the fd
    number to a new connection: the read must not take that connection's bytes."""
    import os

    from greenlet import getcurrent

    state: dict[str, Any] = {"armed": False, "acted": False}
    seen: dict[str, Any] = {}
    intruder, intruder_peer = socket.socketpair()
    intruder_peer.sendall(masked(0x1, b"intruder"))

    def end_and_reuse() -> None:
        if not state["armed"] or state["acted"] or getcurrent() is not state["greenlet"]:
            return
        if not _has_pending_data(session.server_sock):
            return  # not woken for the frame yet
        state["acted"] = True
        ws = state["ws"]
        ws._shutdown()
        ws._transport.release()
        os.dup2(intruder.fileno(), session.server_sock.fileno())

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws._core = _LockThatRuns(ws._core, end_and_reuse)
        ws.accept()
        state["ws"], state["greenlet"] = ws, getcurrent()
        seen["fast"] = ws._fast is not None
        seen["message"] = ws.wait(TIMEOUT)

    session = Session(view)
    with session, intruder, intruder_peer:
        session.expect_101()
        time.sleep(0.1)  # the view waits in the fast path
        state["armed"] = True
        session.client.sock.sendall(masked(0x1, b"mine"))
        session.finish()
    assert seen["fast"] is True
    assert state["acted"] is True  # the scene was set
    assert seen["message"] is None


# -- the C send path and its Python twin, byte for byte --

SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


def _messages_of_size(n: int) -> list[str | bytes]:
    """Text (ASCII, and non-ASCII of the same UTF-8 length) and binary, n bytes each."""
    return [
        "a" * n,
        "é" * (n // 2) + "a" * (n % 2),
        bytes(range(256)) * (n // 256) + b"z" * (n % 256),
    ]


def _python_frame(message: str | bytes) -> bytes:
    """The frame as the pure-Python encoder writes it (frames._py_frame_header)."""
    from dwebsocket.protocol import frames

    payload = message.encode() if isinstance(message, str) else message
    b0 = 0x81 if isinstance(message, str) else 0x82
    return frames._py_frame_header(b0, len(payload), False) + payload


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=4 << 20, WEBSOCKET_COMPRESSION=False)
def test_the_c_send_path_writes_what_the_python_one_does(seen: dict[str, Any]) -> None:
    messages = [m for n in SIZES for m in _messages_of_size(n)]

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        assert ws.wait(TIMEOUT) == "go"  # nothing on the wire after the 101 until then
        for message in messages:
            ws.send(message)
        seen["python"] = [ws._conn.send_message(m) for m in messages]  # type: ignore[union-attr]

    expected = b"".join(_python_frame(m) for m in messages)
    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.send("go")
        received = b""
        while len(received) < len(expected):
            chunk = session.client.sock.recv(1 << 20)
            assert chunk, f"EOF after {len(received)} of {len(expected)} bytes"
            received += chunk
        assert received[: len(expected)] == expected
        session.client.receive(received[len(expected) :])  # the close frame, maybe
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["fast"] is True
    assert b"".join(seen["python"]) == expected  # the general path, same bytes


def _send_cut_short(
    path: str, send: Callable[[DefaultWebSocket, bytes], None]
) -> tuple[dict[str, Any], bytes, bytes]:
    """A view sends a frame too large for the socket buffers (the client reads nothing
    until it is done) with ``send(ws, message)``, on the C path or the Python one, which
    raises once the kernel took part of it. Then it sends "after". Returns what the view
    saw, the frame and all that the client received until EOF."""
    big = b"B" * (8 << 20)
    frame = _python_frame(big)
    done = threading.Event()

    def body(ws: DefaultWebSocket, seen: dict[str, Any]) -> None:
        if path == "python":
            ws._fast = None
        assert ws.wait(TIMEOUT) == "go"  # nothing on the wire after the 101 until then
        try:
            send(ws, big)
        except BaseException as exc:
            seen["raised"] = type(exc).__name__
        seen["closed"] = ws.is_closed()
        done.set()
        try:
            ws.send("after")
            seen["after"] = "sent"
        except ConnectionClosed:
            seen["after"] = "ConnectionClosed"
        seen["code"] = ws.close_code

    seen: dict[str, Any] = {}
    with Session(fast_view(body, seen)) as session:
        session.expect_101()
        session.client.send("go")
        assert done.wait(TIMEOUT)
        received = b""
        while chunk := session.client.sock.recv(1 << 20):
            received += chunk
        session.finish()
    assert seen["fast"] is True
    return seen, frame, received


def _frame_cut_and_connection_failed(
    seen: dict[str, Any], frame: bytes, received: bytes, raised: str
) -> None:
    assert seen["raised"] == raised, seen
    # Part of it went (the scene was set), and nothing after that part: no frame into its
    # middle (the client would take "after" or the close frame for payload).
    assert 0 < len(received) < len(frame) and frame.startswith(received), received[-40:]
    assert seen["closed"] is True and seen["after"] == "ConnectionClosed", seen
    assert seen["code"] == 1006, seen


def _rest_not_kept(ws: DefaultWebSocket, message: bytes) -> None:
    """send() with a MemoryError right after the kernel took part of the frame: the C
    path's allocation of the rest fails; the Python path's write fails once it wrote
    (os.write() allocates its result, then the count is added to bytes_out)."""
    if ws._fast is not None:
        import _testcapi  # type: ignore[import-not-found]

        fast, before = ws._fast, ws._io.bytes_out
        for n in range(100):  # the n-th allocation fails, up to the first after the write
            _testcapi.set_nomemory(n, n + 1)
            try:
                fast.send(message)
            except MemoryError as exc:
                error: BaseException | None = exc
            else:
                error = None
            finally:
                _testcapi.remove_mem_hooks()
            if error is None:
                raise AssertionError("no allocation failed after the write")
            if ws._io.bytes_out != before:
                raise error
            # One before the write (a lock's locked()): nothing went, the next then.
        return
    real_write = transport_module._write  # type: ignore[attr-defined]

    def write(fd: int, data: Any) -> int:
        sent = real_write(fd, data)
        if 0 < sent < len(data):
            raise MemoryError
        return sent

    transport_module._write = write  # type: ignore[attr-defined]
    try:
        ws.send(message)
    finally:
        transport_module._write = real_write  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["c", "python"])
def test_a_send_that_cannot_keep_its_frames_rest_fails_the_connection(path: str) -> None:
    """The kernel took part of a frame, then keeping its rest ran out of memory: the rest
    is lost, and the next frame would land in the middle of this one (the client reads
    it as payload). So the connection is failed (1006: no close frame can follow), the
    MemoryError goes on, and the next send raises ConnectionClosed, in C as in Python
    (both sent "after" into the frame's payload)."""
    if path == "c":
        pytest.importorskip("_testcapi")
    seen, frame, received = _send_cut_short(path, _rest_not_kept)
    _frame_cut_and_connection_failed(seen, frame, received, "MemoryError")


@pytest.mark.parametrize("path", ["c", "python"])
def test_a_send_interrupted_midway_fails_the_connection(path: str) -> None:
    """A gevent.Timeout around send() fires while the rest of a frame waits for room (a
    client that reads nothing): the connection is failed as for a rest that could not be
    kept, since part of the frame went (the C path's _send_rest(), the Python send()'s
    sendall()); the timeout goes on."""
    import gevent

    def send(ws: DefaultWebSocket, message: bytes) -> None:
        with gevent.Timeout(0.2):
            ws.send(message)

    seen, frame, received = _send_cut_short(path, send)
    _frame_cut_and_connection_failed(seen, frame, received, "Timeout")


# -- the Waiter: Python code that runs while a wait arms its watchers --


class _Watched:
    """A watcher of the hub's loop that runs Python code: ``after_start`` right after its
    ``start()``, ``after_stop`` after its ``stop()``, ``after_ref`` right after ``ref`` is
    set true. The C waiter calls into
    its loop's watchers while a wait arms them, and any such call may run Python code (a
    garbage collection's finalizers; gevent's libuv loop is Python code) that yields to
    the hub."""

    def __init__(self, watcher: Any, hooks: dict[str, list[Callable[[], None]]]) -> None:
        self._watcher, self._hooks = watcher, hooks
        self.calls = 0  # of its callback, by the loop

    def _run(self, hook: str) -> None:
        if self._hooks[hook]:
            self._hooks[hook].pop()()

    def start(self, callback: Any, *args: Any, **kwargs: Any) -> None:
        def counted(*args: Any) -> Any:
            self.calls += 1
            return callback(*args)

        self._watcher.start(counted, *args, **kwargs)
        self._run("after_start")

    def stop(self) -> None:
        self._watcher.stop()
        self._run("after_stop")

    def close(self) -> None:
        self._watcher.close()

    @property
    def active(self) -> bool:
        return bool(self._watcher.active)

    @property
    def ref(self) -> bool:
        return bool(self._watcher.ref)

    @ref.setter
    def ref(self, value: bool) -> None:
        self._watcher.ref = value
        if value:
            self._run("after_ref")


def _waiter_with_hooks(kind: str, sock: socket.socket) -> tuple[Any, dict[str, Any]]:
    """A C or Python waiter on ``sock`` whose loop's timers (and, for the C waiter, io
    watcher) are ``_Watched``; the hooks to set, and the timers and io watchers made."""
    import gevent

    hub = gevent.get_hub()
    hooks: dict[str, Any] = {
        name: [] for name in ("before_timer", "after_start", "after_stop", "after_ref")
    }
    timers: list[_Watched] = []
    ios: list[_Watched] = []
    hooks["timers"], hooks["ios"] = timers, ios

    class Loop:
        def __getattr__(self, name: str) -> Any:
            return getattr(hub.loop, name)

        def timer(self, *args: Any, **kwargs: Any) -> _Watched:
            if hooks["before_timer"]:
                hooks["before_timer"].pop()()
            timers.append(_Watched(hub.loop.timer(*args, **kwargs), hooks))
            return timers[-1]

        def io(self, *args: Any, **kwargs: Any) -> _Watched:
            ios.append(_Watched(hub.loop.io(*args, **kwargs), hooks))
            return ios[-1]

    class Hub:
        loop = Loop()
        switch = hub.switch

    if kind == "c":
        return transport_module._fastpath.Waiter(Hub(), sock.fileno()), hooks
    return transport_module._GeventReadWaiter(sock, Hub()), hooks


def _wait_in_greenlet(waiter: Any, deadline: float | None) -> Any:
    """``waiter.wait(deadline)`` in a greenlet of its own: its result, its exception, or
    "still waiting" after TIMEOUT (the greenlet then killed)."""
    import gevent

    waiting = gevent.spawn(waiter.wait, deadline)
    waiting.join(TIMEOUT)
    if not waiting.ready():
        waiting.kill()
        return "still waiting"
    return waiting.exception if waiting.exception is not None else waiting.value


@pytest.mark.parametrize("kind", ["c", "python"])
def test_a_deadline_that_passes_while_the_wait_arms_its_timer_ends_it(kind: str) -> None:
    """The timer fires while Python code run after its start() yields (the deadline
    passes meanwhile): the wait ends (False), it does not wait on without a timer (the C
    waiter), nor does the timer switch into the greenlet running that code (the Python
    waiter: InvalidSwitchError in its gevent.sleep)."""
    import gevent

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        hooks["after_start"].append(lambda: gevent.sleep(0.05))
        result = _wait_in_greenlet(waiter, time.monotonic() + 0.01)
        assert hooks["after_start"] == []  # the scene was set
        waiter.close()
        assert result is False, result
        b.sendall(b"x")  # a watcher left started would switch into this greenlet now
        gevent.sleep(0.05)


@pytest.mark.parametrize(
    ("kind", "hook"),
    [("c", "after_ref"), ("c", "after_start"), ("python", "after_start")],
    ids=["c-ref", "c-start", "python-start"],
)
def test_a_socket_readable_while_a_wait_arms_its_watcher_wakes_it(kind: str, hook: str) -> None:
    """Readable while Python code run as the wait arms its io watcher yields (after its
    ``start()``; for the C waiter, whose watcher stays started between waits, also as
    the wait sets its ``ref``): the watcher fires with the greenlet still busy there.
    ``_ready()``, finding nobody waiting yet, switches nowhere (the Python waiter's
    watcher switched straight to the greenlet: InvalidSwitchError in that code's
    gevent.sleep) and stops the watcher, once: the loop does not call it again at every
    turn while that code yields (the C waiter counted its watcher as started only once
    start() had returned, so its _ready() left it running: tens of thousands of calls in
    the sleep). The wait then ends (False: the caller waits again), as it does when the
    watcher fires during the wait, instead of waiting on a stopped watcher."""
    import gevent

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        if hook == "after_ref":
            b.sendall(b"1")
            assert waiter.wait(None) is True  # its watcher stays started (and no timer)
            assert a.recv(1) == b"1"
        calls_before = hooks["ios"][0].calls

        def readable_meanwhile() -> None:
            b.sendall(b"2")
            gevent.sleep(0.05)  # the hub runs: the watcher fires, nobody waits yet

        hooks[hook].append(readable_meanwhile)
        result = _wait_in_greenlet(waiter, None)  # no deadline: no timer's start()
        assert hooks[hook] == []  # the scene was set
        assert hooks["ios"][0].calls - calls_before == 1  # fired, then stopped
        assert result is False, result
        assert _wait_in_greenlet(waiter, None) is True
        assert a.recv(1) == b"2"
        waiter.close()


@pytest.mark.parametrize("kind", ["c", "python"])
def test_a_close_while_a_wait_arms_and_yields_ends_it(kind: str) -> None:
    """close() from Python code that runs (and yields) while a wait arms its timer: the
    wake-up close() schedules runs meanwhile and does not switch into the greenlet
    running that code; the wait ends (False) once armed, and leaves no watcher."""
    import gevent

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        hooks["before_timer"].append(lambda: (waiter.close(), gevent.sleep(0.01)))
        result = _wait_in_greenlet(waiter, time.monotonic() + 60)
        assert hooks["before_timer"] == []  # the scene was set
        assert result is False, result
        assert waiter.wait(None) is None
        b.sendall(b"x")  # a watcher left started would switch into this greenlet now
        gevent.sleep(0.05)
        assert [timer.active for timer in hooks["timers"]] == [False]


@pytest.mark.parametrize("kind", ["c", "python"])
def test_a_wait_another_greenlet_begins_while_a_wait_arms_leaves_no_timer(kind: str) -> None:
    """Another greenlet's wait with a deadline, begun from Python code that runs (and
    yields) while a wait arms its timer: one of the two is refused (None: its caller
    polls), the other woken, and once the waiter is closed no timer of it is left
    running (the C waiter kept the later timer and lost its reference to the earlier,
    which went on running, and holding the waiter, for ever)."""
    import gevent

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        results: dict[str, Any] = {}

        def wait(name: str, deadline: float) -> None:
            results[name] = waiter.wait(deadline)

        hooks["before_timer"].append(
            lambda: (gevent.spawn(wait, "second", time.monotonic() + 30), gevent.sleep(0.01))
        )
        first = gevent.spawn(wait, "first", time.monotonic() + 60)
        gevent.sleep(0.05)
        b.sendall(b"x")
        gevent.joinall([first], timeout=TIMEOUT)
        gevent.sleep(0.05)
        assert sorted(map(repr, results.values())) == ["None", "True"], results
        assert a.recv(1) == b"x"
        waiter.close()
        gevent.sleep(0)
        assert hooks["timers"], "the scene was set"
        assert [timer.active for timer in hooks["timers"]] == [False] * len(hooks["timers"])


class _StartFailed(Exception):
    pass


class _StopFailed(Exception):
    pass


@pytest.mark.parametrize("stop", ["stops", "stop-raises-too"])
@pytest.mark.parametrize("kind", ["c", "python"])
def test_a_timer_whose_start_raises_after_starting_it_is_stopped(kind: str, stop: str) -> None:
    """The timer's ``start()`` starts it, then raises (Python code it runs after starting
    it: a garbage collection's finalizer, a hub's wrapper): the wait raises that, and
    leaves no timer running (the C waiter dropped its reference without stopping it:
    the timer went on, holding the waiter until it fired). When the ``stop()`` after it
    raises too, that goes on with the first as its context, as in an except clause, and
    the timer is dropped all the same (the Python waiter kept it, stopped, as its armed
    timer, so a later wait with a later deadline would wait with no timer). The next
    wait works: no deadline is left to a stopped timer."""
    import gevent

    def fail(error: type[Exception]) -> Callable[[], None]:
        def raise_it() -> None:
            raise error

        return raise_it

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        hooks["after_start"].append(fail(_StartFailed))
        if stop == "stop-raises-too":
            hooks["after_stop"].append(fail(_StopFailed))
        result = _wait_in_greenlet(waiter, time.monotonic() + 0.01)
        assert len(hooks["timers"]) == 1  # the scene was set
        if stop == "stop-raises-too":
            assert hooks["after_stop"] == []
            assert isinstance(result, _StopFailed), result
            assert isinstance(result.__context__, _StartFailed), result.__context__
        else:
            assert isinstance(result, _StartFailed), result
        assert hooks["timers"][0].active is False
        # A later deadline: a waiter that kept the stopped timer would not arm another.
        assert _wait_in_greenlet(waiter, time.monotonic() + 0.05) is False
        assert len(hooks["timers"]) == 2
        b.sendall(b"x")
        assert _wait_in_greenlet(waiter, time.monotonic() + 60) is True
        assert a.recv(1) == b"x"
        waiter.close()
        gevent.sleep(0)
        assert [timer.active for timer in hooks["timers"]] == [False] * len(hooks["timers"])


@pytest.mark.parametrize("kind", ["c", "python"])
def test_an_io_watcher_whose_start_raises_after_starting_it_is_stopped(kind: str) -> None:
    """The io watcher's ``start()`` starts it, then raises: the wait raises that and
    leaves the watcher stopped (the C waiter, counting it as not started, would never
    stop it: readable with nobody waiting, the loop would call it at every turn). The
    socket readable meanwhile, it fires no more; the next wait is woken."""
    import gevent

    def fail() -> None:
        raise _StartFailed

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks(kind, a)
        hooks["after_start"].append(fail)
        result = _wait_in_greenlet(waiter, None)  # no deadline: the io watcher's start()
        assert hooks["after_start"] == []  # the scene was set
        assert isinstance(result, _StartFailed), result
        assert hooks["ios"][0].active is False
        b.sendall(b"x")
        gevent.sleep(0.05)
        assert hooks["ios"][0].calls == 0
        assert _wait_in_greenlet(waiter, None) is True
        assert a.recv(1) == b"x"
        waiter.close()


class _RefFailed(Exception):
    pass


@pytest.mark.parametrize("close", ["not-closed", "closed-meanwhile"])
def test_a_wait_whose_arming_raises_leaves_the_loop_unreferenced(close: str) -> None:
    """Setting the io watcher's ``ref`` (the C waiter's last arming call) sets it, then
    raises (Python code it runs after): the wait raises that, and the watcher, which
    stays started between waits, does not keep the loop referenced (the wait left ref
    true: a loop with nothing else to do never ended). A close() while the wait armed
    its timer is honoured too: the io watcher, started again after it, is closed (it was
    left started, referenced, for good). The Python waiter sets no ref: its wait's
    finally stops the watcher, and tears down after a close(), whatever raised."""
    import gevent

    def fail() -> None:
        raise _RefFailed

    a, b = socket.socketpair()
    with a, b:
        waiter, hooks = _waiter_with_hooks("c", a)
        hooks["after_ref"].append(fail)
        deadline = None
        if close == "closed-meanwhile":
            hooks["after_start"].append(waiter.close)  # the timer's, started first
            deadline = time.monotonic() + 60
        result = _wait_in_greenlet(waiter, deadline)
        assert hooks["after_ref"] == [] and hooks["after_start"] == []  # the scene was set
        assert isinstance(result, _RefFailed), result
        io = hooks["ios"][0]
        assert io.ref is False
        if close == "closed-meanwhile":
            assert io.active is False
            assert [timer.active for timer in hooks["timers"]] == [False]
            assert waiter.wait(None) is None
            return
        b.sendall(b"x")
        assert _wait_in_greenlet(waiter, None) is True
        assert a.recv(1) == b"x"
        assert io.ref is False
        waiter.close()
        gevent.sleep(0)
