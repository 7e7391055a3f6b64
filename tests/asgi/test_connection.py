"""``ASGIConnection``'s waits for messages, driven in-process on an asyncio loop.

``test_asgi.py`` checks on real servers that an async view's tasks may wait at the same
time (each gets a message, the close ends every wait). What no server can be made to do on
demand is the interleaving below: a message wakes one waiter, whose task is cancelled
before it runs. So the connection is driven here through ASGI's ``receive``/``send``
callables of an in-memory queue, and its loop-side entry point is called directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from django.test import RequestFactory

from dwebsocket.backends.asgi import connection as asgi_connection
from dwebsocket.backends.asgi import websocket as asgi_websocket
from dwebsocket.backends.asgi.connection import BACKLOG_MESSAGES, ASGIConnection
from dwebsocket.backends.asgi.websocket import ASGIWebSocket, AsyncWebSocket
from dwebsocket.exceptions import ConnectionClosed
from dwebsocket.websocket import REFUSED_REASON

TIMEOUT = 5.0


class Connection(ASGIConnection):
    """An ``ASGIConnection`` that keeps what it sent (its ``send`` callable's events)."""

    __slots__ = ("sent",)


def plain_connection(receive: Any, send: Any, path: str = "/") -> ASGIConnection:
    """A connection to ``path`` over the server's ``receive`` and ``send``, no size limit."""
    return ASGIConnection(
        {"type": "websocket", "path": path},
        receive,
        send,
        max_message_size=None,
        close_timeout=TIMEOUT,
        queue_limit=1 << 20,
    )


async def opened(
    *,
    close_timeout: float = TIMEOUT,
    queue_limit: int = 1 << 20,
    accept: bool = True,
    stuck_on: str | None = None,
    slow: bool = False,
    refused: str | None = None,
) -> tuple[Connection, asyncio.Queue[Mapping[str, Any]]]:
    """A connection whose ``receive()`` reads ``inbox``; ``stuck_on``: a text message (or
    ``"websocket.close"``: that event) the server's ``send()`` never returns from (a
    client that stopped reading); ``slow``: its
    ``send()`` lets the loop run other tasks before it returns, as a server's may;
    ``refused``: a text message the server's ``send()`` raises for (the peer is gone)."""
    inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
    sent: list[Mapping[str, Any]] = []

    async def send(event: Mapping[str, Any]) -> None:
        if event.get("text") is not None:
            event["text"].encode()  # as a server frames it: UnicodeEncodeError, a lone surrogate
        if stuck_on is not None and stuck_on in (event.get("text"), event["type"]):
            await asyncio.Event().wait()
        if refused is not None and event.get("text") == refused:
            raise OSError("the peer is gone")
        if slow:
            await asyncio.sleep(0)
        sent.append(event)

    connection = Connection(
        {"type": "websocket", "path": "/"},
        inbox.get,
        send,
        max_message_size=None,
        close_timeout=close_timeout,
        queue_limit=queue_limit,
    )
    connection.sent = sent
    if accept:
        await connection.accept()
    return connection, inbox


def test_a_cancelled_waiter_passes_its_message_on() -> None:
    async def scenario() -> tuple[str | bytes | None, bool]:
        connection, inbox = await opened()
        first = asyncio.ensure_future(connection.wait_async(None))
        second = asyncio.ensure_future(connection.wait_async(None))
        await asyncio.sleep(0)  # both wait
        connection._received("one")  # wakes the oldest: first
        first.cancel()  # before its task ran
        got = await asyncio.wait_for(second, TIMEOUT)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return got, first.cancelled()

    assert asyncio.run(scenario()) == ("one", True)


def test_waiters_are_served_oldest_first_and_all_woken_by_the_close() -> None:
    async def scenario() -> list[str | bytes | None]:
        connection, inbox = await opened()
        waiters = [asyncio.ensure_future(connection.wait_async(None)) for _ in range(3)]
        await asyncio.sleep(0)
        connection._received("one")
        assert await asyncio.wait_for(waiters[0], TIMEOUT) == "one"
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        rest = await asyncio.wait_for(asyncio.gather(*waiters[1:]), TIMEOUT)
        await connection.finish()
        return rest

    assert asyncio.run(scenario()) == [None, None]


def test_two_accepts_at_once_send_one() -> None:
    """Two first uses at once (a task sends while another waits): one ``websocket.accept``
    reaches the server, and only its caller says it sent it (it alone signals
    ``websocket_opened``); ``test_asgi.py`` checks the same on real servers."""

    async def scenario() -> tuple[list[bool], list[str]]:
        connection, inbox = await opened(accept=False, slow=True)
        results = await asyncio.gather(connection.accept(), connection.accept())
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return list(results), [e["type"] for e in connection.sent]

    results, sent = asyncio.run(scenario())
    assert sorted(results) == [False, True]
    assert sent.count("websocket.accept") == 1, sent


# -- closing --------------------------------------------------------------------------------


def test_a_close_reads_on_past_a_full_backlog_to_the_disconnect() -> None:
    """The view closes without reading a full backlog: the pump, parked until the view
    makes room, reads on (discarding) to the server's ``websocket.disconnect``; the close
    does not sit out its timeout (30 s here: the bound below is a third of it)."""

    async def scenario() -> tuple[int | None, str]:
        connection, inbox = await opened(close_timeout=30.0)
        for n in range(BACKLOG_MESSAGES + 10):
            inbox.put_nowait({"type": "websocket.receive", "text": str(n)})
        while connection.count_messages() < BACKLOG_MESSAGES:
            await asyncio.sleep(0.01)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(connection.close(1000), 10.0)
        await connection.finish()
        return connection.close_code, connection.state

    assert asyncio.run(scenario()) == (1000, "closed")


def test_an_outbox_that_overflows_before_the_accept_closes_with_1008_after_it() -> None:
    async def scenario() -> list[Mapping[str, Any]]:
        connection, inbox = await opened(queue_limit=8, accept=False)
        connection.deliver("12345")
        connection.deliver("67890")  # 10 bytes queued: over the limit
        connection.deliver("later")  # dropped too: the member is being closed
        assert await connection.accept() is True
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1008})
        await connection.finish()
        return connection.sent

    sent = asyncio.run(scenario())
    assert [e["type"] for e in sent] == ["websocket.accept", "websocket.close"], sent
    assert sent[1]["code"] == 1008


