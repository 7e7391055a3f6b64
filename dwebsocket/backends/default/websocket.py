"""``request.websocket`` over the raw socket: a thin I/O loop around the sans-I/O core.

There is no background reader: ``wait()`` reads the socket in the caller's thread (or
greenlet) under a read lock and feeds the core; keepalive pings happen there too. The
socket is read only while the view's backlog of received messages is small, so a peer
sending faster than the view consumes is pushed back by TCP instead of buffered; with
permessage-deflate the core gets a read a slice at a time, so that one read of small
compressed frames cannot expand into more than about one message past that backlog.
``send()`` writes under a write lock, so any thread may send while one waits (gevent
allows one reader and one writer on a socket at a time, never two of either).

Everything written goes through one ordered outbox, so frames reach the wire in the
order the core encoded them (permessage-deflate's shared context depends on it):
``send()`` flushes it itself; ``deliver()`` and ``deliver_batch()`` (groups: one message, or
the frames of all a group's reader received together) append, then write what the kernel
takes at once if no one else is writing, and leave the rest to a short-lived flusher
thread (a greenlet under monkey-patching); the pongs and close replies the core produces
are flushed by the reader.

Lock order: read -> write -> core. ``_core`` guards the core and the outbox and is never
held across I/O.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from dwebsocket import log, metrics
from dwebsocket.backends import BACKLOG_BYTES, BACKLOG_MESSAGES
from dwebsocket.backends.default.outbox import Outbox
from dwebsocket.backends.default.state import IOState
from dwebsocket.backends.default.transport import RECV_SIZE, fast_messages
from dwebsocket.conf import settings
from dwebsocket.exceptions import ConnectionClosed, InvalidState
from dwebsocket.handshake import session_cookies
from dwebsocket.log import printable, protocol_error
from dwebsocket.protocol.connection import Close, Connection, State
from dwebsocket.protocol.handshake import HandshakeRequest
from dwebsocket.protocol.server import Accepted
from dwebsocket.protocol.server import accept as accept_request
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.typing import BytesLike, Message
from dwebsocket.websocket import REFUSED_REASON, WebSocket, wait_timeout

if TYPE_CHECKING:
    from django.http import HttpRequest

    from dwebsocket.backends.default.transport import Transport
    from dwebsocket.groups.batch import Batch

__all__ = ["DefaultWebSocket"]

logger = logging.getLogger("dwebsocket")

_T = TypeVar("_T")
_OPEN = State.OPEN
_CLOSED = State.CLOSED
# read()/count_messages() never block, and stop after this many reads even if the peer
# keeps the socket readable.
_MAX_NONBLOCKING_READS = 16
# With permessage-deflate, received bytes go to the core this many at a time, the
# backlog checked in between (64 KiB of deflate can carry ~60 GiB of zeros).
_DEFLATE_SLICE = 512
# A send that makes no progress this long means the peer is gone, when keepalive is off.
_DEFAULT_IO_TIMEOUT = 60.0
# The close reason when bytes read from the socket were lost before the core or the view's
# queue took them (see _lost_received).
_LOST_REASON = "received data lost"
# The close reason when a write may have left part of a frame on the wire and lost its rest
# (see _write_interrupted).
_INTERRUPTED_REASON = "a write was interrupted"


def _new_lock() -> threading.Lock:
    """A new ``threading.Lock()``; under gevent's monkey-patching, the semaphore that
    gevent's ``Lock`` wraps, without the wrapper: its Python-level ``acquire()`` doubled
    the cost of a lock pair, and an echoed message takes four (bench/FINDINGS.md,
    section 8; the same behaviour
    otherwise: ``acquire(blocking=False)``, ``acquire(timeout=t)`` with t > 0, ``with``)."""
    gevent_thread = sys.modules.get("gevent.thread")
    if gevent_thread is not None and threading.Lock is getattr(gevent_thread, "LockType", None):
        from gevent.lock import BoundedSemaphore  # type: ignore[import-untyped]

        lock: Any = BoundedSemaphore(1)
        return lock  # type: ignore[no-any-return]
    return threading.Lock()


class DefaultWebSocket(WebSocket):
    """One connection taken over from the WSGI server (see the module docstring)."""

    # Slots, not an instance dict: past the 30 keys that CPython 3.11's key-sharing dicts
    # hold (an attribute more, in any instance, is enough), each connection had a 1.5 KiB
    # dict of its own (bench/FINDINGS.md, sections 11 and 23). WebSocket keeps its
    # __dict__, so subclasses and other attributes still work.
    __slots__ = (
        "_accepted",
        "_backlog_bytes",
        "_close_deadline",
        "_close_timeout",
        "_compression",
        "_conn",
        "_core",
        "_fast",
        "_flusher",
        "_io",
        "_max_frame_size",
        "_max_message_size",
        "_opened_at",
        "_outbox",
        "_ping_interval",
        "_ping_timeout",
        "_queue_limit",
        "_reading",
        "_session_over",
        "_shut_event",
        "_transport",
        "_unfed",
        "_writing",
        "close_code",
        "close_reason",
        "handshake",
        "offered_subprotocols",
        "request",
        "subprotocol",
    )

    def __init__(
        self, request: HttpRequest, handshake: HandshakeRequest, transport: Transport
    ) -> None:
        self.request = request
        self.handshake = handshake
        self.offered_subprotocols = list(handshake.subprotocols)
        self.subprotocol = None
        self.close_code = None
        self.close_reason = ""
        self._transport = transport

        # Settings are read once per connection, when the request arrives.
        self._compression = bool(settings.WEBSOCKET_COMPRESSION)
        self._max_message_size: int | None = settings.WEBSOCKET_MAX_MESSAGE_SIZE
        self._max_frame_size: int | None = settings.WEBSOCKET_MAX_FRAME_SIZE
        self._ping_interval: float | None = settings.WEBSOCKET_PING_INTERVAL
        self._ping_timeout: float | None = settings.WEBSOCKET_PING_TIMEOUT
        self._close_timeout: float = settings.WEBSOCKET_CLOSE_TIMEOUT
        self._queue_limit: int = settings.WEBSOCKET_SEND_QUEUE_SIZE

        self._conn: Connection | None = None
        # What the C fast path shares: shut, queued, last_heard, ... and the messages
        # received for the view (io.messages: a deque while there are some, else None).
        self._io = IOState()
        # The C fast path of wait() and send() (transport.fast_path()), once accepted.
        self._fast: Any = None
        self._accepted = False
        self._unfed = b""  # received, not yet given to the core: the backlog was full
        self._backlog_bytes = max(BACKLOG_BYTES, self._max_message_size or 0)
        self._outbox = Outbox(self._io)
        self._flusher: threading.Thread | None = None
        # Set on shutdown; made by a 1008 overflow, for the flusher waiting out the close.
        self._shut_event: threading.Event | None = None
        self._close_deadline: float | None = None
        # When the 101 went out; 0.0 until websocket_opened has been sent (its receivers
        # returned): until then websocket_closed is accept()'s to send, not _shutdown()'s.
        self._opened_at = 0.0
        # The view has returned (its finally blocks run) and end_session() is over: what a
        # stopping server waits for (registry.going_away), not only the close.
        self._session_over = False

        # threading.* looked up now, so monkey-patched locks are used under gevent/eventlet.
        self._reading = _new_lock()
        self._writing = _new_lock()
        self._core = _new_lock()

    @property
    def _io_timeout(self) -> float:
        """How long a send may make no progress."""
        return self._ping_timeout or _DEFAULT_IO_TIMEOUT

    def __repr__(self) -> str:
        state = "closed" if self.is_closed() else "open" if self._accepted else "new"
        path = printable(self.request.path)  # it is in log lines: no forged ones
        return f"<DefaultWebSocket {state} {path} via {self._transport.server}>"

    # -- the handshake ----------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        """True once the 101 response is sent, or while another thread or greenlet's
        ``accept()`` takes the connection over: from then on it is no longer the server's,
        so a view that answers with HTTP meanwhile has its session end the connection
        (its close waits for that accept) instead of its answer going to the server."""
        return self._accepted or (self._transport.taken_over and not self._io.shut)

    def accept(self, subprotocol: str | None = None) -> None:
        """Write the 101 response to the raw socket (with the negotiated
        permessage-deflate parameters) and take the connection over. Idempotent.

        Raises ``ValueError`` if ``subprotocol`` was not offered, ``ConnectionClosed``
        if the client is already gone. Blocks only to write the 101."""
        if self._accepted:
            return
        self._check_subprotocol(subprotocol)
        with self._writing:
            if self._accepted:
                return
            if self._io.shut:
                raise self._closed_error()
            # Before the takeover: what saving the session raises leaves the connection
            # the server's, to answer with Django's error.
            cookies = session_cookies(self.request)
            try:
                accepted, opened_at, fast = self._take_over(subprotocol, cookies)
            except BaseException:
                # Whatever failed between the takeover and here (the server's socket,
                # memory, the 101's write, the fast path; a timeout or a greenlet kill
                # too): the connection is ours but neither accepted nor usable. Shut it
                # down, so that the session, which ends only a connection it counts as
                # taken over, gives it back; no signal, since it never opened.
                self._shutdown(1006)
                raise
            with self._core:
                self.subprotocol = subprotocol
                self._accepted = True
                self._fast = fast
        log.opened(
            self._peer(),
            self.request.path,
            self._transport.server,
            subprotocol,
            accepted.compression,
        )
        try:
            self._send_signal(websocket_opened)
        finally:
            # Another thread may have shut the connection down meanwhile (a flusher's
            # write to a client gone right after the 101, a reader's EOF): it left
            # websocket_closed to us, so that no receiver sees it before websocket_opened.
            with self._core:
                self._opened_at = opened_at
                closed = self._io.shut
            if closed:
                self._closed_signal()
        # Feed the first frame now (a ping gets its pong, a close frame shows in
        # is_closed()), unless a reader is at it: it takes _unfed before the socket.
        if self._unfed and self._reading.acquire(blocking=False):
            try:
                if self._unfed:
                    self._receive(self._take_unfed())
            finally:
                self._reading.release()
        if self._outbox:
            self._flush()

    def refuse_session(self) -> bool:
        """See :meth:`WebSocket.refuse_session`: under the write lock, which ``accept()``
        holds from before the takeover to the 101, so that an accept is either under way
        or done (False: the session ends the connection) or will find the connection
        shut and raise before taking anything over (True). Waits at most for an accept
        under way. Idempotent."""
        if self._accepted:
            return False
        with self._writing, self._core:
            if self._accepted or self._transport.taken_over:
                return False
            if not self._io.shut:
                # Shut, not shut down: the socket is the server's, which writes the
                # answer. What groups delivered meanwhile goes nowhere.
                self._io.shut = True
                self.close_code, self.close_reason = 1006, REFUSED_REASON
                self._outbox.take_early()
        return True

    def _take_over(
        self, subprotocol: str | None, cookies: Sequence[tuple[str, str]]
    ) -> tuple[Accepted, float, Any]:
        """Take the connection over from the server, write the 101 (with ``cookies``,
        the session's ``Set-Cookie`` headers, and the messages
        delivered before it) and set up the C fast path (call with ``_writing`` held);
        return the handshake's outcome, when the 101 went out and the fast path (None
        where there is none).

        Raises ``ConnectionClosed`` if the client went away meanwhile; the caller shuts
        the connection down whatever it raises."""
        # First, so that from here on the session counts the connection as ours
        # (``accepted``) even if its view answers with HTTP while this runs in a helper.
        buffered = self._transport.take_over(self._io_timeout, self._io)
        accepted = accept_request(
            self.handshake,
            subprotocol=subprotocol,
            compression=self._compression,
            max_message_size=self._max_message_size,
            max_frame_size=self._max_frame_size,
            extra_headers=cookies,
        )
        conn, response = accepted.connection, accepted.response
        # The client's first frame may have come with the handshake. It is unread
        # input from now on, fed to the core by whoever reads first (the fast path
        # hands it to Python), not kept here while websocket_opened's receivers run:
        # a reader begun meanwhile would wait on the socket for it. Set before the
        # connection counts as accepted, so no reader can have looked yet.
        self._unfed = buffered
        self._io.unfed = bool(buffered)
        with self._core:
            self._conn = conn
            # Messages delivered before the handshake go first: queued in the same step
            # that lets deliver() encode new ones, so none can overtake them. The 101
            # still leads, since we hold the write lock until it is sent.
            for message in self._outbox.take_early():
                self._outbox.append(conn.send_message(message))
                self._io.messages_out += 1
            if self._outbox.early_overflow:
                # They went over the limit: the 1008 close follows the 101 at once,
                # before anything sent or delivered after the handshake.
                self._overflow_locked()
            early = self._outbox.take()
        try:
            self._transport.sock.sendall(response)
            if early:  # not left for after websocket_opened, whose receivers may be slow
                self._transport.sendall(early)
        except OSError as exc:
            logger.debug("Client %s went away during the handshake: %s", self._peer(), exc)
            self._shutdown(1006)
            raise self._closed_error() from None
        opened_at = self._io.last_heard = time.monotonic()
        fast = self._transport.fast_path(
            ws=self,
            io=self._io,
            rx=conn.rx,
            reading=self._reading,
            writing=self._writing,
            core=self._core,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            deflate=accepted.compression,
            deflater=conn.deflate.encoder if conn.deflate is not None else None,
            inflater=conn.deflate.decoder if conn.deflate is not None else None,
            backlog_bytes=self._backlog_bytes,
        )
        return accepted, opened_at, fast

    # -- receiving --------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Message | None:
        """Return the next message, blocking up to ``timeout`` seconds (None or negative:
        forever). Returns None once closed, or when the timeout expires.

        Sends a keepalive ping after ``WEBSOCKET_PING_INTERVAL`` of silence; without an
        answer within ``WEBSOCKET_PING_TIMEOUT`` the peer counts as dead: the connection
        is closed (1011) and None returned. An exception while bytes read from the socket
        are on their way to the view (a ``MemoryError``, or one thrown into the reader)
        loses them: the connection is closed (1011) and the exception propagates; later
        calls return None."""
        if timeout is not None:
            timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        fast = self._fast
        if fast is not None:  # the common case in C; None: it could not decide alone
            message = fast.wait(deadline)
            if message is not None:
                return message  # type: ignore[no-any-return]
        if not self._accepted:
            try:
                self.accept()
            except ConnectionClosed:
                return None
        io = self._io
        while True:
            # Again each time: it may have been made or dropped meanwhile.
            messages: deque[Message] | None = io.messages
            if messages:
                try:
                    return messages.popleft()
                except IndexError:  # another thread took it
                    continue
            conn = self._conn
            if self._io.shut or (conn is not None and conn.state is not _OPEN):  # is_closed()
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            reading = self._reading
            if not (reading.acquire() if remaining is None else reading.acquire(timeout=remaining)):
                return None
            try:
                conn = self._conn
                if not io.messages and not io.shut and (conn is None or conn.state is _OPEN):
                    if deadline is not None:  # the wait for the lock took some of it
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return None
                    self._read_once(remaining)
            finally:
                reading.release()

    def __iter__(self) -> Iterator[Message]:
        """Yield every message until the peer closes the connection (``WebSocket``'s
        loop; in C where the fast path is built, without a Python frame per message, and
        likewise finished for good once an exception came out of it)."""
        if fast_messages is not None and type(self).wait is DefaultWebSocket.wait:
            return fast_messages(self)  # type: ignore[no-any-return]
        return super().__iter__()  # a subclass's own wait() is what iteration must call

    def read(self, fallback: _T | None = None) -> Message | _T | None:
        """Return a message that is ready now, or ``fallback``. Never blocks."""
        try:
            self._ensure_accepted()
        except ConnectionClosed:
            return fallback
        if not self._io.messages:
            self._read_ready()
        messages = self._io.messages
        try:
            return messages.popleft() if messages else fallback
        except IndexError:
            return fallback

    def count_messages(self) -> int:
        """Number of complete messages ready now. Never blocks."""
        try:
            self._ensure_accepted()
        except ConnectionClosed:
            return len(self._io.messages or ())
        self._read_ready()
        return len(self._io.messages or ())

    def _buffered(self) -> tuple[Message, ...]:
        return tuple(self._io.messages or ())

    def _read_once(self, limit: float | None) -> None:
        """Read once (waiting up to ``limit``) and feed the core; run the keepalive.
        Call with ``_reading`` held."""
        if self._unfed:
            self._receive(self._take_unfed())
            return
        wait = limit
        io = self._io
        if self._ping_interval is not None:  # when _keepalive() has something to do
            if not io.ping_outstanding:
                due: float | None = io.last_heard + self._ping_interval
            elif self._ping_timeout is None:
                due = None
            else:
                due = io.ping_sent_at + self._ping_timeout
            if due is not None:
                until_due = due - _monotonic()  # if due, wait_readable() just looks
                if wait is None or until_due < wait:
                    wait = until_due
        if io.messages is not None and not io.messages:
            # An idle connection keeps no queue (an empty deque is a 64-slot block): it
            # is made again by the _feed() that needs it. Both under the read lock.
            io.messages = None
        transport = self._transport
        if not transport.wait_readable(wait):
            self._keepalive()  # if due; else the caller looks at the time again
            return
        try:
            data = transport.recv()
        except (TimeoutError, BlockingIOError, InterruptedError):
            return
        except MemoryError:
            self._lost_received()  # it may have taken bytes off the socket (_lost_received)
            raise
        self._received(data)

    def _received(self, data: bytes) -> None:
        """Act on one read from the socket (b"": EOF). Call with ``_reading`` held; the
        fast path calls it with what it does not handle itself."""
        conn = self._conn
        if conn is not None and conn.deflate is None:
            self._feed(data)
        else:
            self._receive(data)
        # A read that filled the buffer and completed nothing (a frame longer than one
        # read: 64 KiB messages are) likely left the rest in the socket: take it now
        # rather than after another trip through the event loop. At most
        # _MAX_NONBLOCKING_READS reads: control frames complete no message either, and a
        # peer that kept the socket full of them (unsolicited pongs) held this loop, and
        # under gevent every other connection of the worker, for as long as it sent.
        for _ in range(_MAX_NONBLOCKING_READS):
            if len(data) != RECV_SIZE or self._io.messages or self._io.shut:
                break
            try:
                more = self._transport.try_recv()
            except MemoryError:
                self._lost_received()  # see _read_once()
                raise
            if more is None:
                break
            self._receive(more)
            data = more

    def _read_ready(self) -> None:
        """Feed the core whatever the socket has now, without blocking, while the view's
        backlog has room."""
        if self.is_closed() or not self._reading.acquire(blocking=False):
            return
        try:
            for _ in range(_MAX_NONBLOCKING_READS):
                if self.is_closed() or self._backlog_full():
                    break
                if self._unfed:
                    data = self._take_unfed()
                elif not self._transport.wait_readable(0):
                    break
                else:
                    try:
                        data = self._transport.recv()
                    except (TimeoutError, BlockingIOError, InterruptedError):
                        break
                    except MemoryError:
                        self._lost_received()  # see _read_once()
                        raise
                self._receive(data)
        finally:
            self._reading.release()

    def _backlog_full(self) -> bool:
        """Whether the messages waiting for the view are enough not to read on."""
        messages = self._io.messages
        if not messages:
            return False
        if len(messages) >= BACKLOG_MESSAGES:
            return True
        return sum(map(len, messages)) >= self._backlog_bytes

    def _receive(self, data: bytes) -> None:
        """Give ``data`` to the core (see :meth:`_feed`); with permessage-deflate a slice
        at a time, keeping the rest in ``_unfed`` once the backlog is full (uncompressed
        frames cannot expand: one read completes at most its own size in messages).
        Call with ``_reading`` held."""
        conn = self._conn
        if not data or conn is None or conn.deflate is None or len(data) <= _DEFLATE_SLICE:
            self._feed(data)
            return
        taken = 0  # data[:taken] went to _feed(), which fails the connection if it loses it
        try:
            for start in range(0, len(data), _DEFLATE_SLICE):
                if self._io.shut:
                    return
                if self._backlog_full():
                    self._unfed = data[start:]
                    self._io.unfed = True
                    return
                piece = data[start : start + _DEFLATE_SLICE]
                taken = start + len(piece)
                self._feed(piece)
        except BaseException:
            if taken < len(data):  # the rest is neither in the core nor kept in _unfed
                self._lost_received()
            raise

    def _feed(self, data: bytes) -> None:
        """Give received bytes (b"" for EOF) to the core and act on its events. What
        raises before the core and the view's queue have them all fails the connection
        (:meth:`_lost_received`), then propagates."""
        try:
            if data:
                self._io.last_heard = _monotonic()
                self._io.ping_outstanding = False
            with self._core:
                conn = self._conn
                assert conn is not None
                events = conn.receive_data(data)
                out = conn.data_to_send()
                if out:
                    self._outbox.append(out)
            close: Close | None = None
            received = 0
            messages = None
            for event in events:
                if type(event) is str or type(event) is bytes:
                    if messages is None:  # made when needed (see _read_once)
                        messages = self._io.messages
                        if messages is None:
                            messages = self._io.messages = deque()
                    messages.append(event)
                    received += 1
                elif type(event) is Close:
                    close = event
        except BaseException:
            self._lost_received()
            raise
        self._io.messages_in += received
        if out:
            self._flush()
        if close is not None:
            if conn.error is not None:
                protocol_error(self._peer(), self.request.path, conn.error.reason, conn.error.code)
            self._shutdown(close.code, close.reason)

    def _lost_received(self) -> None:
        """Bytes read from the socket were lost before the core or the view's queue took
        them all (memory ran out, an exception was thrown into the reader), or may have
        been: a ``Transport.recv()`` or ``try_recv()`` that raises ``MemoryError`` may
        have read them first (``os.read()`` shrinks its 64 KiB buffer to what it read,
        then the read is counted in ``bytes_in``; both allocate). The stream
        cannot go on, the next read would begin in the middle of a frame. Fail the
        connection (1011), as for a dead peer; the caller re-raises what failed, and
        ``wait()`` returns None from then on. Call with ``_reading`` held; the C fast path
        calls it for what its own receive loop loses (``_fastpath.c``, ``lost_read()``)."""
        try:
            self._abort(1011, _LOST_REASON)
        finally:
            self._shutdown(1011, _LOST_REASON)  # even if the close frame could not go

    # -- keepalive ----------------------------------------------------------------------

    def _keepalive(self) -> None:
        if self._ping_interval is None or self.is_closed():
            return
        now = time.monotonic()
        io = self._io
        if not io.ping_outstanding:
            if now - io.last_heard >= self._ping_interval:
                with self._core:
                    assert self._conn is not None
                    try:
                        self._outbox.append(self._conn.send_ping(b""))
                    except InvalidState:
                        return
                io.ping_sent_at, io.ping_outstanding = now, True
                self._flush()
        elif self._ping_timeout is not None and now - io.ping_sent_at >= self._ping_timeout:
            logger.info(
                "WebSocket peer %s on %s sent nothing within %ss of a ping: closing (1011)",
                self._peer(),
                printable(self.request.path),
                self._ping_timeout,
            )
            metrics.keepalive_timeout()
            self._abort(1011, "keepalive ping timeout")

    # -- sending ----------------------------------------------------------------------

    def send(self, message: str | BytesLike) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame.

        Safe from any thread or greenlet; blocks until the frame is handed to the kernel.
        Raises ``ConnectionClosed`` once the connection is closed (whatever ``message``
        is), ``TypeError`` for anything else than ``str`` or bytes-like."""
        fast = self._fast
        if fast is not None and fast.send(message):  # the common case in C
            return
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            if self.is_closed():  # the None of a wait() that found it closed: send(wait())
                raise self._closed_error()
            raise TypeError(f"cannot send {type(message).__name__}: expected str or bytes")
        if not self._accepted:
            self.accept()
        error: BaseException | None = None
        with self._writing:
            with self._core:
                conn = self._conn
                if self._io.shut or conn is None or conn.state is not _OPEN:
                    raise self._closed_error()
                try:
                    if type(message) is str:
                        frame = conn.send_text(message)
                    else:
                        frame = conn.send_message(message)
                except InvalidState:
                    raise self._closed_error() from None
                except BaseException as exc:
                    if not self._core_failed_locked():
                        raise
                    error = exc
                else:
                    self._io.messages_out += 1
                pending = self._outbox.take()
            if error is not None:
                self._sendall(pending)  # ending with the core's close frame (1011)
                raise error
            if pending and not self._sendall(pending):
                raise self._closed_error()
            if not self._sendall(frame):
                raise self._closed_error()

    def _send_rest(self, rest: bytes) -> None:
        """Write the rest of a frame the fast path's write took in part, as ``send()``
        writes. No other frame can come first: nothing ran since that write."""
        with self._writing:
            if not self._sendall(rest):
                raise self._closed_error()

    def ping(self, data: bytes = b"") -> None:
        """Send a ping frame (at most 125 bytes of ``data``). Raises ``ConnectionClosed``
        once closed, ``ValueError`` if ``data`` is too long."""
        data = bytes(data)
        if len(data) > 125:
            raise ValueError("ping data is limited to 125 bytes (RFC 6455 5.5)")
        self._ensure_accepted()
        with self._core:
            if self.is_closed():
                raise self._closed_error()
            assert self._conn is not None
            try:
                self._outbox.append(self._conn.send_ping(data))
            except InvalidState:
                raise self._closed_error() from None
        if not self._flush():
            raise self._closed_error()

    def deliver(self, message: Message) -> None:
        """Queue ``message`` without blocking (for groups); see the module docstring.

        Past ``WEBSOCKET_SEND_QUEUE_SIZE`` bytes pending, the connection is closed with
        1008. Messages for a closed connection are dropped. Never raises for a broken
        connection: the flusher's write fails and shuts it down. Raises
        ``UnicodeEncodeError`` for a ``str`` UTF-8 cannot encode (a lone surrogate),
        before the handshake as after it, queueing nothing."""
        self._deliver((message,), None)

    def deliver_batch(self, batch: Batch) -> None:
        """:meth:`deliver` for every message of ``batch``, under one lock pair and in at
        most one write now: their frames go out together (those of a connection without
        an extension are the batch's, encoded once for every member)."""
        self._deliver(batch.messages, batch.frames)

    def _deliver(self, messages: Sequence[Message], plain: Callable[[], bytes] | None) -> None:
        flusher = None
        error: BaseException | None = None
        with self._core:
            conn = self._conn
            if self._io.shut or (conn is not None and conn.state is not _OPEN):
                return
            if conn is None:
                self._outbox.add_early(messages, self._queue_limit)
                return
            try:
                frame = conn.send_messages(messages, plain)
            except InvalidState:
                return
            except BaseException as exc:
                if not self._core_failed_locked():
                    raise
                error = exc  # raised once the flusher has the close frame to write
            else:
                if self._outbox.size + len(frame) > self._queue_limit:
                    self._overflow_locked()  # dropped, not sent: not counted in messages_out
                elif (
                    not self._outbox
                    and self._flusher is None
                    and self._writing.acquire(blocking=False)
                ):
                    # Nothing queued and no one writing: one non-blocking write(2) now,
                    # under _core so that no frame the core encodes later can overtake
                    # this one. A flusher per member per group message was most of a
                    # fan-out's cost, and each lock pair more counts: this path takes two
                    # (bench/FINDINGS.md, sections 8 and 12).
                    self._io.messages_out += len(messages)
                    try:
                        sent = self._transport.try_send(frame)
                    except OSError:
                        sent = 0  # the flusher's sendall() fails the same way and shuts down
                    finally:
                        self._writing.release()
                    if sent == len(frame):
                        return
                    self._outbox.append(frame[sent:] if sent else frame, partial=sent > 0)
                else:
                    self._io.messages_out += len(messages)
                    self._outbox.append(frame)
            needed = self._outbox or self._shut_event is not None  # bytes left, or a 1008
            if self._flusher is None and not self._io.shut and needed:
                flusher = self._flusher = threading.Thread(
                    target=self._run_flusher, name="dwebsocket-flusher", daemon=True
                )
        if flusher is not None:
            flusher.start()
        if error is not None:
            raise error

    def _core_failed_locked(self) -> bool:
        """After an encoding error: whether the core failed the connection over it (a
        compression that failed part way, ``Connection.send_text()``), its close frame
        (1011) then queued last in the outbox (call with ``_core`` held). No frame may
        follow it: the peer could not decode one."""
        assert self._conn is not None
        out = self._conn.data_to_send()
        if not out:
            return False
        self._closing(self._conn.close_code or 1011, self._conn.close_reason)
        self._outbox.append(out)
        return True

    def _overflow_locked(self) -> None:
        """Drop what is queued and close with 1008 (call with ``_core`` held)."""
        log.slow_reader(self._peer(), self.request.path, self._queue_limit)
        assert self._conn is not None
        self._outbox.drop_whole_frames()
        out = self._conn.send_close(1008, "send queue overflow")
        if out:
            metrics.group_member_dropped()
            self._closing(1008, "send queue overflow")
            self._outbox.append(out)
            self._shut_event = threading.Event()

    def _run_flusher(self) -> None:
        try:
            while True:
                with self._writing:
                    with self._core:
                        if self._io.shut or not self._outbox:
                            if self._shut_event is None or self._io.shut:
                                self._flusher = None
                                return
                            break
                        data = self._outbox.take()
                    self._sendall(data)
            self._linger()
        except BaseException:
            with self._core:
                self._flusher = None
            raise

    def _linger(self) -> None:
        """After a 1008 close, give the peer until the close timeout to answer, then shut
        down: that also ends a ``wait()`` blocked in the view, which otherwise would only
        notice at its next keepalive (or never, without one). Runs in the flusher."""
        event, deadline = self._shut_event, self._close_deadline
        assert event is not None and deadline is not None
        if not event.wait(max(0.0, deadline - time.monotonic())):
            logger.debug("No close frame from %s within %ss", self._peer(), self._close_timeout)
            self._shutdown()
        with self._core:
            self._flusher = None

    def _take_unfed(self) -> bytes:
        """The received bytes kept back for the backlog (call with ``_reading`` held)."""
        data, self._unfed = self._unfed, b""
        self._io.unfed = False
        return data

    def _flush(self, until: float | None = None) -> bool:
        """Write everything queued; False if the connection broke, or if another writer
        still held the connection at ``until`` (a ``time.monotonic()`` deadline)."""
        if until is None:
            self._writing.acquire()
        else:
            remaining = until - time.monotonic()
            acquired = (
                self._writing.acquire(timeout=remaining)
                if remaining > 0
                else self._writing.acquire(blocking=False)
            )
            if not acquired:
                return False
        try:
            with self._core:
                data = self._outbox.take()
            return not data or self._sendall(data)
        finally:
            self._writing.release()

    def _sendall(self, data: bytes) -> bool:
        """Write ``data`` (call with ``_writing`` held); on failure shut down, False.
        Any other exception (a ``MemoryError`` once the kernel took part of it, a
        ``gevent.Timeout`` or a kill while the rest waits for room) fails the connection
        (:meth:`_write_interrupted`) and goes on."""
        if self._io.shut:
            return False
        try:
            self._transport.sendall(data)
        except OSError as exc:
            if not self._io.shut:  # else it failed because we shut the connection down
                logger.debug("WebSocket write to %s failed: %r", self._peer(), exc)
            self._shutdown(1006)
            return False
        except BaseException:
            self._write_interrupted()
            raise
        return True

    def _write_interrupted(self) -> None:
        """A write raised with part of a frame maybe on the wire and its rest lost (how
        much of it went, ``sock.sendall()`` does not say): the next frame would land in
        its middle, and the peer read it as payload. So shut down (1006: no close frame
        can follow); the caller re-raises. The C fast path calls it for its own send once
        the kernel took part of a frame (``_fastpath.c``, ``lost_write()``)."""
        self._shutdown(1006, _INTERRUPTED_REASON)

    # -- closing ----------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake: send a close frame, wait up to
        ``WEBSOCKET_CLOSE_TIMEOUT`` for the peer's (data arriving meanwhile is
        discarded), then shut the connection down. Idempotent. Raises ``ValueError`` for
        a code that may not be sent or a reason over 123 bytes of UTF-8."""
        if self._io.shut:
            return
        if not self._accepted:
            try:
                self.accept()
            except ConnectionClosed:
                return
        if self._start_close(code, reason):
            self._await_peer_close()
            self._shutdown()

    def _start_close(self, code: int, reason: str) -> bool:
        """The first half of :meth:`close` (call once accepted): queue our close frame, if
        none was, and write it; False if the connection was shut down already. The
        registry's exit hook sends every goodbye so before awaiting any answer."""
        with self._core:
            if self._io.shut:
                return False
            assert self._conn is not None
            out = self._conn.send_close(code, reason)
            if out:
                self._closing(code, reason)
                self._outbox.append(out)
        # Another writer (the view, the send queue's flusher) blocked on a peer that reads
        # nothing holds the connection until its I/O timeout (WEBSOCKET_PING_TIMEOUT):
        # wait for it no longer than the closing handshake may take; close() then shuts
        # down, which fails that write at once (a stopping server's goodbye waited 20 s).
        self._flush(until=self._close_deadline or time.monotonic() + self._close_timeout)
        return True

    def _closing(self, code: int, reason: str) -> None:
        """We sent the first close frame (call with ``_core`` held)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._close_deadline = time.monotonic() + self._close_timeout

    def _await_peer_close(self) -> None:
        deadline = self._close_deadline or time.monotonic() + self._close_timeout
        while not self._io.shut and self._conn is not None and self._conn.state is not _CLOSED:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.debug("No close frame from %s within %ss", self._peer(), self._close_timeout)
                return
            if not self._reading.acquire(timeout=remaining):
                return  # a reader in another thread will see the close frame
            try:
                if self._io.shut or self._conn.state is _CLOSED:
                    return
                if self._unfed:
                    self._receive(self._take_unfed())
                elif self._transport.wait_readable(remaining):
                    try:
                        data = self._transport.recv()
                    except (TimeoutError, BlockingIOError, InterruptedError):
                        continue
                    except MemoryError:
                        self._lost_received()  # see _read_once()
                        raise
                    self._receive(data)
                self._io.messages = None
            finally:
                self._reading.release()

    def _abort(self, code: int, reason: str = "") -> None:
        """Send a close frame if we can without waiting for the peer, then shut down.
        Another writer (a stop's goodbye writing its close frame) is waited for, at most
        ``WEBSOCKET_CLOSE_TIMEOUT`` as :meth:`close` would: shutting down under it cut
        that frame, and the client got no close at all."""
        if self._io.shut:
            return
        with self._core:
            if self._conn is not None:
                out = self._conn.send_close(code, reason)
                if out:
                    self._closing(code, reason)
                    self._outbox.append(out)
        if self._writing.acquire(blocking=False) or (
            self._close_timeout > 0 and self._writing.acquire(timeout=self._close_timeout)
        ):
            try:
                with self._core:
                    data = self._outbox.take()
                if data:
                    self._sendall(data)
            finally:
                self._writing.release()
        self._shutdown()

    def end_session(self, code: int, *, abort: bool = False) -> None:
        """Called by dwebsocket when the view is done (see ``dwebsocket.session``):
        close (or, for a killed view, abort) and leave nothing running on the socket."""
        try:
            if abort:
                self._abort(code)
            else:
                self.close(code)
        finally:
            self._shutdown()
            flusher = self._flusher
            # deliver() publishes the flusher under the lock and starts it after: one not
            # started yet will find the session shut and exit without touching the socket.
            if (
                flusher is not None
                and flusher.ident is not None
                and flusher is not threading.current_thread()
            ):
                flusher.join(self._io_timeout)
            self._transport.release()
            self._session_over = True

    def _shutdown(self, code: int | None = None, reason: str = "") -> None:
        """Shut the transport down once; record the close code; tell the world."""
        with self._core:
            if self._io.shut:
                return
            self._io.shut = True
            self._fast = None  # it holds this object: let the cycle go
            if self.close_code is None:
                self.close_code = code if code is not None else 1006
                self.close_reason = reason
            event = self._shut_event
            # websocket_opened sent: websocket_closed is ours. Being sent (accepted, its
            # receivers running in accept()): accept() sends it after them. Never sent
            # (the 101 or what follows it could not be written): neither is sent.
            opened = self._opened_at != 0.0
        self._transport.shutdown()
        if event is not None:
            event.set()
        if opened:
            self._closed_signal()

    def _closed_signal(self) -> None:
        """Log the close and send ``websocket_closed``: once, after ``websocket_opened``
        (by ``_shutdown`` or, if that ran while ``websocket_opened`` was being sent, by
        ``accept``)."""
        log.closed(
            self._peer(), self.request.path, self.close_code, self.close_reason, self._opened_at
        )
        self._send_signal(websocket_closed, code=self.close_code)

    def traffic(self) -> metrics.Traffic:
        """Data messages and bytes received and sent since the 101 (for
        :mod:`dwebsocket.metrics`). Never blocks."""
        io = self._io
        return metrics.Traffic(io.messages_in, io.bytes_in, io.messages_out, io.bytes_out)

    def is_closed(self) -> bool:
        """True once a close frame was sent or received, or the connection broke."""
        conn = self._conn
        return self._io.shut or (conn is not None and conn.state is not _OPEN)

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code or 1006, self.close_reason)

    # -- helpers ----------------------------------------------------------------------

    def _peer(self) -> str:
        return log.peer(self.request.META)
