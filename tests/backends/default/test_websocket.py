"""The default backend's WebSocket over a socketpair: keepalive, deliver, closing, errors."""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib.util
import io
import logging
import random
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.test import override_settings
from prometheus_client import REGISTRY

from dwebsocket import ConnectionClosed, require_websocket
from dwebsocket.backends.default import registry
from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.groups.batch import Batch
from dwebsocket.protocol.connection import Close, Connection, Ping, Pong
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import encode_frame
from dwebsocket.signals import websocket_closed, websocket_opened
from tests import views
from tests.inprocess import Session
from tests.protocol.support import LosingEncoder
from tests.requirements import missing
from tests.wire import TIMEOUT, masked, read_until_eof, split_frames


class Holder:
    """Hands the view's websocket to the test and keeps the view alive until released."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.release = threading.Event()
        self.ws: DefaultWebSocket | None = None
        self.seen: dict[str, Any] = {}

    def websocket(self) -> DefaultWebSocket:
        """The view's websocket, once the view is ready."""
        assert self.ready.wait(TIMEOUT)
        assert self.ws is not None
        return self.ws


def holding_view(holder: Holder, *, accept: bool = True):  # type: ignore[no-untyped-def]
    @require_websocket
    def view(request: HttpRequest) -> None:
        holder.ws = request.websocket
        if accept:
            request.websocket.accept()
        holder.ready.set()
        holder.release.wait(TIMEOUT)

    return view


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.release.set()


def test_public_attributes() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        seen.update(offered=ws.offered_subprotocols, protocols=ws.protocols, accepted=ws.accepted)
        ws.accept_connection()
        seen.update(accepted_after=ws.accepted, closed=ws.closed, repr=repr(ws))

    with Session(view, headers={"Sec-WebSocket-Protocol": "a, b"}) as session:
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen["offered"] == seen["protocols"] == ["a", "b"]
    assert seen["accepted"] is False and seen["accepted_after"] is True and seen["closed"] is False
    assert seen["repr"].startswith("<DefaultWebSocket open /ws/")


def test_accept_rejects_unoffered_subprotocol() -> None:
    errors: list[Exception] = []

    @require_websocket
    def view(request: HttpRequest) -> None:
        try:
            request.websocket.accept(subprotocol="nope")
        except ValueError as exc:
            errors.append(exc)
        request.websocket.accept(subprotocol="b")

    with Session(view, headers={"Sec-WebSocket-Protocol": "a, b"}) as session:
        headers = session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert headers["sec-websocket-protocol"] == "b"
    assert len(errors) == 1