def test_the_outbox_counts_text_in_bytes_of_utf_8() -> None:
    """``WEBSOCKET_SEND_QUEUE_SIZE`` is bytes, as the default backend counts them: 40
    two-byte characters are 80 bytes over a limit of 64 (they were counted as 40
    characters, so text of wider characters queued up to four times the limit)."""

    async def scenario() -> list[Mapping[str, Any]]:
        connection, inbox = await opened(queue_limit=64, accept=False)
        connection.deliver("é" * 40)
        assert await connection.accept() is True
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1008})
        await connection.finish()
        return connection.sent

    sent = asyncio.run(scenario())
    assert [(e["type"], e.get("code")) for e in sent] == [
        ("websocket.accept", None),
        ("websocket.close", 1008),
    ], sent


def test_traffic_counts_text_in_bytes_of_utf_8_both_ways() -> None:
    """``dwebsocket.metrics``' sent and received bytes: text as UTF-8 both ways (the
    sent side counted characters)."""

    async def scenario() -> tuple[int, int]:
        connection, inbox = await opened()
        await connection.send_message("é" * 10)
        inbox.put_nowait({"type": "websocket.receive", "text": "é" * 10})
        assert await connection.wait_async(TIMEOUT) == "é" * 10
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return connection.bytes_out, connection.bytes_in

    assert asyncio.run(scenario()) == (20, 20)


