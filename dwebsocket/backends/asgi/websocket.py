"""``request.websocket`` under an ASGI server: :class:`ASGIWebSocket` for sync views (run in a
worker thread), :class:`AsyncWebSocket` for ``async def`` views.

Both are layers over one :class:`~dwebsocket.backends.asgi.connection.ASGIConnection`,
which lives on the server's event loop. The sync class hands each call to the loop and
waits for it (``send()`` from any thread); it must not be called from the loop itself,
where it would wait for itself: async code uses :class:`AsyncWebSocket`, whose
``sync`` attribute is the connection's :class:`ASGIWebSocket` (what groups and the
signals know the connection by, in both cases).

What the server does and dwebsocket cannot (docs/asgi.rst has the table): the frames,
permessage-deflate (``WEBSOCKET_COMPRESSION`` is the server's setting there), keepalive
pings (``ping()`` sends nothing: ASGI has no ping event), and the close handshake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from dwebsocket import dws, log, metrics
from dwebsocket.backends.asgi import connection as connection_module
from dwebsocket.backends.asgi.connection import ASGIConnection
from dwebsocket.db import release_idle_connections, wait_releasing
from dwebsocket.exceptions import ConnectionClosed
from dwebsocket.handshake import session_cookies
from dwebsocket.log import printable
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.typing import BytesLike, Message
from dwebsocket.websocket import WebSocket, not_json, to_json, wait_timeout

if TYPE_CHECKING:
    from django.http import HttpRequest

    from dwebsocket.groups.history import Recovery

__all__ = ["ASGIWebSocket", "AsyncWebSocket"]

logger = logging.getLogger("dwebsocket")

_T = TypeVar("_T")
#: How long a worker thread waits for the loop to send one message before it takes the
#: connection for dead (the server's own keepalive usually ends a dead peer sooner).
IO_TIMEOUT = connection_module.IO_TIMEOUT


#: The signals' receivers (groups, users, metrics) may block: they run in these threads,
#: never on the event loop. A bounded pool: its threads stay, whatever the traffic.
SIGNAL_THREADS = 4
_signal_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _signals() -> concurrent.futures.ThreadPoolExecutor:
    global _signal_pool
    if _signal_pool is None:
        _signal_pool = concurrent.futures.ThreadPoolExecutor(
            SIGNAL_THREADS, thread_name_prefix="dwebsocket-signals"
        )
    return _signal_pool


def _in_signal_thread(target: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``target(...)`` in a signal thread (or a session's worker thread: an async view's
    accept and join), then the end of a request's treatment of that thread's database
    connections (receivers and joins query: ``request.user``, the session): these
    threads outlive every request, so without it each would keep its connections open."""
    try:
        return target(*args, **kwargs)
    finally:
        release_idle_connections()


def _message(message: str | BytesLike, connection: ASGIConnection) -> Message:
    """``message`` as the connection sends it. Raises ``TypeError`` for another type,
    ``ConnectionClosed`` instead once ``connection`` is closed (``send(wait())`` after
    the client left sends the None its ``wait()`` returned: a normal end)."""
    if isinstance(message, (str, bytes)):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    if connection.is_closed():
        raise connection.closed_error()
    raise TypeError(f"WebSocket messages are str or bytes, not {type(message).__name__}")