def test_send_rejects_other_types(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        assert holder.ready.wait(TIMEOUT)
        assert holder.ws is not None
        with pytest.raises(TypeError):
            holder.ws.send(42)  # type: ignore[arg-type]
        holder.ws.send(bytearray(b"ba"))
        holder.ws.send(memoryview(b"mv"))
        session.expect_101()
        assert session.client.recv() == b"ba"
        assert session.client.recv() == b"mv"
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_signals() -> None:
    events: list[tuple[str, Any]] = []

    def opened(sender: type, **kwargs: Any) -> None:
        events.append(("opened", kwargs["websocket"].request.path))

    def closed(sender: type, **kwargs: Any) -> None:
        events.append(("closed", kwargs["code"]))

    websocket_opened.connect(opened)
    websocket_closed.connect(closed)
    try:
        with Session(require_websocket(lambda request: request.websocket.close(4003))) as session:
            session.expect_101()
            assert session.client.recv() == Close(4003, "")
            session.finish()
    finally:
        websocket_opened.disconnect(opened)
        websocket_closed.disconnect(closed)
    assert events == [("opened", "/ws/"), ("closed", 4003)]


@override_settings(WEBSOCKET_PING_INTERVAL=0.05, WEBSOCKET_PING_TIMEOUT=0.05)
def test_keepalive_declares_a_silent_peer_dead() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        seen["wait"] = request.websocket.wait()
        seen["closed"] = request.websocket.is_closed()
        seen["code"] = request.websocket.close_code

    with Session(view) as session:
        data = read_until_eof(session.client.sock)  # never answers the ping
        session.finish()
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    frames, trailing = split_frames(data)
    assert frames[0] == (0x89, b"")
    assert frames[-1][0] == 0x88 and frames[-1][1][:2] == (1011).to_bytes(2, "big")
    assert trailing == b""
    assert seen == {"wait": None, "closed": True, "code": 1011}


@override_settings(WEBSOCKET_PING_INTERVAL=0.02, WEBSOCKET_PING_TIMEOUT=TIMEOUT)
def test_keepalive_pings_an_idle_peer_that_answers() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        seen["wait"] = request.websocket.wait(timeout=0.2)
        seen["closed"] = request.websocket.is_closed()

    with Session(view) as session:
        session.expect_101()
        assert isinstance(session.client.next_event(), Ping)  # answered by the client core
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {"wait": None, "closed": False}


def test_wait_timeout_and_read_fallback() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        seen["read"] = ws.read(fallback="nothing")
        seen["count"] = ws.count_messages()
        seen["has"] = ws.has_messages()
        seen["wait"] = ws.wait(timeout=0.01)
        seen["closed"] = ws.is_closed()
        ws.send("go")
        seen["message"] = ws.wait(TIMEOUT)

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == "go"
        session.client.send("back")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {
        "read": "nothing",
        "count": 0,
        "has": False,
        "wait": None,
        "closed": False,
        "message": "back",
    }


def test_count_messages_drains_without_blocking(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        assert holder.ready.wait(TIMEOUT)
        session.expect_101()
        session.client.send("one")
        session.client.send(b"two")
        ws = holder.ws
        assert ws is not None
        for _ in range(1000):  # the bytes may take a moment to cross the socketpair
            if ws.count_messages() == 2:
                break
            threading.Event().wait(0.005)
        assert ws.count_messages() == 2
        assert ws.read() == "one" and ws.read() == b"two" and ws.read() is None
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_deliver_in_order_and_flusher_gone(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()

        def produce() -> None:
            for i in range(50):
                ws.deliver(f"m{i}")
                ws.send(f"s{i}")

        producer = threading.Thread(target=produce)
        producer.start()  # the client reads meanwhile: a socketpair buffers little
        session.expect_101()
        got = [session.client.recv() for _ in range(100)]
        producer.join(TIMEOUT)
        assert [m for m in got if str(m).startswith("m")] == [f"m{i}" for i in range(50)]
        assert [m for m in got if str(m).startswith("s")] == [f"s{i}" for i in range(50)]
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert ws._flusher is None or not ws._flusher.is_alive()


def flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dwebsocket-flusher"]


def test_deliver_writes_directly_when_the_socket_has_room(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        before = flushers()
        for i in range(20):
            ws.deliver(f"d{i}")
            assert ws._flusher is None and not ws._outbox
        assert flushers() == before
        session.expect_101()
        assert [session.client.recv() for _ in range(20)] == [f"d{i}" for i in range(20)]
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_deliver_batch_is_one_write_of_the_batch_frames(holder: Holder) -> None:
    """A group's batch goes out in one write: the frames encoded once for all members,
    the same bytes as delivering its messages one by one; then one by one again."""
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        session.expect_101()
        writes: list[bytes] = []
        transport = ws._transport
        original = transport.try_send

        def try_send(data: bytes) -> int:
            writes.append(bytes(data))
            return original(data)

        transport.try_send = try_send  # type: ignore[method-assign]
        batch = Batch(["a", b"b", "c" * 200])
        ws.deliver_batch(batch)
        ws.deliver("d")
        assert writes == [batch.frames(), b"\x81\x01d"]
        assert [session.client.recv() for _ in range(4)] == ["a", b"b", "c" * 200, "d"]
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


@override_settings(WEBSOCKET_SEND_QUEUE_SIZE=64 << 20)
def test_deliver_falls_back_to_a_flusher_when_the_socket_is_full(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        pad = "x" * 4096
        count = 0
        while ws._flusher is None:  # the client reads nothing yet: the socketpair fills
            assert count < 10_000, "the socket never filled up"
            ws.deliver(f"{count}:{pad}")
            count += 1
        flusher = ws._flusher
        assert flusher in flushers()
        session.expect_101()
        got = [session.client.recv() for _ in range(count)]
        assert got == [f"{i}:{pad}" for i in range(count)]
        flusher.join(TIMEOUT)
        assert not flusher.is_alive() and ws._flusher is None
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


@override_settings(WEBSOCKET_SEND_QUEUE_SIZE=64 << 20)
def test_deliver_and_send_keep_their_order_across_both_paths(holder: Holder) -> None:
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        transport = ws._transport
        direct: list[tuple[int, int]] = []  # (bytes written directly, bytes offered)
        try_send = transport.try_send

        def spy(data: bytes) -> int:
            sent = try_send(data)
            direct.append((sent, len(data)))
            return sent

        transport.try_send = spy  # type: ignore[method-assign]
        pad = "x" * 1024
        seen_flusher = threading.Event()

        def interleave() -> None:  # one thread: deliver then send, so exactly m0 s0 m1 s1...
            for i in range(200):
                ws.deliver(f"m{i}:{pad}")
                ws.send(f"s{i}:{pad}")

        def deliver_only() -> None:
            for i in range(200):
                ws.deliver(f"d{i}:{pad}")
                if ws._flusher is not None:
                    seen_flusher.set()

        threads = [threading.Thread(target=interleave), threading.Thread(target=deliver_only)]
        for thread in threads:
            thread.start()
        seen_flusher.wait(TIMEOUT)  # the client reads once the socket has filled up
        session.expect_101()
        got = [str(session.client.recv()) for _ in range(600)]
        for thread in threads:
            thread.join(TIMEOUT)
        ms = [m for m in got if m[0] in "ms"]
        assert ms == [f"{k}{i}:{pad}" for i in range(200) for k in "ms"]
        assert [m for m in got if m[0] == "d"] == [f"d{i}:{pad}" for i in range(200)]
        assert seen_flusher.is_set()
        assert any(sent == size for sent, size in direct)  # some went out directly
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_a_killed_view_does_not_cut_the_close_frame_another_thread_is_writing() -> None:
    """A stop's goodbye, close(1001) in a thread of its own, holds the connection's
    writer lock while it writes the close frame; the stop then kills the view (gunicorn's
    sync worker: SystemExit right after its quick stop's hook), whose session aborts. The
    abort found the lock taken, wrote nothing and shut the socket down at once: when the
    goodbye's thread had not written yet (a loaded machine: seen once on CI), its write
    failed and the client got EOF without a close frame (1006). The abort now waits for
    that writer (at most WEBSOCKET_CLOSE_TIMEOUT, as close() does)."""
    writing, go_on = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        transport = ws._transport
        sendall = transport.sendall

        def held_sendall(data: bytes) -> None:  # the goodbye's thread, preempted
            if data.startswith(b"\x88"):
                writing.set()
                go_on.wait(TIMEOUT)
            sendall(data)

        transport.sendall = held_sendall  # type: ignore[method-assign]
        goodbye = threading.Thread(target=ws.close, args=(1001, "server shutting down"))
        goodbye.start()
        assert writing.wait(TIMEOUT)
        seen["goodbye"] = goodbye
        raise SystemExit(0)  # the worker's quick stop, in the view

    with Session(view) as session:
        session.expect_101()
        assert writing.wait(TIMEOUT)
        time.sleep(0.2)  # the view's abort is under way (a ordering, not a timing, check)
        go_on.set()
        assert session.client.recv() == Close(1001, "server shutting down")
        assert read_until_eof(session.client.sock) == b""
        seen["goodbye"].join(TIMEOUT)
        session.finish()


@override_settings(WEBSOCKET_PING_TIMEOUT=0.3, WEBSOCKET_CLOSE_TIMEOUT=0.3)
def test_a_send_to_a_client_that_reads_nothing_ends_after_the_ping_timeout() -> None:
    """What docs/deployment.rst says of a client that stops reading: the view's send()
    blocks while the socket is full, and once no byte went out for
    WEBSOCKET_PING_TIMEOUT it raises ConnectionClosed (1006); the connection is shut
    down (the client reads what went out, then EOF: no close frame could go)."""
    seen: dict[str, Any] = {}
    done = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        try:
            for _ in range(10_000):  # far more than a socketpair holds
                ws.send("x" * 65536)
        except ConnectionClosed as exc:
            seen.update(code=exc.code, close_code=ws.close_code)
        done.set()

    with Session(view) as session:
        assert done.wait(TIMEOUT), "send() blocked for good"
        assert seen == {"code": 1006, "close_code": 1006}
        session.expect_101()
        data = read_until_eof(session.client.sock)  # EOF, not a wait for ever
        # Text frames of "x" (headers 81 7f 00.. 01 00 00) and no close frame (88 ..).
        assert data and b"\x88" not in data
        session.finish()


@override_settings(
    WEBSOCKET_SEND_QUEUE_SIZE=1000, WEBSOCKET_PING_INTERVAL=None, WEBSOCKET_CLOSE_TIMEOUT=0.2
)
def test_overflow_releases_a_waiting_view_within_the_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The view is released *because* the close timeout ran out: by the time its wait()
    returns, the connection has logged that no close frame came within 0.2 s (a release
    for any other reason, such as a shutdown before the timeout, would not have). No
    timing window: the only bound is TIMEOUT, against a hang."""
    ready = threading.Event()
    seen: dict[str, Any] = {}
    timed_out = "No close frame from {} within 0.2s"

    @require_websocket
    def view(request: HttpRequest) -> None:
        seen["ws"] = ws = request.websocket
        ws.accept()
        ready.set()
        seen["wait"] = ws.wait()  # no keepalive: only the overflow's close can end this
        seen["logged"] = [r.getMessage() for r in caplog.records]
        seen["code"] = ws.close_code
        seen["peer"] = ws._peer()

    with caplog.at_level(logging.DEBUG, logger="dwebsocket"), Session(view) as session:
        assert ready.wait(TIMEOUT)
        time.sleep(0.05)  # let the view block in wait()
        seen["ws"].deliver(b"x" * 2000)
        data = read_until_eof(session.client.sock)  # never answers the close
        session.finish()
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert split_frames(data) == ([(0x88, b"\x03\xf0send queue overflow")], b"")
    assert seen["wait"] is None and seen["code"] == 1008
    assert timed_out.format(seen["peer"]) in seen["logged"], seen["logged"]


def test_session_ends_while_a_flusher_is_published_but_not_started(holder: Holder) -> None:
    # deliver() publishes the flusher under its lock and starts it just after; a view that
    # ends in between must not join a thread that has not started (it used to raise).
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        late = threading.Thread(target=ws._run_flusher)
        ws._flusher = late
        holder.release.set()
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()
        assert session.error is None
        late.start()  # what deliver() does next: it finds the session shut and exits
        late.join(TIMEOUT)
        assert not late.is_alive()


def test_deliver_before_accept_is_sent_after_the_101(holder: Holder) -> None:
    with Session(holding_view(holder, accept=False)) as session:
        ws = holder.websocket()
        ws.deliver("early")
        ws.accept()
        session.expect_101()
        assert session.client.recv() == "early"
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


@pytest.mark.parametrize("accepted", [False, True], ids=["before-accept", "after-accept"])
def test_deliver_of_text_utf8_cannot_encode_is_refused_and_the_connection_goes_on(
    holder: Holder, accepted: bool
) -> None:
    """A str with a lone surrogate (``json.loads`` of ``"\\ud800"``) handed to deliver()
    is refused there (``UnicodeEncodeError``), before the handshake as after it, and
    nothing of it is kept: the accept and what was delivered around it go through. A
    batch with one such message keeps none of it. (Before the handshake it was kept, and
    the accept that encoded it raised after the takeover: the connection was shut down,
    no 101, and the view's wait() returned None.)"""
    with Session(holding_view(holder, accept=accepted)) as session:
        ws = holder.websocket()
        ws.deliver("before")
        with pytest.raises(UnicodeEncodeError):
            ws.deliver("bad \ud800")
        with pytest.raises(UnicodeEncodeError):
            ws.deliver_batch(Batch(["kept? no", "caf\u00e9 \ud800"]))
        ws.deliver("after")
        ws.accept()
        session.expect_101()
        assert [session.client.recv(), session.client.recv()] == ["before", "after"]
        ws.send("still open")
        assert session.client.recv() == "still open"
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert session.error is None
    assert ws.close_code == 1000


def test_deliver_during_the_101_does_not_overtake_earlier_ones(holder: Holder) -> None:
    # A group message may arrive from another thread while accept() writes the 101: it
    # must follow the messages delivered before the handshake (it used to overtake them).
    with Session(holding_view(holder, accept=False)) as session:
        ws = holder.websocket()
        ws.deliver("first")

        def deliver_during_the_101(real: socket.socket, data: bytes) -> None:
            real.sendall(data)
            if data.startswith(b"HTTP/1.1 101"):
                late = threading.Thread(target=ws.deliver, args=("second",))
                late.start()
                late.join(TIMEOUT)

        replace_sendall(ws, deliver_during_the_101)
        ws.accept()
        session.expect_101()
        assert [session.client.recv(), session.client.recv()] == ["first", "second"]
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


@override_settings(WEBSOCKET_SEND_QUEUE_SIZE=1000)
def test_deliver_overflow_closes_1008_then_drops(
    holder: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="dwebsocket"),
        Session(holding_view(holder)) as session,
    ):
        ws = holder.websocket()
        ws.deliver(b"x" * 2000)
        ws.deliver("dropped silently")
        session.expect_101()
        assert session.client.recv() == Close(1008, "send queue overflow")
        with pytest.raises(ConnectionClosed) as info:
            ws.send("too late")
        assert info.value.code == 1008
        holder.release.set()
        session.finish()
    assert ws.close_code == 1008 and ws.is_closed()
    assert any("1008" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


@override_settings(WEBSOCKET_SEND_QUEUE_SIZE=1000)
def test_deliver_overflow_before_accept_closes_before_anything_else(holder: Holder) -> None:
    # Messages delivered before the handshake went over the limit: the 1008 close follows
    # the 101 at once. It used to wait until websocket_opened's receivers had returned,
    # and what they (or any thread) sent meanwhile went out before it.
    seen: list[object] = []

    def opened(sender: type, websocket: DefaultWebSocket, **kwargs: Any) -> None:
        if websocket is holder.ws:
            try:
                websocket.send("from websocket_opened")
            except ConnectionClosed as exc:
                seen.append(exc.code)

    websocket_opened.connect(opened, dispatch_uid="test_websocket.early_overflow")
    try:
        with Session(holding_view(holder, accept=False)) as session:
            ws = holder.websocket()
            ws.deliver(b"x" * 2000)
            ws.accept()
            session.expect_101()
            assert session.client.recv() == Close(1008, "send queue overflow")
            holder.release.set()
            session.finish()
    finally:
        websocket_opened.disconnect(dispatch_uid="test_websocket.early_overflow")
    assert seen == [1008]
    assert ws.close_code == 1008


@override_settings(
    WEBSOCKET_SEND_QUEUE_SIZE=1_000_000, WEBSOCKET_PING_INTERVAL=None, WEBSOCKET_CLOSE_TIMEOUT=0.2
)
def test_an_overflow_after_a_partial_write_keeps_the_stream_whole(holder: Holder) -> None:
    # deliver() writes directly when nothing is queued; when the kernel takes only part of
    # a frame, the rest is queued. An overflow before the flusher sends that rest used to
    # drop it with the whole frames, so the close frame landed inside a payload.
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        session.expect_101()
        gate = threading.Event()
        run_flusher = ws._run_flusher

        def gated_flusher() -> None:  # the flusher starts only once the overflow happened
            gate.wait(TIMEOUT)
            run_flusher()

        ws._run_flusher = gated_flusher  # type: ignore[method-assign]
        payload = b"x" * 300_000  # more than the socket's buffer takes at once
        partial = False
        for _ in range(100):  # the client reads nothing: the queue overflows
            ws.deliver(payload)
            partial = partial or ws._outbox.partial
            if ws.is_closed():
                break
        gate.set()
        assert ws.is_closed() and partial
        data = read_until_eof(session.client.sock)
        holder.release.set()
        session.finish()
    frames, trailing = split_frames(data)
    assert trailing == b""
    assert frames[-1] == (0x88, b"\x03\xf0send queue overflow")
    assert set(frames[:-1]) == {(0x82, payload)}


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.05)
def test_a_message_longer_than_one_read_takes_one_wait() -> None:
    # The rest of a frame that filled a read is taken at once, not after another trip
    # through the wait (under gevent, the event loop): 64 KiB messages are such frames.
    payload = bytes(range(256)) * 400  # 100 KiB: two reads
    sent = threading.Event()
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        # Counted in the Python path (under gevent the C one hands a full read to the
        # same _received(), and waits in C where this cannot count).
        ws._fast = None
        transport = ws._transport
        waits: list[float | None] = []
        wait_readable = transport.wait_readable

        def counting(timeout: float | None) -> bool:
            waits.append(timeout)
            return wait_readable(timeout)

        transport.wait_readable = counting  # type: ignore[method-assign]
        assert sent.wait(TIMEOUT)  # the whole frame is in the socket before the first read
        seen["message"] = ws.wait(TIMEOUT)
        seen["waits"] = len(waits)

    with Session(view) as session:
        session.expect_101()
        session.client.sock.sendall(masked(0x2, payload))
        sent.set()
        session.finish()
    assert seen == {"message": payload, "waits": 1}


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.05)
def test_close_waits_for_the_peer_then_gives_up() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        request.websocket.close(4000, "bye")
        seen["closed"] = request.websocket.is_closed()
        seen["code"] = (request.websocket.close_code, request.websocket.close_reason)
        request.websocket.close()  # idempotent

    with Session(view) as session:
        data = read_until_eof(session.client.sock)  # never answers
        session.finish()
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    frames, trailing = split_frames(data)
    assert frames == [(0x88, b"\x0f\xa0bye")] and trailing == b""
    assert seen == {"closed": True, "code": (4000, "bye")}


def test_close_discards_data_until_the_peer_closes() -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        request.websocket.close()

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_peer_close_code_and_reason_seen_by_the_view() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        seen["messages"] = list(ws)
        seen["close"] = (ws.close_code, ws.close_reason, ws.is_closed())
        with pytest.raises(ConnectionClosed) as info:
            ws.send("x")
        seen["exc"] = (info.value.code, info.value.reason)

    with Session(view) as session:
        session.expect_101()
        session.client.send("a")
        session.client.sock.sendall(session.client.conn.send_close(4100, "done here"))
        assert session.client.recv() == Close(4100, "")
        session.finish()
    assert seen == {
        "messages": ["a"],
        "close": (4100, "done here", True),
        "exc": (4100, "done here"),
    }


def test_protocol_error_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        list(request.websocket)

    with caplog.at_level(logging.DEBUG, logger="dwebsocket"), Session(view) as session:
        session.expect_101()
        session.client.sock.sendall(encode_frame(0x1, b"unmasked"))
        assert session.client.recv() == Close(1002, "unmasked frame from client")
        session.finish()
    errors = [r for r in caplog.records if "protocol error" in r.getMessage()]
    assert [r.levelno for r in errors] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_invalid_utf8_closes_1007() -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        list(request.websocket)

    with Session(view) as session:
        session.expect_101()
        session.client.sock.sendall(masked(0x1, b"\xff\xfe"))
        event = session.client.recv()
        assert isinstance(event, Close) and event.code == 1007
        session.finish()


def test_peer_vanishing_ends_wait() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        seen["wait"] = request.websocket.wait()
        seen["code"] = request.websocket.close_code

    with Session(view) as session:
        session.expect_101()
        session.client.sock.close()
        session.finish()
    assert seen == {"wait": None, "code": 1006}


def test_send_from_another_thread_while_waiting(holder: Holder) -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        sender = threading.Thread(target=lambda: [ws.send(f"t{i}") for i in range(20)])
        sender.start()
        seen["wait"] = ws.wait(TIMEOUT)
        sender.join(TIMEOUT)

    with Session(view) as session:
        session.expect_101()
        assert [session.client.recv() for _ in range(20)] == [f"t{i}" for i in range(20)]
        session.client.send("done")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {"wait": "done"}


def test_a_first_frame_that_came_with_the_handshake_reaches_any_reader() -> None:
    # The server's reader held the client's first frame (it came with the handshake). A
    # helper thread's send() ran the handshake, and while its websocket_opened receiver
    # ran (views._opened_slowly) the view began waiting. The frame used to stay in the
    # helper's hands meanwhile: the view read the socket, which had nothing, and the
    # helper then waited for the view's read lock, until the client sent again.
    first = masked(0x1, b"first")
    with Session(views.helper_accepts, environ={"dwebsocket.rfile": io.BytesIO(first)}) as session:
        session.expect_101()
        assert sorted([session.client.recv(), session.client.recv()]) == ["echo:first", "hello"]
        session.client.sock.sendall(masked(0x8, b"\x03\xe8"))
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert session.error is None


def test_a_first_frame_that_came_with_the_handshake_is_read_after_accept() -> None:
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        seen["count"] = ws.count_messages()
        seen["read"] = ws.read()

    first = masked(0x1, b"first")
    with Session(view, environ={"dwebsocket.rfile": io.BytesIO(first)}) as session:
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {"count": 1, "read": "first"}


def test_wait_behind_another_reader_keeps_its_own_timeout() -> None:
    # wait(timeout) queued behind another thread's wait() used to read for its whole
    # timeout once it got the read lock: here until 1.75 + 2 s instead of 2. A message the
    # client sends a second past the view's deadline, if its wait has not returned by
    # then, is what that old wait, still reading, returned.
    seen: dict[str, Any] = {}
    waiting = threading.Event()  # the view's wait is about to start; its deadline is seen
    returned = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        other = threading.Thread(target=lambda: seen.setdefault("other", ws.wait(1.75)))
        other.start()
        deadline = time.monotonic() + TIMEOUT
        while not ws._reading.locked() and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["deadline"] = time.monotonic() + 2.0
        waiting.set()
        seen["view"] = ws.wait(2.0)
        returned.set()
        other.join(TIMEOUT)

    with Session(view) as session:
        session.expect_101()
        assert waiting.wait(TIMEOUT)
        if not returned.wait(seen["deadline"] + 1.0 - time.monotonic()):
            session.client.sock.sendall(masked(0x1, b"late"))
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert (seen["other"], seen["view"]) == (None, None), seen


class Signals:
    """The ``websocket_opened`` / ``websocket_closed`` one connection got, in order;
    ``while_opened`` runs in ``websocket_opened`` (after dwebsocket's own receivers)."""

    def __init__(self) -> None:
        self.ws: DefaultWebSocket | None = None
        self.events: list[object] = []
        self.while_opened: Callable[[], None] | None = None

    def opened(self, sender: type, websocket: DefaultWebSocket, **kwargs: Any) -> None:
        if websocket is self.ws:
            self.events.append("opened")
            if self.while_opened is not None:
                self.while_opened()
            self.events.append("opened returned")

    def closed(self, sender: type, websocket: DefaultWebSocket, **kwargs: Any) -> None:
        if websocket is self.ws:
            self.events.append(("closed", kwargs["code"]))


@pytest.fixture
def signals() -> Iterator[Signals]:
    recorder = Signals()
    websocket_opened.connect(recorder.opened, dispatch_uid="test_websocket.signals")
    websocket_closed.connect(recorder.closed, dispatch_uid="test_websocket.signals")
    try:
        yield recorder
    finally:
        websocket_opened.disconnect(dispatch_uid="test_websocket.signals")
        websocket_closed.disconnect(dispatch_uid="test_websocket.signals")


def open_gauge() -> float:
    return REGISTRY.get_sample_value("django_websocket_connections_open") or 0.0


class Killed(BaseException):
    """What a greenlet kill or a ``gevent.Timeout`` is to the code it interrupts."""


def replace_sendall(ws: DefaultWebSocket, sendall: Callable[[socket.socket, bytes], None]) -> None:
    """``ws``'s transport keeps its socket, but its writes go through ``sendall(real,
    data)``: what happens around one (a client leaving, a delivery, a kill)."""
    real = ws._transport.sock

    class Wrapped:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def sendall(self, data: bytes) -> None:
            sendall(real, data)

    ws._transport._sock = Wrapped()  # type: ignore[assignment]


def until_shut(ws: DefaultWebSocket) -> None:
    """Wait (bounded) until another thread has shut ``ws`` down."""
    deadline = time.monotonic() + TIMEOUT
    while not ws._io.shut:
        assert time.monotonic() < deadline, "the connection was not shut down"
        time.sleep(0.005)


def test_a_client_gone_before_the_early_messages_gets_no_signal(
    holder: Holder, signals: Signals
) -> None:
    # The 101 is written, the messages delivered before it are not (the client left):
    # accept() raises ConnectionClosed(1006) before the connection counts as accepted,
    # and neither websocket_opened nor websocket_closed is sent (the registry and the
    # open gauge never saw it).
    gauge = open_gauge()
    with Session(holding_view(holder, accept=False)) as session:
        ws = signals.ws = holder.websocket()
        ws.deliver("early")

        def leave_after_the_101(real: socket.socket, data: bytes) -> None:
            real.sendall(data)
            session.client.sock.close()

        replace_sendall(ws, leave_after_the_101)
        with pytest.raises(ConnectionClosed) as info:
            ws.accept()
        assert info.value.code == 1006 and not ws.accepted and ws.is_closed()
        holder.release.set()
        session.finish()
    assert signals.events == []
    assert ws not in registry.open_websockets()
    assert open_gauge() == gauge


def test_websocket_closed_follows_websocket_opened_when_a_flusher_finds_the_client_gone(
    holder: Holder, signals: Signals
) -> None:
    # A group message delivered while accept() writes the 101 is the flusher's to write
    # once accept() lets go of the write lock; the client left right after the 101, so
    # that write fails and shuts the connection down before accept() sends
    # websocket_opened. websocket_closed used to go out then, before websocket_opened:
    # the registry then kept the dead connection and the open gauge stayed one up.
    gauge = open_gauge()
    paused = threading.Event()
    with Session(holding_view(holder, accept=False)) as session:
        ws = signals.ws = holder.websocket()

        def leave_after_the_101(real: socket.socket, data: bytes) -> None:
            real.sendall(data)
            session.client.sock.close()
            late = threading.Thread(target=ws.deliver, args=("late",))
            late.start()
            late.join(TIMEOUT)

        def pause_before_opened(record: logging.LogRecord) -> bool:
            """Holds accept() between publishing the connection and websocket_opened
            (its "WebSocket opened" line) until the flusher has shut it down. A filter
            of the logger, not a handler: it runs without a handler's lock, which the
            flusher's own log line needs."""
            if record.getMessage().startswith("WebSocket opened"):
                paused.set()
                until_shut(ws)
            return True

        replace_sendall(ws, leave_after_the_101)
        logger = logging.getLogger("dwebsocket")
        level = logger.level
        logger.addFilter(pause_before_opened)
        logger.setLevel(logging.DEBUG)
        try:
            ws.accept()
        finally:
            logger.removeFilter(pause_before_opened)
            logger.setLevel(level)
        assert paused.is_set()  # the race under test happened
        assert signals.events == ["opened", "opened returned", ("closed", 1006)]
        assert ws not in registry.open_websockets()
        holder.release.set()
        session.finish()
    assert signals.events == ["opened", "opened returned", ("closed", 1006)]
    assert open_gauge() == gauge


def test_websocket_closed_waits_for_websocket_opened_receivers(
    holder: Holder, signals: Signals
) -> None:
    # A helper thread's send() ran the handshake; while its websocket_opened receivers
    # run (one that queries a database, say), the client leaves and the view's wait()
    # reads EOF. websocket_closed used to go out from the view's thread then, in the
    # middle of websocket_opened: a receiver of both (a registry, a gauge, a group
    # join) saw the close before the open, and kept a dead connection.
    gauge = open_gauge()
    with Session(holding_view(holder, accept=False)) as session:
        ws = signals.ws = holder.websocket()
        signals.while_opened = lambda: until_shut(ws)

        def hello() -> None:
            with contextlib.suppress(ConnectionClosed):
                ws.send("hello")

        helper = threading.Thread(target=hello)
        helper.start()
        session.expect_101()
        session.client.sock.close()
        assert ws.wait(TIMEOUT) is None  # EOF: shut down while websocket_opened runs
        helper.join(TIMEOUT)
        assert not helper.is_alive()
        assert signals.events == ["opened", "opened returned", ("closed", 1006)]
        assert ws not in registry.open_websockets()
        holder.release.set()
        session.finish()
    assert signals.events == ["opened", "opened returned", ("closed", 1006)]
    assert open_gauge() == gauge


def test_an_untouched_view_whose_accept_is_killed_in_websocket_opened_is_ended(
    signals: Signals,
) -> None:
    # A view that returns None untouched gets its connection accepted by the session;
    # a BaseException in a websocket_opened receiver there (a greenlet killed, a worker
    # timeout, while a receiver queries a database) used to leave the session without
    # end_session: websocket_closed never came, the socket stayed open.
    def kill() -> None:
        raise Killed

    signals.while_opened = kill

    @require_websocket
    def view(request: HttpRequest) -> None:
        signals.ws = request.websocket

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == Close(1011, "")
        session.finish()
    assert isinstance(session.error, Killed)
    assert signals.events == ["opened", ("closed", 1011)]


def test_a_kill_while_the_101_is_written_gives_the_connection_back(signals: Signals) -> None:
    # The view is killed halfway through the 101's write (a request timeout, a worker
    # stopping): the connection is neither accepted nor usable, so it is shut down and
    # given back to the server like one whose client left, and no signal is sent.
    # Before, it stayed open and taken over: nothing ended it (the session ends only a
    # connection it counts as taken over), and the client waited.
    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = signals.ws = request.websocket

        def killed_mid_write(real: socket.socket, data: bytes) -> None:
            real.sendall(data[:20])
            raise Killed

        replace_sendall(ws, killed_mid_write)
        ws.accept()

    with Session(view) as session:
        assert read_until_eof(session.client.sock).startswith(b"HTTP/1.1 101")
        session._thread.join(TIMEOUT)
        assert isinstance(session.error, Killed)
        session.close()
    ws = signals.ws
    assert ws is not None and ws.is_closed() and not ws.accepted
    assert signals.events == []


def _fail_after(real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """``real``, then ``error`` raised: a failure once its work is done."""

    def failing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise error

    return failing


@pytest.mark.parametrize("step", ["take_over", "fast_path"])
@pytest.mark.parametrize(
    "error", [OSError(24, "Too many open files"), MemoryError(), Killed()], ids=type
)
def test_a_failure_between_the_takeover_and_the_accept_gives_the_connection_back(
    signals: Signals, step: str, error: BaseException
) -> None:
    # Taking the socket over from the server, or setting up the C fast path, raises (a
    # file descriptor limit, memory, a kill): the connection is neither accepted nor
    # usable, so it is shut down and given back to the server like one whose client
    # left, no signal is sent, and the error goes on. Before, it stayed taken over but
    # neither accepted nor shut: the session ends only such a connection, so nothing
    # ended it, the client waited and the socket leaked.
    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = signals.ws = request.websocket
        transport = ws._transport
        setattr(transport, step, _fail_after(getattr(transport, step), error))
        ws.accept()

    with Session(view) as session:
        data = read_until_eof(session.client.sock)
        assert data.startswith(b"HTTP/1.1 101") == (step == "fast_path")
        session._thread.join(TIMEOUT)
        assert session.error is error
        session.close()
    ws = signals.ws
    assert ws is not None and ws.is_closed() and not ws.accepted and ws.close_code == 1006
    assert ws._transport._nb_fd == -1  # released
    assert signals.events == []
    assert ws not in registry.open_websockets()


@pytest.mark.parametrize("use", ["accept", "send", "wait"])
@pytest.mark.parametrize("answer", ["403", "error"])
def test_a_helper_using_the_connection_after_the_views_answer_is_refused(
    signals: Signals, answer: str, use: str
) -> None:
    # The view answers with HTTP without accepting (a 403, or an error: Django's 500);
    # then another thread's accept(), send() or wait() starts. It raises (wait(): None)
    # and the socket stays the server's: nothing is written on it, the connection never
    # opens. Before, it took the socket over and wrote its 101 after the server's answer,
    # websocket_opened came and nothing ever ended the connection.
    @require_websocket
    def view(request: HttpRequest) -> HttpResponse:
        signals.ws = request.websocket
        if answer == "error":
            raise ValueError("tests: the view fails unaccepted")
        return HttpResponseForbidden("not you\n")

    with Session(view) as session:
        session._thread.join(TIMEOUT)
        if answer == "error":
            assert isinstance(session.error, ValueError)
        else:
            assert session.response.status_code == 403
        ws = signals.ws
        assert ws is not None
        outcome: list[object] = []

        def helper() -> None:
            try:
                if use == "wait":
                    outcome.append(ws.wait(TIMEOUT))
                else:
                    ws.accept() if use == "accept" else ws.send("hello")
                    outcome.append("returned")
            except ConnectionClosed as exc:
                outcome.append((exc.code, exc.reason))

        thread = threading.Thread(target=helper)
        thread.start()
        thread.join(TIMEOUT)
        refused = (1006, "the view answered with HTTP")
        assert outcome == [None if use == "wait" else refused]
        session.server_sock.shutdown(socket.SHUT_WR)  # as the server ends the connection
        assert read_until_eof(session.client.sock) == b""
    assert ws.is_closed() and not ws.accepted
    assert (ws.close_code, ws.close_reason) == refused
    assert not ws._transport.taken_over
    assert signals.events == []
    assert ws not in registry.open_websockets()


def test_an_accepted_connection_keeps_no_instance_dict(holder: Holder) -> None:
    """Its state is in slots: past the 30 keys CPython 3.11's key-sharing dicts hold, an
    instance dict was 1.5 KiB of every idle connection (bench/FINDINGS.md, section 23)."""
    with Session(holding_view(holder)) as session:
        ws = holder.websocket()
        session.expect_101()
        ws.send("hi")
        assert session.client.recv() == "hi"
        assert vars(ws) == {}
        holder.release.set()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_an_idle_connection_keeps_no_message_queue(holder: Holder) -> None:
    """Messages that arrive together are queued for the view, and the queue is dropped
    once the view has taken them and waits again: an empty deque is a 64-slot block,
    0.74 KiB of every idle connection (bench/FINDINGS.md, section 23)."""

    @require_websocket
    def view(request: HttpRequest) -> None:
        holder.ws = request.websocket
        holder.ready.set()
        for message in request.websocket:
            request.websocket.send(message)

    def queues(ws: DefaultWebSocket) -> list[Any]:
        held = [*gc.get_referents(ws), *gc.get_referents(ws._io)]
        return [obj for obj in held if isinstance(obj, collections.deque)]

    with Session(view) as session:
        ws = holder.websocket()
        session.expect_101()
        session.client.sock.sendall(masked(0x1, b"one") + masked(0x1, b"two"))
        assert session.client.recv() == "one"
        assert session.client.recv() == "two"
        # The view goes back to wait() after its send: a bounded poll for it.
        deadline = time.monotonic() + TIMEOUT
        while queues(ws) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert queues(ws) == []
        session.client.sock.sendall(masked(0x8, b"\x03\xe8"))
        assert session.client.recv() == Close(1000, "")
        session.finish()


@contextlib.contextmanager
def compressing(holder: Holder) -> Iterator[tuple[Session, DefaultWebSocket]]:
    """A session with permessage-deflate, its client decoding, after a first message (the
    context the next ones refer to); the view is let go and the session finished after."""
    headers = {"Sec-WebSocket-Extensions": PerMessageDeflate.client_offer()}
    with Session(holding_view(holder), headers=headers) as session:
        ws = holder.websocket()
        response = session.expect_101()
        session.client.conn = Connection(
            client=True,
            deflate=PerMessageDeflate.from_response(response["sec-websocket-extensions"]),
        )
        ws.send("a first message for context!")
        assert session.client.recv() == "a first message for context!"
        assert ws._conn is not None and ws._conn.deflate is not None
        yield session, ws
        holder.release.set()
        session.finish()


def assert_failed_1011(session: Session, ws: DefaultWebSocket) -> None:
    """The connection was failed for a lost compression: its 1011 close frame came, and
    the view's next send raises."""
    assert session.client.recv() == Close(1011, "compression failed")
    with pytest.raises(ConnectionClosed) as closed:
        ws.send("hello, this is the lost one!")
    assert closed.value.code == 1011


@pytest.mark.parametrize("how", ["send", "deliver_batch"])
def test_a_compression_that_fails_part_way_closes_1011(holder: Holder, how: str) -> None:
    """A compression that raises part way (MemoryError) leaves a context the client
    cannot follow: the core fails the connection, and its 1011 close frame goes out at
    once, then nothing else; the error reaches the caller (a group drops the member)."""
    with compressing(holder) as (session, ws):
        ws._conn.deflate.encoder = LosingEncoder(ws._conn.deflate.encoder)
        ws._fast = None  # under gevent, the C fast path compresses on the C stream itself
        with pytest.raises(MemoryError):
            if how == "send":
                ws.send("hello, this is the lost one")
            else:
                ws.deliver_batch(Batch(["hello, this is the lost one", "and another"]))
        assert_failed_1011(session, ws)


def lose(encoder: Any) -> None:
    """Make ``encoder``'s compressions fail until one fails part way and the stream is
    lost (a ``zlib.error`` until reset), as when memory runs out (CPython's _testcapi)."""
    if importlib.util.find_spec("_testcapi") is None:
        missing("CPython's _testcapi module (part of a full CPython build)")
    import _testcapi  # type: ignore[import-not-found]

    big = random.Random(7).randbytes(100_000)  # incompressible: more than one block
    for n in range(200):
        _testcapi.set_nomemory(n, n + 1)
        try:
            encoder.compress(big)
        except MemoryError:
            pass
        finally:
            _testcapi.remove_mem_hooks()
        try:
            encoder.flush(zlib.Z_NO_FLUSH)  # refused by a lost stream, else nothing
        except zlib.error:
            return
    raise AssertionError("no failed allocation lost the stream")


def test_a_lost_compressor_closes_1011_on_the_next_send(holder: Holder) -> None:
    """A stream that a compression failing part way left lost refuses; the send that
    finds it so (under gevent, the C fast path's first: it hands over to send()) fails
    the connection with 1011 instead of sending bytes the client would decode wrongly."""
    with compressing(holder) as (session, ws):
        lose(ws._conn.deflate.encoder)
        with pytest.raises(zlib.error):
            ws.send("a first message for context! again")
        assert_failed_1011(session, ws)


class _FailingQueue(collections.deque):  # type: ignore[type-arg]
    """A queue of received messages whose first ``append()`` fails as a deque's does when
    it cannot allocate its next block of slots."""

    failed = False

    def append(self, item: Any) -> None:
        if not self.failed:
            self.failed = True
            raise MemoryError
        super().append(item)


def test_a_failure_that_lost_received_bytes_fails_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read took two messages and the start of a third off the socket, then queueing
    them ran out of memory: they are lost, so the connection is failed (1011), in the C
    receive loop as in the Python one. The wait raises the MemoryError, the next returns
    None; nothing is read on from the middle of the third frame (the C loop dropped it
    and read its end as a frame of its own; the Python one lost two messages and went
    on)."""
    from dwebsocket.backends.default import transport

    seen: dict[str, Any] = {}
    third = masked(0x1, b"three")

    def release_idle() -> None:
        # Called by both receive loops just before they block: the failing queue is in
        # place for the read that follows (an empty queue is dropped before it).
        ws = seen.get("ws")
        if ws is not None and "injected" not in seen:
            seen["injected"] = True
            ws._io.messages = _FailingQueue()

    monkeypatch.setattr(transport, "release_idle_connections", release_idle)

    def prepare(ws: DefaultWebSocket) -> None:
        seen["ws"] = ws  # accepted: the C path takes release_idle_connections then

    outcome = lose_a_read(prepare, masked(0x1, b"one") + masked(0x2, b"two"), third)
    assert seen["injected"] is True
    assert outcome == ("MemoryError", None, 1011)


def lose_a_read(
    prepare: Callable[[DefaultWebSocket], None], whole: bytes, frame: bytes
) -> tuple[Any, Any, Any]:
    """A view accepts, calls ``prepare(ws)`` (which sets up a failure for the next read)
    and waits; the client sends ``whole`` and the first 4 bytes of ``frame`` at once, then
    the rest of ``frame`` once the wait is over, and must get a 1011 close. Returns what
    the view's wait gave (``"MemoryError"`` if it raised), the next wait's, and the
    connection's close code."""
    seen: dict[str, Any] = {}
    raised = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        prepare(ws)
        try:
            seen["first"] = ws.wait(TIMEOUT)
        except MemoryError:
            seen["first"] = "MemoryError"
        finally:
            raised.set()
        seen["after"] = ws.wait(TIMEOUT)
        seen["code"] = ws.close_code

    with Session(view) as session:
        session.expect_101()
        session.client.sock.sendall(whole + frame[:4])
        assert raised.wait(TIMEOUT)
        with contextlib.suppress(OSError):  # the connection may be shut down already
            session.client.sock.sendall(frame[4:])
        closing = session.client.recv()
        assert isinstance(closing, Close) and closing.code == 1011, closing
        session.finish()
    return seen["first"], seen["after"], seen["code"]


class _FailingCount:
    """A transport's ``IOState`` (``Transport.io``) whose next ``bytes_in`` update, once
    armed, fails as the new int's allocation does when memory runs out."""

    def __init__(self, io: Any) -> None:
        object.__setattr__(self, "_io", io)
        object.__setattr__(self, "armed", False)

    def arm(self) -> None:
        object.__setattr__(self, "armed", True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._io, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bytes_in" and self.armed:
            object.__setattr__(self, "armed", False)
            raise MemoryError
        setattr(self._io, name, value)


@pytest.mark.parametrize("where", ["count", "shrink"])
def test_a_read_that_fails_after_taking_bytes_fails_the_connection(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``Transport.recv()`` took a message and the start of another off the socket, then
    failed (a ``MemoryError``): counting them in ``bytes_in`` (``count``), or in
    ``os.read()`` itself, whose shrink of its 64 KiB buffer to what was read may fail
    (``shrink``). The bytes are gone: the connection is failed (1011), as for bytes lost
    on their way to the view (``_lost_received``); the wait raises the MemoryError and
    the next returns None. It used to read on from the middle of the second frame.
    The Python path's reads (the C fast path's read counts into a C integer, and what
    fails after it is ``lost_read()``'s, tested above)."""
    from dwebsocket.backends.default import transport

    armed = {"read": False}
    real_read = transport._read

    def read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        if armed["read"] and data:
            armed["read"] = False
            raise MemoryError
        return data

    monkeypatch.setattr(transport, "_read", read)

    def prepare(ws: DefaultWebSocket) -> None:
        ws._fast = None  # the Python path's read (under gevent, the C one reads itself)
        if where == "count":
            counting = ws._transport.io = _FailingCount(ws._transport.io)
            counting.arm()
        else:
            armed["read"] = True

    outcome = lose_a_read(prepare, masked(0x1, b"one"), masked(0x1, b"two"))
    assert outcome == ("MemoryError", None, 1011)


def test_an_iterator_that_raised_is_finished() -> None:
    """``iter(request.websocket)`` behaves as ``WebSocket.__iter__``, a generator, with the
    C fast path as without it: once an exception came out of it (a ``gevent.Timeout``
    thrown into the waiting greenlet, a kill), it is finished and yields nothing more;
    a new iteration reads on. (The C iterator went on reading.)"""
    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        messages = iter(ws)
        seen["first"] = next(messages)
        received = ws._received

        def interrupted(data: bytes) -> None:
            # The ping is answered, then the wait is interrupted: nothing read is lost.
            del ws._received
            received(data)
            raise Killed

        ws._received = interrupted  # type: ignore[method-assign]
        ws.send("ping me")  # the ping comes in a read of its own
        try:
            next(messages)
        except Killed:
            seen["raised"] = True
        seen["after"] = list(messages)
        seen["again"] = next(iter(ws))

    with Session(view) as session:
        session.expect_101()
        session.client.send("one")
        assert session.client.recv() == "ping me"
        session.client.sock.sendall(masked(0x9, b"there?"))
        assert session.client.next_event() == Pong(b"there?")
        session.client.send("two")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {"first": "one", "raised": True, "after": [], "again": "two"}


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


@pytest.mark.skipif(not _gevent_patched(), reason="needs gevent's monkey-patching")
def test_an_iteration_a_gevent_timeout_ended_is_finished() -> None:
    """``for message in messages`` inside a ``gevent.Timeout``: the timeout ends that
    iterator for good, as it ends a generator; ``for message in request.websocket`` again
    (a new iterator) reads on."""
    import gevent

    seen: dict[str, Any] = {}

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        messages = iter(ws)
        seen["first"] = next(messages)
        got = seen["got"] = []
        try:
            with gevent.Timeout(0.1):  # the client sends nothing more until it is over
                for message in messages:
                    got.append(message)
        except gevent.Timeout:
            seen["timed out"] = True
        ws.send("timed out")
        seen["after"] = list(messages)
        for message in ws:
            seen["again"] = message
            break

    with Session(view) as session:
        session.expect_101()
        session.client.send("one")
        assert session.client.recv() == "timed out"
        session.client.send("two")
        assert session.client.recv() == Close(1000, "")
        session.finish()
    assert seen == {"first": "one", "got": [], "timed out": True, "after": [], "again": "two"}