def test_a_text_utf_8_cannot_encode_raises_and_the_connection_stays_open() -> None:
    """As the default backend's ``send()``: ``UnicodeEncodeError`` at once, nothing sent,
    the connection open. The server encodes ASGI's text, and its error (every ASGI
    server's) was taken for a client gone: the send waited out the close timeout for a
    ``websocket.disconnect`` that never came, then raised ``ConnectionClosed(1006)``,
    the session over for a client still there."""

    async def scenario() -> None:
        connection, _ = await opened(close_timeout=0.2)
        with pytest.raises(UnicodeEncodeError):
            await connection.send_message("lone \ud800")
        assert not connection.is_closed()
        await connection.send_message("fine")
        assert connection.sent[-1] == {"type": "websocket.send", "text": "fine"}
        assert (connection.messages_out, connection.bytes_out) == (1, 4)

    asyncio.run(scenario())


def test_a_cancelled_async_view_closes_with_its_code_not_1000() -> None:
    """``end_session(abort=True)`` (the view's task was cancelled) then the scope's
    ``finish()``, as ``dwebsocket.asgi`` runs them: the close sent is the abort's."""

    async def scenario() -> list[Mapping[str, Any]]:
        connection, inbox = await opened()
        ws = AsyncWebSocket(ASGIWebSocket(RequestFactory().get("/"), connection))
        await ws.end_session(1001, abort=True)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
        await connection.finish()
        return connection.sent

    closes = [e for e in asyncio.run(scenario()) if e["type"] == "websocket.close"]
    assert closes == [{"type": "websocket.close", "code": 1001}]


def test_finish_leaves_no_close_task_running() -> None:
    """A close the pump begins (a message over the limit: 1009) whose websocket.close the
    server does not take (the client stopped reading): finish() gives up on it after the
    close timeout and returns with no task of the connection left. The close task ran on
    for IO_TIMEOUT (60 s) after the session had finished, holding the send lock, and sent
    its event to a scope the application had left."""

    async def scenario() -> tuple[list[str], int | None, str]:
        connection, _inbox = await opened(stuck_on="websocket.close", close_timeout=0.2)
        connection.max_message_size = 4
        connection._received("too long")
        await asyncio.wait_for(connection.finish(), TIMEOUT)
        left = [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return left, connection.close_code, connection.state

    assert asyncio.run(scenario()) == ([], 1009, "closed")


def test_a_close_sends_what_was_queued_first_even_a_message_the_flusher_held() -> None:
    """Group messages delivered while the view's send was with the server: the flusher
    took the first and waited for the send lock, then the view closed. Both go out, in
    order, before the close, as the default backend's outbox writes them before its
    close frame. The close used to drop them (CLOSING stopped the flusher, which lost
    the one it held, and nothing sent the rest)."""

    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        sent: list[Any] = []

        async def send(event: Mapping[str, Any]) -> None:
            if event.get("text") == "view":
                await gate.wait()  # the client reads slowly
            sent.append(event.get("text") or event.get("code"))

        connection = plain_connection(inbox.get, send)
        await connection.accept()
        view = asyncio.ensure_future(connection.send_message("view"))
        await asyncio.sleep(0)  # the view's send holds the lock
        connection.deliver("g1")
        connection.deliver("g2")
        for _ in range(3):
            await asyncio.sleep(0)  # the flusher took g1 and waits for the lock
        closing = asyncio.ensure_future(connection.close(4000))
        for _ in range(3):
            await asyncio.sleep(0)  # CLOSING; the close waits for the lock too
        gate.set()
        await asyncio.wait_for(view, TIMEOUT)
        while 4000 not in sent:
            await asyncio.sleep(0.01)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 4000})
        await asyncio.wait_for(closing, TIMEOUT)
        await connection.finish()
        return sent[1:]  # after websocket.accept's None

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == ["view", "g1", "g2", 4000]


