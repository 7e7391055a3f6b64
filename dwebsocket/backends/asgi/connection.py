"""The event-loop side of one ASGI ``websocket`` scope: dwebsocket's events mapped to ASGI's.

The ASGI server does the framing (RFC 6455, permessage-deflate, pings); this object turns
its events into dwebsocket's state. One task, the *pump*, is the only caller of the
server's ``receive()`` once the connection is accepted: it queues ``websocket.receive``
messages for the view and records ``websocket.disconnect``. Everything the view sends goes
through :meth:`ASGIConnection.send_event` in order (an ``asyncio.Lock``, first come first
served). Both the sync and the async ``request.websocket``
(:mod:`dwebsocket.backends.asgi.websocket`) are thin layers over it.

Received messages sit in one deque guarded by a ``threading`` condition, so a view's
worker thread can wait on it while the loop fills it; the pump stops reading while the
view's backlog is full (:data:`dwebsocket.backends.BACKLOG_MESSAGES`), so a client that
sends faster than the view reads is pushed back by the server's own flow control (by
every server but daphne, which queues what it reads without a bound: docs/asgi.rst).

Every method here runs on the event loop, except those documented as thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from dwebsocket import dws
from dwebsocket.backends import BACKLOG_BYTES, BACKLOG_MESSAGES
from dwebsocket.exceptions import ConnectionClosed
from dwebsocket.log import printable
from dwebsocket.protocol.frames import encode_close_payload
from dwebsocket.typing import BytesLike, Message
from dwebsocket.websocket import REFUSED_REASON

__all__ = ["ASGIConnection", "Scope", "State"]

logger = logging.getLogger("dwebsocket")

_headers_dropped_warned = False


def _warn_if_headers_dropped(scope: Mapping[str, Any]) -> None:
    """Warn (once per process) that a server whose WebSocket scope says an ASGI spec
    before 2.1 (daphne says none: 2.0) drops ``websocket.accept``'s ``headers``: the
    session cookie of a handshake (``dwebsocket.handshake.session_cookies``) cannot
    reach the browser."""
    global _headers_dropped_warned
    version = str((scope.get("asgi") or {}).get("spec_version") or "2.0")
    try:
        older = tuple(int(part) for part in version.split(".")[:2]) < (2, 1)
    except ValueError:
        return
    if older and not _headers_dropped_warned:
        _headers_dropped_warned = True
        logger.warning(
            "This ASGI server (WebSocket spec_version %s) sends no headers with the 101: "
            "a session written or given a new key during a handshake is saved, but its "
            "cookie does not reach the browser (see docs/users.rst). Use uvicorn or "
            "hypercorn to send it.",
            printable(version),
        )


# As django-stubs spells them for Django's ASGIHandler.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

#: ``websocket.http.response``: the ASGI extension that lets an application refuse a
#: handshake with any HTTP response. Without it, a refusal is a 403.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"


def count_refusal(extensions: Mapping[str, Any] | None, status: int) -> bool:
    """Count a refused scope in ``handshakes_total`` with what the client gets: ``status``
    where the server has the HTTP response extension, else its 403 for a
    ``websocket.close`` before the accept. Returns whether it has the extension."""
    from dwebsocket import metrics

    extension = HTTP_RESPONSE_EXTENSION in (extensions or {})
    metrics.handshake(status if extension else 403)
    return extension


#: Seconds the server may take to take one event (a message, the accept): after that (a
#: client that stopped reading, where the server pings nobody) the connection is over for
#: dwebsocket (1006), as a default backend's send that makes no progress gives up.
IO_TIMEOUT = 60.0

#: A send yields to the loop after this many sends: a server's ``send()`` suspends only
#: while its buffer is full, so a view sending to a client that reads as fast would run
#: on without ever letting the loop read (the client's close, every other connection).
YIELD_EVERY = 16


class State:
    """Where the connection is (plain strings: they show in reprs and logs)."""

    CONNECTING = "connecting"  # websocket.connect received, nothing sent yet
    OPEN = "open"  # websocket.accept sent
    CLOSING = "closing"  # websocket.close sent, websocket.disconnect not yet received
    CLOSED = "closed"  # websocket.disconnect received, or the server failed us
    REFUSED = "refused"  # answered with an HTTP response (or a close before accept)


class ASGIConnection:
    """One ``websocket`` scope, from ``websocket.connect`` to ``websocket.disconnect``.

    What only some connections need is made when first needed, so that an idle one holds
    little: the received messages' deque, the condition sync views wait on, the outbox of
    ``deliver()``, the futures of a pump waiting for room and of a close waiting for the
    disconnect (``bench/FINDINGS.md`` section 18)."""

    __slots__ = (
        "_accepting",
        "_answer_due",
        "_async_waiters",
        "_closed_waiter",
        "_closer",
        "_flusher",
        "_full",
        "_overflowed",
        "_pump",
        "_queued",
        "_queued_bytes",
        "_ready",
        "_receive",
        "_room_waiter",
        "_send",
        "_send_lock",
        "_sender",
        "_sends",
        "_watchdog",
        "_watched",
        "backlog_bytes",
        "backlog_limit",
        "bytes_in",
        "bytes_out",
        "close_code",
        "close_reason",
        "close_timeout",
        "extensions",
        "lock",
        "loop",
        "loop_thread",
        "max_message_size",
        "messages",
        "messages_in",
        "messages_out",
        "offered_subprotocols",
        "on_closed",
        "opened_at",
        "queue_limit",
        "scope",
        "speaks_dws",
        "state",
        "subprotocol",
        "sync_waiters",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        max_message_size: int | None,
        close_timeout: float,
        queue_limit: int,
        speaks_dws: bool = False,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.extensions: dict[str, Any] = dict(scope.get("extensions") or {})
        self.offered_subprotocols: list[str] = list(scope.get("subprotocols") or ())
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        self.queue_limit = queue_limit
        self.speaks_dws = speaks_dws

        self.state = State.CONNECTING
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.opened_at = 0.0
        #: Messages and bytes received and sent since the accept (dwebsocket.metrics).
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0

        # The received messages, shared with worker threads.
        self.lock = threading.Lock()
        self._ready: threading.Condition | None = None  # on self.lock, for sync waiters
        self.messages: deque[Message] | None = None  # made by the first message
        self.backlog_bytes = 0
        self.backlog_limit = max(BACKLOG_BYTES, max_message_size or 0)
        self.sync_waiters = 0  # worker threads in _ready.wait()
        # Coroutines waiting in wait_async(), oldest first (an async view's tasks may
        # wait at the same time).
        self._async_waiters: list[asyncio.Future[None]] | None = None

        self._send_lock = asyncio.Lock()
        # The send under way (its task) and how many began, watched by one timer at a
        # time (_watch), not one per send; _watched: the count it saw (-1: given up).
        self._sender: asyncio.Task[Any] | None = None
        self._sends = self._watched = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._accepting: asyncio.Future[None] | None = None  # an accept() under way
        # refuse_session() refused it: the view's HTTP answer is still to be sent.
        self._answer_due = False
        self._overflowed = False  # the outbox overflowed before the accept: 1008 after it
        self._full = False  # the backlog is full: the pump waits for room
        self._room_waiter: asyncio.Future[None] | None = None  # the pump, while full
        self._closed_waiter: asyncio.Future[None] | None = None  # close(), until CLOSED
        self._pump: asyncio.Task[None] | None = None
        # deliver(): messages queued for sending without a waiting caller, and their bytes.
        self._queued: deque[Message] | None = None
        self._queued_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closer: asyncio.Future[None] | None = None  # _start_close()'s send
        #: Called (on the loop) once the connection is closed, for the signals: with
        #: whether it had opened (a refused one, or one whose accept found the client
        #: gone, had not).
        self.on_closed: Callable[[bool], None] | None = None

    def __repr__(self) -> str:
        return f"<ASGIConnection {self.state} {self.scope.get('path', '?')}>"

    @property
    def accepted(self) -> bool:
        return self.state in (State.OPEN, State.CLOSING, State.CLOSED) and self.opened_at > 0

    def is_closed(self) -> bool:
        """True once a close was sent or received, or the connection broke. Thread-safe."""
        return self.state in (State.CLOSING, State.CLOSED, State.REFUSED)

    def on_loop(self) -> bool:
        """True when called from the event loop's thread. Thread-safe."""
        return threading.get_ident() == self.loop_thread

    # -- the handshake --------------------------------------------------------------------

    async def accept(
        self, subprotocol: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Send ``websocket.accept`` (with ``headers`` for the 101: ``Set-Cookie``, which
        the ASGI spec lets it carry since 2.1) and start the pump. Idempotent: True for
        the one call that sent it; another call meanwhile (a task sending while another
        waits, both accepting on first use) waits for that one, then returns False.

        Raises ``ConnectionClosed`` if the connection was refused or the server cannot
        send any more (the client left)."""
        if self._accepting is not None:
            await asyncio.shield(self._accepting)
        if self.state is not State.CONNECTING:
            if self.state is State.REFUSED or self.opened_at == 0:
                raise self.closed_error()
            return False
        accepting = self._accepting = self.loop.create_future()
        try:
            message: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
            if headers:
                _warn_if_headers_dropped(self.scope)
                message["headers"] = [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers
                ]
            await self._send(message)
        except asyncio.CancelledError:
            # The server has the accept (uvicorn's send() waits for the handshake): the
            # connection is open for it, so the cancelled view's close (1001) follows.
            if self.state is State.CONNECTING:
                self._open(subprotocol)
            raise
        except Exception as exc:  # the server says the client is gone
            logger.debug("websocket.accept failed for %s: %r", self._path(), exc)
            self._mark_closed(1006, "")
            raise self.closed_error() from None
        finally:
            self._accepting = None
            _wake(accepting)
        self._open(subprotocol)
        if self._overflowed:  # deliver() overflowed the outbox before the accept
            self._start_close(1008, "send queue overflow")
        elif self._queued:  # delivered before the accept (groups joined early)
            self._flusher = asyncio.create_task(self._flush())
        return True

    def _open(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol
        self.opened_at = time.monotonic()
        self.state = State.OPEN
        self._pump = asyncio.create_task(self._run_pump())

    def refuse_session(self) -> bool:
        """The view answered with HTTP unaccepted (see
        :meth:`dwebsocket.websocket.WebSocket.refuse_session`): True if the connection is
        refused now (or was), so that any accept from then on raises ``ConnectionClosed``
        (1006) and :attr:`answer_due` is True until :meth:`refuse` sends the answer; False
        if it is accepted, being accepted (the accept's ``websocket.accept`` went to the
        server) or closed. On the loop, so one step against any accept; never blocks."""
        if self.state is State.REFUSED:
            return True
        if self.state is not State.CONNECTING or self._accepting is not None:
            return False
        self.state = State.REFUSED
        self._answer_due = True
        self._mark_closed(1006, REFUSED_REASON)  # drops what deliver() queued meanwhile
        return True

    @property
    def answer_due(self) -> bool:
        """Whether the scope still owes the server an HTTP answer to the handshake: never
        accepted, and not refused yet (or refused by :meth:`refuse_session`, the answer
        not sent). On the loop."""
        return self.state is State.CONNECTING or self._answer_due

    async def refuse(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the handshake with an HTTP response instead: with the server's
        ``websocket.http.response`` extension as is, else with ``websocket.close`` before
        ``websocket.accept``, which the server answers with 403 (the ASGI spec). Does
        nothing unless :attr:`answer_due`."""
        if not self.answer_due:
            return
        self._answer_due = False
        self.state = State.REFUSED
        # Every refusal of the scope, once, here: what the view (or dwebsocket before it)
        # answered, or what the server makes of a websocket.close before the accept.
        extension = count_refusal(self.extensions, status)
        try:
            if extension:
                await self._send(
                    {
                        "type": "websocket.http.response.start",
                        "status": status,
                        "headers": headers,
                    }
                )
                await self._send({"type": "websocket.http.response.body", "body": body})
            else:
                await self._send({"type": "websocket.close", "code": 1008})
        except Exception as exc:
            logger.debug("Refusing %s failed: %r", self._path(), exc)
        self._mark_closed(1006, "")

    # -- receiving --------------------------------------------------------------------------

    async def _run_pump(self) -> None:
        try:
            while True:
                if self._full:
                    self._room_waiter = self.loop.create_future()
                    try:
                        await self._room_waiter
                    finally:
                        self._room_waiter = None
                event = await self._receive()
                kind = event.get("type")
                if kind == "websocket.receive":
                    text = event.get("text")
                    message: Message = text if text is not None else (event.get("bytes") or b"")
                    if self.state is not State.OPEN:
                        continue  # closing: discarded, as RFC 6455 5.5.1 allows
                    self._received(message)
                elif kind == "websocket.disconnect":
                    code = event.get("code", 1005)
                    reason = event.get("reason") or ""
                    self._mark_closed(int(code) if code is not None else 1005, str(reason))
                    return
        except asyncio.CancelledError:
            self._mark_closed(1006, "")
            raise
        except Exception as exc:  # the server's receive() failed: the connection is gone
            logger.debug("receive() failed for %s: %r", self._path(), exc)
            self._mark_closed(1006, "")

    def _received(self, message: Message) -> None:
        size = _size(message)
        limit = self.max_message_size
        if limit is not None and size > limit:
            logger.info(
                "WebSocket message of %s bytes from %s over WEBSOCKET_MAX_MESSAGE_SIZE "
                "(%s): closing with 1009",
                size,
                self._peer(),
                limit,
            )
            self._start_close(1009, "message too big")
            return
        if self.speaks_dws and isinstance(message, str) and message.startswith(dws.PREFIX):
            kind = dws.envelope_kind(message)
            if kind is not dws.NOT_ENVELOPE:  # dwebsocket's own, never the view's (dwebsocket.dws)
                if kind == "ping":
                    self.deliver(dws.PONG)
                return
        self.messages_in += 1
        self.bytes_in += size
        with self.lock:
            if self.messages is None:
                self.messages = deque()
            self.messages.append(message)
            self.backlog_bytes += size
            if len(self.messages) >= BACKLOG_MESSAGES or self.backlog_bytes >= self.backlog_limit:
                self._full = True
            if self._ready is not None and self.sync_waiters:
                self._ready.notify()
        self._wake_async()

    def take(self) -> Message | None:
        """The next received message, or None. Thread-safe; never blocks."""
        with self.lock:
            if not self.messages:  # None before the first message
                return None
            message = self.messages.popleft()
            self._took(message)
        return message

    def _took(self, message: Message) -> None:
        # Called with the lock held.
        self.backlog_bytes -= _size(message)
        if self._full and len(self.messages or ()) < BACKLOG_MESSAGES // 2:
            if self.on_loop():
                self._make_room()
            else:
                self.loop.call_soon_threadsafe(self._make_room)

    def _make_room(self) -> None:
        # On the loop: the pump may read again.
        self._full = False
        _wake(self._room_waiter)

    def wait_sync(self, timeout: float | None) -> Message | None:
        """For worker threads: the next message, blocking up to ``timeout`` seconds (None:
        forever); None once closed or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while not self.messages:
                if self.state is not State.OPEN:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if self._ready is None:
                    self._ready = threading.Condition(self.lock)
                self.sync_waiters += 1
                try:
                    self._ready.wait(remaining)
                finally:
                    self.sync_waiters -= 1
            message = self.messages.popleft()
            self._took(message)
        return message

    async def wait_async(self, timeout: float | None) -> Message | None:
        """For coroutines: the next message, waiting up to ``timeout`` seconds (None:
        forever); None once closed or timed out."""
        while True:
            message = self.take()
            if message is not None:
                return message
            if self.state is not State.OPEN:
                return None
            waiter = self.loop.create_future()
            if self._async_waiters is None:
                self._async_waiters = []
            self._async_waiters.append(waiter)
            try:
                if timeout is None:
                    await waiter
                else:
                    try:
                        await asyncio.wait_for(waiter, timeout)
                    except asyncio.TimeoutError:
                        return self.take()
            except BaseException:
                # Cancelled, perhaps after a message woke this waiter: the next one gets it.
                if self.messages:
                    self._wake_async()
                raise
            finally:
                self._async_waiters.remove(waiter)

    def _wake_async(self, every: bool = False) -> None:
        """Wake the oldest coroutine still waiting for a message (``every``: all of them).
        On the loop."""
        for waiter in self._async_waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                if not every:
                    return

    def count_messages(self) -> int:
        """Messages ready now. Thread-safe; never blocks."""
        return len(self.messages or ())

    # -- sending ----------------------------------------------------------------------------

    async def send_message(self, message: Message | None) -> None:
        """Send one message (``str``: text, bytes: binary), in order with every other send,
        after what :meth:`deliver` queued before it; None: only that (the flusher's call).
        So a message the connection sends never overtakes the group messages queued for it
        before (a view's own ``groups.asend`` then ``send``), as on the default backend,
        whose ``send()`` writes its outbox first; with nothing queued, that costs a send
        one test of the queue.

        Raises ``ConnectionClosed`` once closed, and ``UnicodeEncodeError`` (a
        ``ValueError``) for a ``str`` that UTF-8 cannot encode (a lone surrogate), as the
        default backend does: then nothing is sent, and the connection stays open."""
        if self.state is not State.OPEN:
            raise self.closed_error()
        event, size = (None, 0) if message is None else _send_event(message)
        async with self._send_lock:
            if self.state is not State.OPEN:
                raise self.closed_error()
            self._sender = asyncio.current_task()
            try:
                if self._queued:
                    await self._send_queued(own=event is not None)
                    if event is not None and self.state is not State.OPEN:
                        raise self.closed_error()  # a close began: the rest goes before it
                if event is None:
                    return
                self._counted()
                await self._send(event)
            except ConnectionClosed:
                raise
            except Exception as exc:
                logger.debug("websocket.send failed for %s: %r", self._peer(), exc)
                # The server answered: what follows is a wait for its disconnect, bounded
                # by the close timeout, not a send for the watchdog to give up (it would
                # cancel this task, and the view get CancelledError for ConnectionClosed).
                self._sender = None
                await self._send_failed()
                raise self.closed_error() from None
            except asyncio.CancelledError:
                if self._watched >= 0:
                    raise
                # _watch gave up on it, or the connection ended under it (_mark_closed):
                # the view learns it as any other end.
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):  # Python 3.11+
                    task.uncancel()
                raise self.closed_error() from None
            finally:
                self._sender = None
        self.messages_out += 1
        self.bytes_out += size
        if not self._sends % YIELD_EVERY:
            await asyncio.sleep(0)

    async def _send_taken(self, event: dict[str, Any], size: int) -> None:
        """Send ``event``, a message :meth:`deliver` queued, for a caller sending its own
        after it. The message is the connection's (a group's), not the caller's: if the
        caller is cancelled meanwhile (a view's ``wait_for`` or ``asyncio.timeout`` around
        its ``send()``), the message goes out all the same, and the cancellation goes on
        once the server took it, or after the close timeout, the connection then over for
        dwebsocket (1006, as for a send the watchdog gives up): never a message missing
        from a connection that goes on. The rest of the queue is the flusher's. A
        cancellation that ends the connection (the watchdog, its end) ends it at once."""
        sending = asyncio.ensure_future(self._send(event))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            if self._watched < 0 or self.state is not State.OPEN:
                sending.cancel()  # the connection is over: so is the message
                raise
            try:
                await asyncio.wait((sending,), timeout=self.close_timeout)
            finally:
                if not sending.done():
                    sending.cancel()
                    self.abandon()
            if sending.done() and not sending.cancelled() and sending.exception() is None:
                self.messages_out += 1
                self.bytes_out += size
                if self._queued and self._flusher is None and self.state is State.OPEN:
                    self._flusher = asyncio.create_task(self._flush())
            raise

    def _counted(self) -> None:
        """One more send, for the watchdog (armed if it is not). Send lock held."""
        self._sends += 1
        if self._watchdog is None:
            self._watched = self._sends
            self._watchdog = self.loop.call_later(IO_TIMEOUT, self._watch)

    async def _send_queued(self, own: bool = False) -> None:
        """Send what :meth:`deliver` queued, oldest first, until the queue is empty (or None:
        closed); ``own``: before a message of the caller's (see :meth:`_send_taken`). Send
        lock held."""
        while self._queued:
            message = self._queued.popleft()
            self._queued_bytes -= _size(message)
            event, size = _send_event(message)  # deliver() refused what UTF-8 cannot encode
            self._counted()
            if own:
                await self._send_taken(event, size)
            else:
                await self._send(event)
            self.messages_out += 1
            self.bytes_out += size
            if not self._sends % YIELD_EVERY:
                await asyncio.sleep(0)

    async def _send_failed(self) -> None:
        """The server refused a send: the peer is gone, and the server is about to say how
        (its ``websocket.disconnect``, the client's close code, which the view and
        ``websocket_closed`` should get rather than 1006). The pump, if it reads, gets it
        within the close timeout; else, or then, the connection is over with 1006."""
        pump = self._pump
        if pump is not None and not pump.done() and not self._full:
            if self._closed_waiter is None:
                self._closed_waiter = self.loop.create_future()
            await asyncio.wait((self._closed_waiter,), timeout=self.close_timeout)
        self._mark_closed(1006, "")

    def _watch(self) -> None:
        """The send watchdog (on the loop), ``IO_TIMEOUT`` after it was armed: the send
        under way then, if no other began since, has waited that long at least: it is
        given up (the connection is over, 1006). Else the latest one is watched."""
        self._watchdog = None
        sender = self._sender
        if sender is None:
            return  # the next send arms it again
        if self._sends != self._watched:
            self._watched = self._sends
            self._watchdog = self.loop.call_later(IO_TIMEOUT, self._watch)
            return
        logger.debug("websocket.send not taken within %ss for %s", IO_TIMEOUT, self._peer())
        self._watched = -1
        sender.cancel()
        self.abandon()

    def deliver(self, message: str | BytesLike) -> None:
        """Queue ``message`` for sending; never blocks. Thread-safe. Dropped once closed;
        over ``WEBSOCKET_SEND_QUEUE_SIZE`` of queued bytes the connection is closed with
        1008 (policy violation). Raises ``UnicodeEncodeError`` for a ``str`` UTF-8 cannot
        encode (a lone surrogate), queueing nothing, as the other backends do (it was
        queued, then skipped without a word at the flush)."""
        if self.is_closed():
            return
        if isinstance(message, (bytearray, memoryview)):
            # Queued as its bytes: what the queue's bound and the byte counters count
            # (len() of a memoryview counts its items), and the caller may reuse its
            # buffer once this returns.
            message = bytes(message)
        if isinstance(message, str) and not message.isascii():
            size = len(message.encode())  # UTF-8 on the wire; here, in the caller, it raises
        else:
            size = len(message)
        if self.on_loop():
            self._queue(message, size)
        else:
            self.loop.call_soon_threadsafe(self._queue, message, size)

    def _queue(self, message: Message, size: int) -> None:
        if self.is_closed() or self._overflowed:
            return
        if self._queued is None:
            self._queued = deque()
        self._queued.append(message)
        self._queued_bytes += size
        if self._queued_bytes > self.queue_limit:
            logger.info(
                "WebSocket %s: over WEBSOCKET_SEND_QUEUE_SIZE (%s bytes queued): closing with 1008",
                self._peer(),
                self.queue_limit,
            )
            self._queued = None
            self._queued_bytes = 0
            from dwebsocket import metrics

            metrics.group_member_dropped()
            if self.state is State.CONNECTING:
                self._overflowed = True  # closed with 1008 once accepted
            self._start_close(1008, "send queue overflow")
            return
        if self._flusher is None and self.state is State.OPEN:
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self.send_message(None)
        except ConnectionClosed:
            pass  # once closing, what is left goes out before the close (_send_queued_then)
        finally:
            self._flusher = None

    # -- closing ----------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``websocket.close`` and wait up to the close timeout for the server's
        ``websocket.disconnect``. Idempotent. Raises ``ValueError`` for a code that may not
        be sent or a reason over 123 bytes of UTF-8."""
        _check_close(code, reason)
        if self.state is State.CONNECTING:
            await self.accept()
        if self.state is State.OPEN:
            await self._send_close(code, reason)
        if self.state is State.CLOSING:
            if self._closed_waiter is None:
                self._closed_waiter = self.loop.create_future()
            # asyncio.wait, not wait_for: a timeout must not cancel another close()'s wait.
            await asyncio.wait((self._closed_waiter,), timeout=self.close_timeout)
            if self.state is State.CLOSING:
                logger.debug(
                    "No websocket.disconnect for %s within %ss", self._peer(), self.close_timeout
                )
                self._mark_closed(code, reason)

    async def _send_close(self, code: int, reason: str) -> None:
        if self.state is not State.OPEN:
            return
        self._closing(code, reason)
        await self._send_close_event(code, reason)

    def _closing(self, code: int, reason: str) -> None:
        """OPEN -> CLOSING: sends stop, waiters wake, and the pump reads on (discarding)
        until the server's ``websocket.disconnect``, even from a full backlog."""
        self.state = State.CLOSING
        self.close_code, self.close_reason = code, reason
        self._wake_readers()
        self._make_room()

    async def _send_close_event(self, code: int, reason: str) -> None:
        event: dict[str, Any] = {"type": "websocket.close", "code": code}
        if reason:
            event["reason"] = reason
        try:
            async with self._send_lock:
                # Bounded as a send is: a server whose send() blocks while the client does
                # not read (uvicorn, hypercorn, granian) would otherwise hold the close,
                # and the session, for as long as the client keeps the connection open.
                # And no longer than the connection: once the server says it is over (its
                # websocket.disconnect), the event it has not taken is given up.
                await self._send_bounded(self._send_queued_then(event))
        except asyncio.TimeoutError:
            logger.debug("websocket.close not taken within %ss for %s", IO_TIMEOUT, self._peer())
            self.abandon()
        except Exception as exc:
            logger.debug("websocket.close failed for %s: %r", self._peer(), exc)
            self._mark_closed(code, reason)

    async def _send_bounded(self, sending: Awaitable[None]) -> None:
        """Await ``sending`` for up to ``IO_TIMEOUT`` (then ``asyncio.TimeoutError``), or
        until the connection is over: then it is cancelled. If it is over already (the
        server said so while this waited for the send lock), for up to the close timeout,
        quietly: what the server does not take at once it never will, if the client
        stopped reading.

        If the caller is cancelled while the connection is closing (a view's
        ``asyncio.timeout`` around its ``close()``, a ``TaskGroup`` ending), the close is
        the connection's end, not the caller's: it is still waited for, up to the close
        timeout, before the cancellation goes on. Cancelled with its caller, it never went
        out: the client saw the TCP connection end (1006), not the view's code."""
        task = asyncio.ensure_future(sending)
        waits: list[asyncio.Future[Any]] = [task]
        timeout = self.close_timeout
        if self.state is not State.CLOSED:
            timeout = IO_TIMEOUT
            if self._closed_waiter is None:
                self._closed_waiter = self.loop.create_future()
            waits.append(self._closed_waiter)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not task.done() and self.state is State.CLOSING:
                await asyncio.wait(
                    waits, timeout=self.close_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            raise
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            if self.state is not State.CLOSED:
                raise asyncio.TimeoutError
            return
        task.result()

    async def _send_queued_then(self, event: dict[str, Any]) -> None:
        """What ``deliver()`` queued before the close began (a group's last messages, a
        ``users.send()`` before ``users.disconnect()``), then ``event``, the close: the
        default backend writes its close frame after its outbox too. An overflow (1008)
        has dropped the queue first. Call with the send lock held."""
        if self._queued:
            await self._send_queued()
        await self._send(event)

    def _start_close(self, code: int, reason: str) -> None:
        """Begin a close from the loop without waiting for it (the pump, the outbox, a
        cancelled view): the connection is CLOSING with ``code`` at once, a task sends the
        event. On the loop."""
        if self.state is State.OPEN:
            self._closing(code, reason)
            task = self._closer = asyncio.ensure_future(self._send_close_event(code, reason))
            task.add_done_callback(_log_failure)

    def going_away(self) -> None:
        """The server cancelled the scope, as it does when it stops: close with 1001
        (RFC 6455 7.4.1) without waiting; :meth:`finish` waits for the rest. On the loop."""
        self._start_close(1001, "")

    def abandon(self) -> None:
        """The server did not take an event in time (a peer that stopped reading): the
        connection is over for dwebsocket (1006), whatever the server does with it. On the
        loop."""
        self._mark_closed(1006, "")

    def _mark_closed(self, code: int, reason: str) -> None:
        """The connection is over: record the code (if we did not close first), wake
        every waiter, run ``on_closed`` once."""
        if self.state is State.CLOSED:
            return
        was_open = self.opened_at > 0 and self.state is not State.REFUSED
        if self.state is not State.REFUSED:
            self.state = State.CLOSED
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        _wake(self._closed_waiter)
        if self._watchdog is not None:
            self._watchdog.cancel()  # nothing is sent any more (it holds the connection)
            self._watchdog = None
        sender = self._sender
        if sender is not None and self._watched >= 0 and sender is not asyncio.current_task():
            # A send the server has not taken (a client that stopped reading) would wait
            # on with the watchdog gone, for ever: uvicorn, stopping, waited for it. It
            # raises ConnectionClosed with this close's code (see send_message).
            self._watched = -1
            sender.cancel()
        self._make_room()
        self._queued = None
        self._queued_bytes = 0
        self._wake_readers()
        if self.on_closed is not None:
            callback, self.on_closed = self.on_closed, None
            callback(was_open)

    def _wake_readers(self) -> None:
        with self.lock:
            if self._ready is not None:
                self._ready.notify_all()
        self._wake_async(every=True)

    async def finish(self) -> None:
        """After the view: make sure nothing of the connection is left running."""
        if self.state is State.OPEN:
            await self.close(1000)
        elif self.state is State.CLOSING:
            await self.close(self.close_code or 1000)
        # The close task too: its send is bounded by IO_TIMEOUT, not the close timeout
        # close() just waited, and the session must not go on after it reports finished.
        for task in (self._pump, self._flusher, self._closer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.state is State.CONNECTING:
            self.state = State.REFUSED
            self._mark_closed(1006, "")

    def closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code or 1006, self.close_reason)

    def _path(self) -> str:
        """The scope's path as the log writes it (the client's, decoded: escaped)."""
        return printable(str(self.scope.get("path", "?")))

    def _peer(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "?"


def _send_event(message: Message) -> tuple[dict[str, Any], int]:
    """The ``websocket.send`` event of ``message`` and its size on the wire. Raises
    ``UnicodeEncodeError`` for a ``str`` UTF-8 cannot encode: encoded here, not only by
    the server, whose encoding error would read as the client gone (a send it refused)."""
    if isinstance(message, str):
        size = len(message) if message.isascii() else len(message.encode("utf-8"))
        return {"type": "websocket.send", "text": message}, size
    return {"type": "websocket.send", "bytes": bytes(message)}, len(message)


def _size(message: Message) -> int:
    """The bytes of ``message`` on the wire: text as UTF-8 (what the limits count), with
    no encoding for ASCII (``isascii()`` reads a flag)."""
    if isinstance(message, str) and not message.isascii():
        return len(message.encode("utf-8", "surrogatepass"))  # never raises here
    return len(message)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve ``waiter`` if it is there and still waiting (on the loop)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _check_close(code: int, reason: str) -> None:
    # The core's rules (RFC 6455 5.5, 7.4), though the server encodes the frame.
    encode_close_payload(code, reason)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("Closing failed: %r", task.exception())