class ASGIWebSocket(WebSocket):
    """The sync ``request.websocket`` under ASGI (see the module docstring)."""

    def __init__(self, request: HttpRequest, connection: ASGIConnection) -> None:
        self.request = request
        self.connection = connection
        self.offered_subprotocols = list(connection.offered_subprotocols)
        self.dws = connection.speaks_dws
        # websocket_closed waits for websocket_opened's receivers (the pump may see the
        # client leave while they run, before they even start): see _opened, _on_closed.
        # Both flags under connection.lock (a lock more per connection costs memory).
        self._opened_sent = False
        self._closed_due = False
        connection.on_closed = self._on_closed

    def __repr__(self) -> str:
        return f"<ASGIWebSocket {self.connection.state} {printable(self.request.path)}>"

    @property
    def protocols(self) -> list[str]:
        """dwebsocket 0.5 name of :attr:`offered_subprotocols`."""
        return self.offered_subprotocols

    # What the connection knows, read through (set on the loop).
    @property
    def subprotocol(self) -> str | None:  # type: ignore[override]
        return self.connection.subprotocol

    @property
    def close_code(self) -> int | None:  # type: ignore[override]
        return self.connection.close_code if self.connection.is_closed() else None

    @property
    def close_reason(self) -> str:  # type: ignore[override]
        return self.connection.close_reason if self.connection.is_closed() else ""

    @property
    def accepted(self) -> bool:
        return self.connection.accepted

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """Run ``coroutine`` on the loop and wait for it in this thread."""
        self._refuse_on_loop(coroutine)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.connection.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            # The server did not take it in time: the connection is over for this view, so
            # that what it reads next agrees with the exception (not a send that goes on).
            self._on_loop_and_wait(self.connection.abandon)
            raise ConnectionClosed(1006, "") from None

    def _refuse_on_loop(self, coroutine: Coroutine[Any, Any, Any] | None = None) -> None:
        """Raise RuntimeError if called on the event loop's thread, where waiting for the
        loop would wait for ourselves (and block every connection of the process)."""
        if self.connection.on_loop():
            if coroutine is not None:
                coroutine.close()
            raise RuntimeError(
                "the sync request.websocket was called from the event loop: in async code, "
                "use the async view's request.websocket (await ws.send(...))"
            )

    def _on_loop_and_wait(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop and wait (a bounded while) until it ran."""
        done = threading.Event()

        def run() -> None:
            try:
                callback()
            finally:
                done.set()

        self.connection.loop.call_soon_threadsafe(run)
        done.wait(IO_TIMEOUT)

    # -- the handshake ----------------------------------------------------------------------

    def accept(self, subprotocol: str | None = None) -> None:
        """Send ``websocket.accept`` (choosing ``subprotocol``). Idempotent. Raises
        ``ValueError`` if ``subprotocol`` was not offered, ``ConnectionClosed`` if the client
        is gone. Blocks until the server took the event."""
        if self.connection.accepted:
            return
        _check_subprotocol(subprotocol, self.offered_subprotocols)
        self._refuse_on_loop()
        cookies = session_cookies(self.request)
        if self._run(self.connection.accept(subprotocol, cookies), IO_TIMEOUT):
            self._opened()  # once: not by a call that found another's accept under way

    def _opened(self) -> None:
        """Send ``websocket_opened``: called once, by whoever sent the accept. Then
        ``websocket_closed`` if the connection closed meanwhile."""
        logger.debug(
            "WebSocket opened: %s %s via ASGI (subprotocol %s)",
            self.connection._peer(),
            printable(self.request.path),
            self.connection.subprotocol,
        )
        try:
            self._send_signal(websocket_opened)
        finally:
            with self.connection.lock:
                self._opened_sent = True
                closed = self._closed_due
            if closed:
                self._signal_closed()

    def _ensure_accepted(self) -> None:
        if not self.connection.accepted:
            self.accept()

    def refuse_session(self) -> bool:
        """See :meth:`WebSocket.refuse_session`: decided on the loop, where accepts run
        (:meth:`ASGIConnection.refuse_session`). Blocks until the loop did (at most
        ``IO_TIMEOUT``: then ``ConnectionClosed``, the connection abandoned)."""
        connection = self.connection
        if connection.accepted:
            return False
        if connection.on_loop():
            return connection.refuse_session()

        async def refuse() -> bool:
            return connection.refuse_session()

        return self._run(refuse(), IO_TIMEOUT)

    # -- receiving --------------------------------------------------------------------------

    #: When :meth:`wait` last gave back this thread's idle database connections.
    _db_checked = 0.0

    def wait(self, timeout: float | None = None) -> Message | None:
        """The next message, blocking up to ``timeout`` seconds (None or negative: forever);
        None once closed or when the timeout expires. While it blocks, it closes the
        calling thread's database connections that a request's end would close, within a
        second and at most once a second, as the WSGI backends do
        (:func:`dwebsocket.db.release_idle_connections`)."""
        self._refuse_on_loop()
        try:
            self._ensure_accepted()
        except ConnectionClosed:
            return None
        connection = self.connection
        timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        def wait_until(until: float | None) -> Message | None:
            return connection.wait_sync(None if until is None else max(until - time.monotonic(), 0))

        while True:
            message = connection.take()
            if message is not None or connection.is_closed():
                return message
            if deadline is not None and time.monotonic() >= deadline:
                return None
            # This thread's connections, about to block.
            message, self._db_checked = wait_releasing(wait_until, self._db_checked, deadline)
            if message is not None:
                return message

    def read(self, fallback: _T | None = None) -> Message | _T | None:
        """A message that is ready now, or ``fallback``. Never blocks (beyond the accept)."""
        try:
            self._ensure_accepted()
        except ConnectionClosed:
            return fallback
        message = self.connection.take()
        return fallback if message is None else message

    def count_messages(self) -> int:
        return self.connection.count_messages()

    # -- sending and closing ----------------------------------------------------------------

    def send(self, message: str | BytesLike) -> None:
        """Send ``message`` (``str``: text, bytes-like: binary). Any thread but the loop's;
        blocks until the server took it. Raises ``ConnectionClosed`` once closed."""
        message = _message(message, self.connection)
        self._send_own(dws.outgoing(message) if self.dws else message)

    def _send_own(self, message: Message) -> None:
        self._ensure_accepted()
        self._run(self.connection.send_message(message), IO_TIMEOUT)

    def deliver(self, message: Message) -> None:
        """Queue ``message`` without blocking (groups); any thread, the loop's included."""
        self.connection.deliver(message)

    def ping(self, data: bytes = b"") -> None:
        """Sends nothing: ASGI has no ping event, the server pings on its own schedule
        (uvicorn ``--ws-ping-interval``, hypercorn ``websocket_ping_interval``, daphne
        ``--ping-interval``). Raises ``ConnectionClosed`` once closed."""
        self._ensure_accepted()
        if self.connection.is_closed():
            raise self.connection.closed_error()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: ``websocket.close`` with ``code`` and ``reason``, then wait up to
        ``WEBSOCKET_CLOSE_TIMEOUT`` for the server's ``websocket.disconnect``. Idempotent.
        Raises ``ValueError`` for a code that may not be sent or a reason over 123 bytes."""
        if self.connection.state == "closed":
            return
        if self.connection.on_loop():
            # From async code on the loop (users.disconnect in an async view, say): the
            # close runs as a task of its own; waiting here would wait for ourselves.
            _check_close_args(code, reason)
            # AsyncWebSocket's close: an accept it implies is signalled as any other.
            task = asyncio.ensure_future(AsyncWebSocket(self).close(code, reason))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
        _check_close_args(code, reason)
        try:
            self._ensure_accepted()  # as the default backend: signalled, then closed
            self._run(
                self.connection.close(code, reason), self.connection.close_timeout + IO_TIMEOUT
            )
        except ConnectionClosed:
            return

    def end_session(self, code: int, *, abort: bool = False) -> None:
        """Called by dwebsocket when the view is done (``dwebsocket.session``)."""
        if abort:
            # Killed: do not wait for the peer, the loop finishes the close by itself.
            if not self.connection.on_loop() and not self.connection.is_closed():
                self.connection.loop.call_soon_threadsafe(self.connection._start_close, code, "")
            return
        self.close(code)

    def is_closed(self) -> bool:
        return self.connection.is_closed()

    def traffic(self) -> metrics.Traffic:
        """Messages and bytes received and sent since the accept (dwebsocket.metrics)."""
        c = self.connection
        return metrics.Traffic(c.messages_in, c.bytes_in, c.messages_out, c.bytes_out)

    # -- signals ----------------------------------------------------------------------------

    def _on_closed(self, opened: bool) -> None:
        # On the loop: receivers may block (groups, users), so they run in a thread.
        connection = self.connection
        if not opened:
            # Refused, or the client left before the accept: no websocket_opened, so no
            # websocket_closed either, the signal on which members leave their groups.
            # The view may have joined before the accept all the same (docs/channels.rst's
            # chat does): it would stay a member, and present, until the group's next
            # message found it closed.
            from dwebsocket import groups

            if groups._involved(self):
                _signals().submit(_in_signal_thread, groups._leave_closed, self)
            return
        log.closed(
            connection._peer(),
            self.request.path,
            connection.close_code,
            connection.close_reason,
            connection.opened_at,
        )
        with self.connection.lock:
            # As on WSGI, never before websocket_opened's receivers returned (they may
            # register the connection: users, presence); _opened sends it then.
            now = self._opened_sent
            self._closed_due = not now
        if now:
            self._signal_closed()

    def _signal_closed(self) -> None:
        _signals().submit(
            _in_signal_thread, self._send_signal, websocket_closed, code=self.connection.close_code
        )


class AsyncWebSocket:
    """The ``request.websocket`` of an ``async def`` view under ASGI.

    The same API as :class:`~dwebsocket.websocket.WebSocket`, with coroutines where the
    connection is used: ``await ws.accept(subprotocol=...)``, ``await ws.wait(timeout)``,
    ``await ws.read()``, ``await ws.send(message)``, ``await ws.close(code, reason)``,
    ``await ws.ping()``, ``await ws.join(group)``, ``await ws.leave(group)``,
    ``await ws.send_json(data)``, ``await ws.wait_json()``, and
    ``async for message in ws``. ``count_messages()``, ``has_messages()``, ``is_closed()``,
    ``deliver()`` and the attributes are plain (they never wait).
    """

    def __init__(self, sync: ASGIWebSocket) -> None:
        #: The same connection as a sync :class:`ASGIWebSocket`: the object groups, users
        #: and the signals know it by; usable from worker threads (``sync_to_async`` code).
        self.sync = sync
        self.connection = sync.connection
        self.request = sync.request
        self.offered_subprotocols = sync.offered_subprotocols
        self.dws = sync.dws

    def __repr__(self) -> str:
        return f"<AsyncWebSocket {self.connection.state} {printable(self.request.path)}>"

    protocols = property(lambda self: self.offered_subprotocols)
    subprotocol = property(lambda self: self.sync.subprotocol)
    close_code = property(lambda self: self.sync.close_code)
    close_reason = property(lambda self: self.sync.close_reason)

    @property
    def accepted(self) -> bool:
        return self.connection.accepted

    @property
    def closed(self) -> bool:
        return self.connection.is_closed()

    def is_closed(self) -> bool:
        return self.connection.is_closed()

    async def accept(self, subprotocol: str | None = None) -> None:
        """Send ``websocket.accept``; see :meth:`ASGIWebSocket.accept`."""
        if self.connection.accepted:
            return
        _check_subprotocol(subprotocol, self.offered_subprotocols)
        from asgiref.sync import sync_to_async

        # In the session's worker thread, as a sync view's accept runs in the view's: the
        # session may be saved, the user read (see session_cookies), and websocket_opened's
        # receivers may wait (users' join waits for Redis to confirm the subscription).
        # In the signal threads, which the whole process shares, a few such waits held up
        # every other async view's handshake.
        cookies = await sync_to_async(
            functools.partial(_in_signal_thread, session_cookies, self.request),
            thread_sensitive=True,
        )()
        if await self.connection.accept(subprotocol, cookies):
            await sync_to_async(
                functools.partial(_in_signal_thread, self.sync._opened), thread_sensitive=True
            )()

    async def _ensure_accepted(self) -> None:
        if not self.connection.accepted:
            await self.accept()

    async def wait(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` seconds (None or negative:
        forever); None once closed or when the timeout expires."""
        try:
            await self._ensure_accepted()
        except ConnectionClosed:
            return None
        return await self.connection.wait_async(wait_timeout(timeout))

    async def read(self, fallback: _T | None = None) -> Message | _T | None:
        """A message that is ready now, or ``fallback``; waits for nothing but the accept."""
        try:
            await self._ensure_accepted()
        except ConnectionClosed:
            return fallback
        message = self.connection.take()
        return fallback if message is None else message

    def count_messages(self) -> int:
        return self.connection.count_messages()

    def has_messages(self) -> bool:
        return self.connection.count_messages() > 0

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            message = await self.wait()
            if message is None:
                return
            yield message

    async def send(self, message: str | BytesLike) -> None:
        """Send ``message``; raises ``ConnectionClosed`` once closed."""
        message = _message(message, self.connection)
        if self.dws:
            message = dws.outgoing(message)
        await self._ensure_accepted()
        await self.connection.send_message(message)

    def deliver(self, message: Message) -> None:
        """Queue ``message`` without waiting (see :meth:`ASGIWebSocket.deliver`)."""
        self.connection.deliver(message)

    async def ping(self, data: bytes = b"") -> None:
        """Sends nothing (see :meth:`ASGIWebSocket.ping`)."""
        await self._ensure_accepted()
        if self.connection.is_closed():
            raise self.connection.closed_error()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; see :meth:`ASGIWebSocket.close`."""
        _check_close_args(code, reason)
        try:
            await self._ensure_accepted()  # as the default backend: signalled, then closed
            await self.connection.close(code, reason)
        except ConnectionClosed:
            return

    async def end_session(self, code: int, *, abort: bool = False) -> None:
        if abort:
            # Cancelled: the close starts now, with this code, before the connection's
            # finish() would close it with 1000; finish() waits for the rest.
            self.connection._start_close(code, "")
            return
        await self.close(code)

    async def join(
        self,
        group: str,
        since: str | None = None,
        *,
        presence: dict[str, Any] | None = None,
        events: bool = False,
    ) -> Recovery:
        """Join ``group`` (see :meth:`dwebsocket.websocket.WebSocket.join`: ``since``,
        ``presence``, ``events``); runs in the session's worker thread (as the view's
        ``sync_to_async`` calls do), since joining may wait for Redis and replay history,
        at the client's pace: in a pool the process shares, a few clients reading their
        replay slowly would hold up every other session's joins and ``asend``. As a sync
        view's join, it does not accept: a view that joins before it uses the connection
        is a member when the client sees it open (what arrives meanwhile waits for the
        accept; a replay accepts)."""
        from asgiref.sync import sync_to_async

        join = functools.partial(
            _in_signal_thread, self.sync.join, group, since, presence=presence, events=events
        )
        return await sync_to_async(join, thread_sensitive=True)()

    async def wait_json(self, timeout: float | None = None) -> Any:
        """``await`` :meth:`wait`, decoded as JSON; as
        :meth:`dwebsocket.websocket.WebSocket.wait_json` (a message that is not JSON
        closes the connection with 1007 and gives None)."""
        message = await self.wait(timeout)
        if message is None:
            return None
        try:
            return json.loads(message)
        except ValueError:
            await self.close(*not_json())
            return None

    async def send_json(self, data: Any, *, cls: type[json.JSONEncoder] | None = None) -> None:
        """Send ``data`` as JSON in a text message (Django's ``DjangoJSONEncoder`` unless
        ``cls``)."""
        await self.send(to_json(data, cls))

    async def leave(self, group: str) -> None:
        """Leave ``group`` (no error if not a member)."""
        from asgiref.sync import sync_to_async

        await sync_to_async(self.sync.leave, thread_sensitive=False)(group)


def _check_close_args(code: int, reason: str) -> None:
    from dwebsocket.protocol.frames import encode_close_payload

    encode_close_payload(code, reason)  # ValueError for what may not be sent


def _check_subprotocol(subprotocol: str | None, offered: list[str]) -> None:
    if subprotocol is not None and subprotocol not in offered:
        raise ValueError(
            f"subprotocol {subprotocol!r} was not offered by the client (offered: {offered})"
        )