def test_a_view_send_cancelled_while_it_sends_a_group_message_loses_none() -> None:
    """A group message delivered just before the view's own send, which took the send
    lock first and so sends that message before its own; the view's send is then
    cancelled (its ``asyncio.wait_for``, an ``asyncio.timeout``, a ``TaskGroup`` ending)
    while the server has not taken the group message yet (the client reads slowly). The
    group message is the connection's, not the view's: it goes out, and so does what the
    group sends next, in order; the view's own message does not. The cancellation lost
    it: the connection went on without it, the client never knowing of the gap."""

    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        sent: list[Any] = []

        async def send(event: Mapping[str, Any]) -> None:
            if event.get("text") == "g1":
                await gate.wait()  # the client reads slowly
            if event["type"] == "websocket.send":
                sent.append(event["text"])

        connection = plain_connection(inbox.get, send)
        await connection.accept()

        async def view() -> None:
            connection.deliver("g1")  # the flusher is to run after this task's step
            await connection.send_message("own")

        task = asyncio.ensure_future(view())
        for _ in range(3):
            await asyncio.sleep(0)  # the view's send holds the lock, sending g1
        connection.deliver("g2")
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        await connection.send_message("later")
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return sent

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == ["g1", "g2", "later"]


def test_a_view_send_cancelled_while_a_group_message_is_never_taken_ends_the_connection() -> None:
    """:func:`test_a_view_send_cancelled_while_it_sends_a_group_message_loses_none`, with
    a client that reads nothing: the cancellation waits for the group message no longer
    than the close timeout, and then the connection is over (1006), so that no message
    is missing from a connection that goes on."""

    async def scenario() -> ASGIConnection:
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()

        async def send(event: Mapping[str, Any]) -> None:
            if event.get("text") == "g1":
                await asyncio.Event().wait()  # never taken

        connection = ASGIConnection(
            {"type": "websocket", "path": "/"},
            inbox.get,
            send,
            max_message_size=None,
            close_timeout=0.1,
            queue_limit=1 << 20,
        )
        await connection.accept()

        async def view() -> None:
            connection.deliver("g1")
            await connection.send_message("own")

        task = asyncio.ensure_future(view())
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        assert connection.is_closed() and connection.close_code == 1006
        with pytest.raises(ConnectionClosed):
            await connection.send_message("later")
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
        await connection.finish()
        return connection

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_close_whose_caller_is_cancelled_while_the_server_takes_it_still_goes_out() -> None:
    """A view's ``await ws.close(4000, "bye")`` cancelled while the server takes the
    ``websocket.close`` (an ``asyncio.timeout`` around it, a ``TaskGroup`` whose other
    task failed, a client reading slowly): the close is the connection's end, not the
    caller's, so it still goes out. It was cancelled with the caller: dwebsocket took the
    connection for closed with 4000 (``websocket_closed`` said so), while the client never
    got a close frame and saw the TCP connection end (1006), after the close timeout."""

    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        sent: list[Any] = []

        async def send(event: Mapping[str, Any]) -> None:
            if event["type"] == "websocket.close":
                await gate.wait()  # the client reads slowly
                inbox.put_nowait({"type": "websocket.disconnect", "code": event["code"]})
            sent.append((event["type"], event.get("code")))

        connection = plain_connection(inbox.get, send)
        connection.close_timeout = TIMEOUT / 10
        await connection.accept()
        closing = asyncio.ensure_future(connection.close(4000, "bye"))
        for _ in range(3):
            await asyncio.sleep(0)  # the close is with the server
        closing.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, TIMEOUT)
        await connection.finish()
        assert connection.close_code == 4000
        return sent[1:]  # after websocket.accept

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == [("websocket.close", 4000)]


# -- the sync request.websocket -----------------------------------------------------------


def test_a_sync_send_the_server_does_not_take_in_time_ends_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client stopped reading, so the server's ``send()`` does not return: after
    ``IO_TIMEOUT`` the send raises ``ConnectionClosed(1006)``, and the connection says
    so too (a later send raises instead of going through after a lost message)."""
    monkeypatch.setattr(asgi_websocket, "IO_TIMEOUT", 0.2)

    async def scenario() -> tuple[object, ...]:
        connection, _inbox = await opened(stuck_on="first")
        ws = ASGIWebSocket(RequestFactory().get("/"), connection)

        def view() -> tuple[object, ...]:
            with pytest.raises(ConnectionClosed) as first:
                ws.send("first")
            with pytest.raises(ConnectionClosed):
                ws.send("second")
            return first.value.code, ws.is_closed(), ws.close_code

        seen = await asyncio.to_thread(view)
        await connection.finish()
        return (*seen, [e.get("text") for e in connection.sent[1:]])

    assert asyncio.run(scenario()) == (1006, True, 1006, [])


def test_an_async_send_the_server_does_not_take_in_time_ends_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for an ``async def`` view's ``await ws.send()``, which waited for the
    server as long as it took (forever, behind a client that stopped reading, where the
    server pings nobody): ``ConnectionClosed(1006)`` after ``IO_TIMEOUT``."""
    monkeypatch.setattr(asgi_connection, "IO_TIMEOUT", 0.2, raising=False)

    async def scenario() -> tuple[object, ...]:
        connection, _inbox = await opened(stuck_on="first")
        ws = AsyncWebSocket(ASGIWebSocket(RequestFactory().get("/"), connection))
        with pytest.raises(ConnectionClosed) as first:
            await asyncio.wait_for(ws.send("first"), TIMEOUT)
        with pytest.raises(ConnectionClosed):
            await ws.send("second")
        await connection.finish()
        texts = [e.get("text") for e in connection.sent[1:]]
        return first.value.code, ws.is_closed(), ws.close_code, texts

    assert asyncio.run(scenario()) == (1006, True, 1006, [])


def test_a_send_under_way_when_the_server_says_disconnect_ends_with_its_code() -> None:
    """The server's ``send()`` does not return (the client stopped reading) when the server
    reports the connection over (``websocket.disconnect``: uvicorn stopping says 1012).
    The view's ``await ws.send()`` raises ``ConnectionClosed`` with that code. It waited
    on: the disconnect stopped the watchdog, so nothing ended the send, and uvicorn,
    waiting for the session before it exits, never did (it hung until killed)."""

    async def scenario() -> tuple[object, ...]:
        connection, inbox = await opened(stuck_on="first")
        ws = AsyncWebSocket(ASGIWebSocket(RequestFactory().get("/"), connection))
        send = asyncio.ensure_future(ws.send("first"))
        await asyncio.sleep(0.05)  # the send is with the server
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
        raised: object = None
        try:
            await asyncio.wait_for(send, TIMEOUT)
        except BaseException as exc:  # what it raises is the point
            raised = (type(exc).__name__, getattr(exc, "code", None))
        await connection.finish()
        return raised, ws.close_code

    assert asyncio.run(scenario()) == (("ConnectionClosed", 1012), 1012)


def test_a_sync_send_under_way_when_the_server_says_disconnect_ends_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for a sync view's ``send()``, which waited out ``IO_TIMEOUT`` (a minute)."""
    monkeypatch.setattr(asgi_websocket, "IO_TIMEOUT", 3 * TIMEOUT)

    async def scenario() -> tuple[object, ...]:
        connection, inbox = await opened(stuck_on="first")
        ws = ASGIWebSocket(RequestFactory().get("/"), connection)
        loop = asyncio.get_running_loop()

        def view() -> object:
            try:
                ws.send("first")
            except ConnectionClosed as exc:
                return exc.code
            return "sent"

        send = loop.run_in_executor(None, view)
        await asyncio.sleep(0.05)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
        code = await asyncio.wait_for(send, TIMEOUT)
        await connection.finish()
        return code, ws.close_code

    assert asyncio.run(scenario()) == (1012, 1012)


def test_a_close_with_the_server_when_it_says_disconnect_returns_at_once() -> None:
    """The view closes (4000) and the server's ``send()`` does not take the
    ``websocket.close`` (the client stopped reading); then the server reports the
    connection over (the client left, or uvicorn stops: 1012). ``await ws.close()``
    returns then, not after ``IO_TIMEOUT`` (a minute) waiting for a send to a connection
    that is over, holding the session and its slot."""

    async def scenario() -> tuple[object, ...]:
        connection, inbox = await opened(stuck_on="websocket.close", close_timeout=3 * TIMEOUT)
        ws = AsyncWebSocket(ASGIWebSocket(RequestFactory().get("/"), connection))
        close = asyncio.ensure_future(ws.close(4000, "bye"))
        await asyncio.sleep(0.05)  # the close is with the server
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
        await asyncio.wait_for(close, TIMEOUT)
        await asyncio.wait_for(connection.finish(), TIMEOUT)
        left = [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return ws.close_code, connection.state, left

    assert asyncio.run(scenario()) == (4000, "closed", [])


def test_a_refused_send_waiting_for_the_disconnect_is_not_cancelled_by_the_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server refuses a send (the peer is gone) and sends no ``websocket.disconnect``
    within the close timeout, which is longer than ``IO_TIMEOUT``: the send raises
    ``ConnectionClosed(1006)``. The watchdog took that wait for a send the server had
    not taken and cancelled it: the view's ``await ws.send()`` raised ``CancelledError``,
    as if the view itself were cancelled."""
    monkeypatch.setattr(asgi_connection, "IO_TIMEOUT", 0.2, raising=False)

    async def scenario() -> tuple[object, ...]:
        connection, _inbox = await opened(refused="gone", close_timeout=1.0)
        ws = AsyncWebSocket(ASGIWebSocket(RequestFactory().get("/"), connection))
        raised: object = None
        code = None
        try:
            await asyncio.wait_for(ws.send("gone"), TIMEOUT)
        except BaseException as exc:  # what it raises is the point
            raised, code = type(exc).__name__, getattr(exc, "code", None)
        await connection.finish()
        return raised, code, ws.close_code

    assert asyncio.run(scenario()) == ("ConnectionClosed", 1006, 1006)


def test_the_sync_wait_refuses_to_block_the_event_loop() -> None:
    async def scenario() -> None:
        connection, inbox = await opened()
        ws = ASGIWebSocket(RequestFactory().get("/"), connection)
        with pytest.raises(RuntimeError, match="event loop"):
            ws.wait(0.5)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()

    asyncio.run(scenario())


def test_the_session_refuses_in_one_step_against_an_accept() -> None:
    # refuse_session(), on the loop: an accept whose websocket.accept is with the server
    # makes it False (the session ends the connection: no HTTP answer after an accept);
    # once refused, an accept raises ConnectionClosed(1006) and sends nothing, and the
    # scope owes the server the answer until refuse() sent it.
    async def scenario() -> tuple[Any, ...]:
        accepting, inbox = await opened(accept=False, slow=True)
        task = asyncio.ensure_future(accepting.accept())
        await asyncio.sleep(0)  # its websocket.accept is with the server
        in_flight = accepting.refuse_session()
        await task
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await accepting.finish()
        refused, _ = await opened(accept=False)
        first = refused.refuse_session()
        with pytest.raises(ConnectionClosed) as raised:
            await refused.accept()
        due = refused.answer_due
        await refused.refuse(403, [], b"no")
        return (
            in_flight,
            first,
            refused.refuse_session(),
            raised.value,
            due,
            refused.answer_due,
            [event["type"] for event in refused.sent],
        )

    in_flight, first, again, error, due, after, sent = asyncio.run(scenario())
    assert in_flight is False
    assert first is True and again is True
    assert (error.code, error.reason) == (1006, REFUSED_REASON)
    assert due is True and after is False
    assert sent == ["websocket.close"]  # the server answers it with 403 (no extension)


# -- logging --------------------------------------------------------------------------------

#: A log line of the client's choosing, in a path: the server decodes ``%0A`` to a newline.
FORGED = "INFO forged line"


def test_a_failing_server_call_logs_the_path_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """The server's ``send()`` fails for the accept and for a refusal, its ``receive()``
    fails for the pump: each is logged at DEBUG with the scope's path, which is the
    client's (decoded: ``%0A`` is a newline), so escaped as every other log line has it."""
    path = "/x\n" + FORGED

    async def failing(*event: Any) -> Any:
        raise OSError("the server failed")

    def connection(send: Any, receive: Any = failing) -> ASGIConnection:
        return plain_connection(receive, send, path)

    async def scenario() -> None:
        with pytest.raises(ConnectionClosed):
            await connection(failing).accept()  # websocket.accept failed
        await connection(failing).refuse(403, [], b"no")  # Refusing ... failed

        async def accepted(event: Mapping[str, Any]) -> None:
            pass

        pumped = connection(accepted)
        await pumped.accept()
        assert pumped._pump is not None
        await asyncio.wait_for(pumped._pump, TIMEOUT)  # receive() failed
        await pumped.finish()

    with caplog.at_level(logging.DEBUG, logger="dwebsocket"):
        asyncio.run(scenario())
    logged = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(logged) == 3, caplog.text
    assert not [line for line in logged if "\n" in line], logged


def test_a_view_cancelled_while_its_accept_is_with_the_server_goes_away_with_1001() -> None:
    """The server cancels an async view's task (it is stopping) while the view's
    ``await ws.accept()`` waits for the server to take the ``websocket.accept`` (uvicorn's
    waits for its handshake to complete): the server has the accept, so the session
    closes with 1001 as for any open connection. It refused it instead, sent nothing
    more, and the server ended the connection its own way (1000 or 1006)."""
    from dwebsocket.backends.asgi.session import SCOPE_KEY, arun_view

    async def scenario() -> list[Mapping[str, Any]]:
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        sent: list[Mapping[str, Any]] = []
        taking = asyncio.Event()

        async def send(event: Mapping[str, Any]) -> None:
            sent.append(event)
            if event["type"] == "websocket.accept":
                taking.set()
                await asyncio.Event().wait()  # the handshake completes after the cancel

        connection = plain_connection(inbox.get, send)
        request = RequestFactory().get("/", HTTP_UPGRADE="websocket", HTTP_HOST="testserver")
        request.META[SCOPE_KEY] = connection

        async def view(request: Any) -> None:
            await request.websocket.accept()

        task = asyncio.ensure_future(arun_view(request, view, (), {}, require=True))
        await asyncio.wait_for(taking.wait(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        connection.going_away()  # as dwebsocket.asgi does for a cancelled scope
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(connection.finish(), TIMEOUT)
        return sent

    sent = asyncio.run(scenario())
    assert [(e["type"], e.get("code")) for e in sent] == [
        ("websocket.accept", None),
        ("websocket.close", 1001),
    ], sent


def test_an_accept_waiting_for_one_cancelled_in_flight_sends_no_second() -> None:
    """Two first uses at once, and the task whose ``websocket.accept`` is with the server
    is cancelled before the server returns: the other call finds the connection open. It
    sent a second ``websocket.accept``, which no server takes after the first."""

    async def scenario() -> tuple[bool, list[str]]:
        inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        sent: list[str] = []

        async def send(event: Mapping[str, Any]) -> None:
            sent.append(event["type"])
            if sent == ["websocket.accept"]:
                await asyncio.Event().wait()  # the first is cancelled meanwhile

        connection = plain_connection(inbox.get, send)
        first = asyncio.ensure_future(connection.accept())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(connection.accept())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        again = await asyncio.wait_for(second, TIMEOUT)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(connection.finish(), TIMEOUT)
        return again, sent

    again, sent = asyncio.run(scenario())
    assert again is False
    # One accept; then a close or none, as the disconnect and finish() meet (3.12's loop
    # ran them in another order than 3.11's).
    assert sent in (["websocket.accept"], ["websocket.accept", "websocket.close"]), sent
