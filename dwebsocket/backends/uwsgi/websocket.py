"""``request.websocket`` on uWSGI: frames are read and written by uWSGI's websocket API
(``uwsgi.websocket_recv_nb`` / ``websocket_send`` / ``websocket_send_binary``); this
module works around what that API gets wrong where our side can.

What uWSGI decides in C and we cannot change (empty pongs, the process-wide fragment
buffer, the crash on a lone continuation frame, per-frame size limits, the opcode lost
on receive) is listed in ``docs/backends.rst``, each with a test.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import uwsgi  # type: ignore[import-untyped]

from dwebsocket import log, metrics
from dwebsocket.backends import BACKLOG_BYTES, BACKLOG_MESSAGES
from dwebsocket.conf import settings
from dwebsocket.db import release_idle_connections
from dwebsocket.exceptions import ConnectionClosed, InvalidState, TooManyConnections
from dwebsocket.handshake import session_cookies
from dwebsocket.limits import RETRY_AFTER
from dwebsocket.log import printable, protocol_error
from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.frames import Opcode, encode_close_payload, encode_frame
from dwebsocket.protocol.handshake import HandshakeRequest, accept_key
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.typing import BytesLike, Message
from dwebsocket.websocket import REFUSED_REASON, WebSocket, wait_timeout

from . import wsgi
from .loops import Mode, Waiter, current_mode, owner_key

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["uWsgiWebSocket"]

logger = logging.getLogger("dwebsocket")
_T = TypeVar("_T")

# uwsgi.websocket_recv_nb() returns this one byte for each non-final fragment it stored
# (core/websockets.c, uwsgi_websockets_parse): not a message.
_FRAGMENT_PLACEHOLDER = b"\x00"
_TEXT, _BINARY, _PING = "text", "binary", "ping"
_OVERFLOW = (1008, "send queue overflow")
# A wait() that finds a message ready does not wait: under --gevent and --async, after this
# many seconds without waiting it lets the worker's loop run once all the same.
_FAIR_SHARE = 0.01
_warned_no_wrapper = False


def _decode(data: bytes) -> Message:
    # uWSGI drops the opcode: a payload that is valid UTF-8 is taken for text.
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


@contextlib.contextmanager
def _borrowed_socket(fd: int) -> Iterator[socket.socket]:
    """A socket object over uWSGI's ``fd`` itself (no dup: a worker out of file
    descriptors must still see and shut its connections), given back on exit. Of the
    interpreter's own class also where gevent has monkey-patched ``socket``
    (``--gevent-early-monkey-patch``): gevent's ``recv()`` waits for data despite
    ``MSG_DONTWAIT``."""
    cls: type[socket.socket] = socket.socket
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        cls = monkey.get_original("socket", "socket")
    sock = cls(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


#: What creating a connection's fds fails with when the worker or the system has no
#: file descriptors (or memory) to spare: a refusal (503), not an error.
_NO_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# Django logs that 503 (django.utils.log.log_response) through the unicode_escape codec,
# whose module Python imports at its first use: a worker with no fd left to open it would
# answer the refusal with a traceback instead. Looked up (and cached) now.
codecs.lookup("unicode_escape")
_NO_FDS_WARNING_EVERY = 60.0  # seconds: one line per episode, not one per handshake
_warned_no_fds_at: float | None = None


def _warn_no_fds(exc: OSError) -> None:
    global _warned_no_fds_at
    now = time.monotonic()
    if _warned_no_fds_at is not None and now - _warned_no_fds_at < _NO_FDS_WARNING_EVERY:
        return
    _warned_no_fds_at = now
    logger.warning(
        "WebSocket handshakes refused with 503: this uWSGI worker is out of file "
        "descriptors (%s); raise its limit (ulimit -n, --max-fd)",
        exc.strerror,
    )


def _uwsgi_option(name: str, default: int) -> int:
    value = uwsgi.opt.get(name)
    if isinstance(value, list):
        value = value[-1]
    try:
        return int(value) if value not in (None, True) else default
    except (TypeError, ValueError):
        return default


class uWsgiWebSocket(WebSocket):
    """One WebSocket connection served through uWSGI's websocket API.

    Must be created in the request's own greenlet/thread/core (the *owner*): only there
    may uWSGI's API be called. ``wait``, ``read`` and ``accept`` are the owner's;
    ``send``, ``deliver``, ``ping`` and ``close`` work from anywhere: from another
    greenlet or thread they hand the frame to the owner (a bounded queue of
    ``WEBSOCKET_SEND_QUEUE_SIZE`` bytes) and wake it; the owner writes it the next time
    it is inside one of its websocket calls (a view waiting in ``wait()`` or iterating
    writes it at once). Once the view answered with HTTP unaccepted, they raise
    ``ConnectionClosed`` (1006), as ``accept()`` does from anywhere.
    """

    def __init__(self, request: HttpRequest, handshake: HandshakeRequest) -> None:
        self.request = self._request = request
        self._environ: dict[str, Any] = request.META
        self._handshake = handshake
        self.offered_subprotocols = list(handshake.subprotocols)
        self.subprotocol = None
        # messages in, payload bytes in, messages out, payload bytes out (uWSGI frames them)
        self._counted = [0, 0, 0, 0]
        self.close_code = None
        self.close_reason = ""

        self._mode: Mode = current_mode()
        self._owner = owner_key(self._mode)
        self._fd: int = uwsgi.connection_fd()
        # The fds the connection needs are taken now, before the view runs: a worker out
        # of them refuses the handshake with 503 instead of sending a 101 it cannot serve.
        try:
            self._waiter = Waiter(self._mode, self._fd)
        except OSError as exc:
            if exc.errno not in _NO_FDS:
                raise
            _warn_no_fds(exc)
            raise TooManyConnections(
                "the server cannot open more connections right now; retry later", RETRY_AFTER
            ) from None
        self._finalizer = weakref.finalize(self, self._waiter.close)
        # The WSGI wrapper releases them as the request ends, whatever the view answered.
        self._environ[wsgi.CONNECTION] = self

        self._accepted = False
        self._refused = False  # refuse_session(): the view answered with HTTP
        # websocket_opened was sent (its receivers returned): until then websocket_closed
        # is accept()'s to send, not _finish()'s (a receiver may close the connection).
        self._opened = False
        self._closed = False  # the owner has finished with the connection
        self._received: deque[Message] = deque()
        # The peer ended its side of TCP (EOF) after messages the view has not taken yet:
        # uWSGI's API is done with the connection (see _peer_gone()), the socket still
        # writable. The connection ends once the view asks for more than was received.
        self._peer_eof = False
        # The view's backlog, as the default backend bounds it: with this many messages
        # (or bytes of them: len() of each, as there) waiting for the view, uWSGI is
        # asked for no more, so the socket is left unread and TCP pushes the peer back.
        self._received_size = 0

        # Shared with other greenlets/threads; never held across a blocking call.
        self._lock = threading.Lock()
        self._outbox: deque[tuple[str, Any]] = deque()
        self._outbox_bytes = 0
        self._closing: tuple[int, str] | None = None  # close requested, not yet done
        # Deliveries before the handshake went over the queue limit. Not a close yet, as
        # with the default backend: the view may still refuse over HTTP; if it accepts,
        # the 1008 follows the 101.
        self._overflowed_early = False

        self._max_message_size: int | None = settings.WEBSOCKET_MAX_MESSAGE_SIZE
        self._queue_limit: int = settings.WEBSOCKET_SEND_QUEUE_SIZE
        self._close_timeout: float = settings.WEBSOCKET_CLOSE_TIMEOUT
        # uWSGI pings and checks pongs only inside websocket_recv_nb(): call it at least
        # this often even when nothing arrives, or a dead peer is never noticed.
        self._keepalive = max(1, _uwsgi_option("websocket-ping-freq", 30))
        # uWSGI gives up on a peer that sent no pong this long after its ping.
        self._pong_tolerance = max(1, _uwsgi_option("websocket-pong-tolerance", 3))
        # uWSGI's sends give up after this long without progress (--socket-timeout; its
        # gevent loop raises it to 30 s); a message written by hand (see _peer_gone())
        # gets this long in all.
        self._send_timeout = max(1, _uwsgi_option("socket-timeout", 4))
        if self._mode is Mode.GEVENT:
            self._send_timeout = max(30, self._send_timeout)
        # When the peer was last seen sending anything (see _silent()).
        self._heard = 0.0
        # When the owner last let the worker's loop run (wait(): see _FAIR_SHARE).
        self._yielded = 0.0
        self._opened_at = 0.0  # when the 101 went out (for the log)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._accepted else "new"
        return f"<uWsgiWebSocket fd={self._fd} {state} {self._mode.value}>"

    # -- who is calling --------------------------------------------------------------

    def _is_owner(self) -> bool:
        return owner_key(self._mode) == self._owner

    def _require_owner(self, what: str) -> None:
        if not self._is_owner():
            raise InvalidState(
                f"{what}() on a uWSGI websocket must be called from the request's own "
                "greenlet/thread: uWSGI allows its API nowhere else"
            )

    # -- the handshake ----------------------------------------------------------------

    def accept(self, subprotocol: str | None = None) -> None:
        """Send the 101 response choosing ``subprotocol``. Owner only; idempotent.

        With the WSGI wrapper (:mod:`dwebsocket.backends.uwsgi.wsgi`) the response is
        ours (no subprotocol header unless one is chosen); without it uWSGI's
        ``websocket_handshake`` writes it. Raises ``ValueError`` for a subprotocol the
        client did not offer, ``ConnectionClosed`` if the client is gone."""
        if self._accepted:
            return
        if self._refused:  # whoever asks: the view answered with HTTP, for good
            raise ConnectionClosed(1006, REFUSED_REASON)
        self._require_owner("accept")
        if self._closed:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        self._check_subprotocol(subprotocol)
        cookies = session_cookies(self._request)
        try:
            self._send_handshake(subprotocol, cookies)
        except OSError:
            self._closed = True
            self.close_code = 1006
            raise ConnectionClosed(1006, "") from None
        self.subprotocol = subprotocol
        with self._lock:
            self._accepted = True
            dropped = self._overflowed_early
            if dropped:
                self._closing = _OVERFLOW  # before any close asked for meanwhile
        if dropped:
            self._dropped()
        self._heard = self._opened_at = time.monotonic()
        self._environ[wsgi.TAKEN_OVER] = self
        log.opened(self._peer(), self._request.path, "uwsgi backend", subprotocol, False)
        try:
            self._send_signal(websocket_opened)
        finally:
            # A receiver may have closed the connection (close(), or a send() to a client
            # already gone): _finish() left websocket_closed to us, so that no receiver
            # sees it before websocket_opened.
            self._opened = True
            if self._closed:
                self._closed_signal()
        # Anything other greenlets queued before the handshake goes out now.
        self._flush_outbox()

    def _send_handshake(self, subprotocol: str | None, cookies: list[tuple[str, str]]) -> None:
        start_response = self._environ.get(wsgi.START_RESPONSE)
        if start_response is not None:
            headers = [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(self._handshake.key)),
            ]
            if subprotocol is not None:
                headers.append(("Sec-WebSocket-Protocol", subprotocol))
            headers.extend(cookies)
            write = start_response("101 Switching Protocols", headers)
            # An empty write makes uWSGI send the headers now (and mark them sent).
            write(b"")
            return
        global _warned_no_wrapper
        if not _warned_no_wrapper:
            _warned_no_wrapper = True
            logger.warning(
                "The uwsgi backend runs without its WSGI wrapper: Django's request_finished "
                "will not fire after WebSocket requests, and a session written during a "
                "handshake sends no cookie with its 101. Serve "
                "dwebsocket.backends.uwsgi.wsgi.get_wsgi_application() (see docs/deployment)."
            )
        # Always pass the protocol: with none, uWSGI echoes the client's whole offer.
        uwsgi.websocket_handshake(
            self._handshake.key, self._handshake.origin or "", subprotocol or ""
        )

    def refuse_session(self) -> bool:
        """See :meth:`WebSocket.refuse_session`. Only the owner accepts, and the session
        runs there: the lock orders the refusal against other threads' ``send()``, which
        raise ``ConnectionClosed`` from then on instead of queueing for an owner that
        will never write. Never blocks; idempotent."""
        with self._lock:
            if self._refused:
                return True
            if self._accepted or self._closed or self._closing is not None:
                return False
            self._refused = self._closed = True
            self.close_code, self.close_reason = 1006, REFUSED_REASON
            # Queued before the answer (a send() that returned, a delivery): never written.
            self._outbox.clear()
            self._outbox_bytes = 0
            self._overflowed_early = False
        return True

    # -- receiving ----------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Message | None:
        self._require_owner("wait")
        try:
            self._ensure_accepted()
        except ConnectionClosed:
            return None
        timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._service()
            if self._received:
                now = time.monotonic()
                if now - self._yielded >= _FAIR_SHARE:
                    # A peer that keeps a message ready (a flood, a burst) kept this core
                    # from ever waiting: the worker's other connections and requests
                    # waited until it stopped.
                    self._yielded = now
                    self._waiter.let_others_run()
                return self._take()
            if self._closed:
                return None
            delay: float = self._keepalive
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                delay = min(delay, remaining)
            release_idle_connections()  # as Django would between requests (dwebsocket.db)
            self._waiter.wait(delay)
            self._yielded = time.monotonic()

    def read(self, fallback: _T | None = None) -> Message | _T | None:
        self._require_owner("read")
        if not self._received:
            try:
                self._ensure_accepted()
            except ConnectionClosed:
                return fallback
            self._service()
        if self._received:
            return self._take()
        return fallback

    def count_messages(self) -> int:
        if self._is_owner() and not self._closed:
            try:
                self._ensure_accepted()
            except ConnectionClosed:
                return len(self._received)
            self._service()
        return len(self._received)

    def _buffered(self) -> tuple[Message, ...]:
        return tuple(self._received)

    def _take(self) -> Message:
        """Owner: the oldest message waiting for the view (there is one)."""
        message = self._received.popleft()
        self._received_size -= len(message)
        return message

    def _backlog_full(self) -> bool:
        """Whether the messages waiting for the view are enough not to take more from
        uWSGI (``dwebsocket.backends.default.websocket``'s limits)."""
        return len(self._received) >= BACKLOG_MESSAGES or self._received_size >= max(
            BACKLOG_BYTES, self._max_message_size or 0
        )

    def _service(self) -> None:
        """Owner: write what others queued, then take every complete message uWSGI has,
        while the view's backlog has room: a peer sending faster than the view consumes
        is pushed back by TCP instead of held here (it grew without bound). uWSGI holds at
        most a read's worth meanwhile, and each call here asks it again."""
        self._flush_outbox()
        if self._closed:
            return
        if self._peer_eof:
            if not self._received:
                self._finish(1006, "")
            return
        max_size = self._max_message_size
        silent = self._silent()
        while not self._backlog_full():
            try:
                data = uwsgi.websocket_recv_nb()
            except OSError as exc:
                logger.debug(
                    "uWSGI's websocket_recv_nb failed for %s: %s",
                    printable(self._request.path),
                    exc,
                )
                if silent:
                    self._keepalive_timeout()
                else:
                    self._peer_gone()
                return
            silent = False
            if not data:
                # Nothing ready -- or an empty message, which recv_nb cannot tell apart.
                return
            self._heard = time.monotonic()
            if data == _FRAGMENT_PLACEHOLDER:
                continue
            if max_size is not None and len(data) > max_size:
                reason = f"message of {len(data)} bytes exceeds {max_size}"
                protocol_error(self._peer(), self._request.path, reason, 1009)
                self._close_now(1009, reason, fail=True)
                return
            message = _decode(data)
            self._received.append(message)
            self._received_size += len(message)
            counted = self._counted
            counted[0] += 1
            counted[1] += len(data)

    def _silent(self) -> bool:
        """Whether the peer sent nothing for ``--websocket-pong-tolerance`` seconds and
        nothing waits in the socket now. If so, a ``websocket_recv_nb()`` that fails is
        uWSGI's keepalive giving up (no pong in time), not the peer's close frame: uWSGI
        answers a close frame as it completes, so its bytes would have been waiting now
        (or read with a message since). Peeks only after such a silence."""
        now = time.monotonic()
        if now - self._heard < self._pong_tolerance:
            return False
        try:
            if self._peek() is None:
                return True
        except OSError:
            pass
        self._heard = now  # bytes, EOF or an error: not silence
        return False

    def _keepalive_timeout(self) -> None:
        """uWSGI's keepalive gave up on the peer: close with 1011, as the default backend
        does when ``WEBSOCKET_PING_TIMEOUT`` runs out (uWSGI itself just stops)."""
        logger.info(
            "WebSocket peer %s on %s sent nothing within %ss of a ping: closing (1011)",
            self._peer(),
            printable(self._request.path),
            self._pong_tolerance,
        )
        metrics.keepalive_timeout()
        self._close_now(1011, "keepalive ping timeout", wait=False)

    def _peer_gone(self) -> None:
        """uWSGI's recv failed: the peer's close frame (uWSGI already answered it, without
        a status code, and dropped the peer's), EOF, or a limit uWSGI enforces.

        At EOF with messages still waiting for the view (a client that sent its last
        message, then shut down its write side), the connection stays up for the view to
        take and answer them, as on the default backend; it ends (1006) once the view
        asks for more. uWSGI's send API refuses from now on (its recv marked the
        connection closed): _write_message() frames by hand."""
        try:
            eof = self._peek() == b""
        except OSError:  # reset: gone both ways
            self._finish(1006, "")
            return
        if eof and self._received:
            self._peer_eof = True
            return
        self._finish(1006 if eof else 1005, "")

    def _peek(self) -> bytes | None:
        """The next byte waiting in the socket (b"": EOF), None if none is. Never blocks;
        raises ``OSError``."""
        with _borrowed_socket(self._fd) as sock:
            try:
                return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None

    # -- sending -------------------------------------------------------------------------

    def send(self, message: str | BytesLike) -> None:
        if not isinstance(message, (str, BytesLike)) and self.is_closed():
            raise self._closed_error()  # the None of a wait() that found it closed
        kind, payload = self._frame_kind(message)
        if self._is_owner():
            if self._closed:
                raise self._closed_error()
            # Accept even when a close was asked for meanwhile: the close needs the
            # handshake (accept() runs it), and the session must not answer with HTTP.
            self._ensure_accepted()
            if self._closed or self._closing is not None:
                raise self._closed_error()
            self._flush_outbox()
            self._write_message(kind, payload)
            if self._closed:
                raise self._closed_error()
            return
        if not self._enqueue(kind, payload):
            raise self._closed_error()

    def deliver(self, message: Message) -> None:
        kind, payload = self._frame_kind(message)
        self._enqueue(kind, payload)

    def ping(self, data: bytes = b"") -> None:
        data = bytes(data)
        if len(data) > 125:
            raise ValueError("ping data must be at most 125 bytes")
        if not self._is_owner():
            if not self._enqueue(_PING, data):
                raise self._closed_error()
            return
        if self._closed:
            raise self._closed_error()
        self._ensure_accepted()  # as in send()
        if self._closed or self._closing is not None:
            raise self._closed_error()
        self._flush_outbox()
        self._write_control(encode_frame(Opcode.PING, data))
        if self._closed:
            raise self._closed_error()

    @staticmethod
    def _frame_kind(message: str | BytesLike) -> tuple[str, bytes]:
        if isinstance(message, str):
            return _TEXT, message.encode()
        if isinstance(message, BytesLike):
            return _BINARY, bytes(message)
        raise TypeError(f"message must be str or bytes-like, not {type(message).__name__}")

    def _closed_error(self) -> ConnectionClosed:
        if self._closing is not None and not self._closed:
            return ConnectionClosed(*self._closing)
        if self._overflowed_early and not self._closed:
            return ConnectionClosed(*_OVERFLOW)
        return ConnectionClosed(self.close_code or 1006, self.close_reason)

    def _enqueue(self, kind: str, payload: bytes) -> bool:
        """Hand a frame to the owner; never blocks. False if the connection is closed (the
        frame is dropped). Past the queue limit the connection is closed with 1008."""
        with self._lock:
            if self._closed or self._closing is not None or self._overflowed_early:
                return False
            size = len(payload)
            if self._outbox_bytes + size > self._queue_limit:
                # A member that cannot keep up must not hold memory or delay the others.
                self._outbox.clear()
                self._outbox_bytes = 0
                dropped = self._accepted
                if dropped:
                    self._closing = _OVERFLOW
                else:
                    self._overflowed_early = True  # counted by accept(), as by default
                overflow = True
            else:
                self._outbox.append((kind, payload))
                self._outbox_bytes += size
                overflow = dropped = False
        if dropped:
            self._dropped()
        self._waiter.wake()
        return not overflow

    def _dropped(self) -> None:
        """The send queue overflowed on an accepted connection: it closes with 1008."""
        log.slow_reader(self._peer(), self._request.path, self._queue_limit)
        metrics.group_member_dropped()

    def _flush_outbox(self) -> None:
        """Owner: write the frames other greenlets/threads queued, in order; then run the
        close they asked for, if any."""
        if not self._accepted:
            return
        self._write_queued()
        with self._lock:
            closing = None if self._closed else self._closing
        if closing is not None:
            self._close_now(*closing)

    def _write_queued(self) -> None:
        """Owner: write the frames queued so far, in order, until none is left."""
        while not self._closed:
            with self._lock:
                if not self._outbox:
                    return
                kind, payload = self._outbox.popleft()
                self._outbox_bytes -= len(payload)
            if kind == _PING:
                self._write_control(encode_frame(Opcode.PING, payload))
            else:
                self._write_message(kind, payload)

    def _write_message(self, kind: str, payload: bytes) -> None:
        if self._peer_eof:  # uWSGI's send refuses (see _peer_gone()): by hand
            opcode = Opcode.TEXT if kind == _TEXT else Opcode.BINARY
            if not self._write_raw(encode_frame(opcode, payload), self._send_timeout):
                self._finish(1006, "")
                return
        else:
            try:
                if kind == _TEXT:
                    uwsgi.websocket_send(payload)
                else:
                    uwsgi.websocket_send_binary(payload)
            except OSError:
                # uWSGI gave up writing (peer gone, or no progress for --socket-timeout).
                self._finish(1006, "")
                return
        counted = self._counted
        counted[2] += 1
        counted[3] += len(payload)

    def traffic(self) -> metrics.Traffic:
        """Data messages and their payload bytes received and sent (uWSGI does the framing,
        so frame headers are not counted), for :mod:`dwebsocket.metrics`."""
        return metrics.Traffic(*self._counted)

    def _write_control(self, frame: bytes) -> None:
        """Write a control frame uWSGI has no API for, straight to the connection."""
        if not self._write_raw(frame, self._close_timeout):
            self._finish(1006, "")

    def _write_raw(self, data: bytes, timeout: float) -> bool:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                written = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._waiter.wait_connection(
                    write=True, timeout=remaining
                ):
                    return False
                continue
            except OSError:
                return False
            view = view[written:]
        return True

    # -- closing -------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close handshake with a real status code (uWSGI has no API for one: the frame
        is written by hand), bounded by ``WEBSOCKET_CLOSE_TIMEOUT``. Idempotent. From
        another greenlet/thread: asks the owner to close and returns at once."""
        encode_close_payload(code, reason)  # ValueError now, not in the owner later
        if not self._is_owner():
            with self._lock:
                if self._closed or self._closing is not None:
                    return
                self._closing = (code, reason)
            self._waiter.wake()
            return
        if self._closed:
            return
        if not self._accepted:
            try:
                self.accept()
            except ConnectionClosed:
                return
        self._flush_outbox()
        self._close_now(code, reason)

    def end_session(self, code: int, *, abort: bool = False) -> None:
        """Called once the view is over: close (without waiting for the peer's close
        frame if ``abort``), then release the connection's fds."""
        try:
            if not self._accepted and self._closing is not None and self._is_owner():
                # close() from another thread before the handshake: the default backend
                # runs it there and then (101 and close frame), whatever the view does
                # next; here only this core can, so it does now (accept() runs it).
                with contextlib.suppress(ConnectionClosed):
                    self.accept()
            elif self._accepted and not self._closed and self._is_owner():
                if abort:
                    self._close_now(code, "", wait=False)
                else:
                    self.close(code)
        finally:
            try:
                if self._accepted and not self._closed and self._is_owner():
                    # Killed before it could close (a request timeout while a queued
                    # frame was written): ended all the same, websocket_closed included.
                    self._finish(code, "")
            finally:
                self.release()

    def _close_now(self, code: int, reason: str, *, wait: bool = True, fail: bool = False) -> None:
        """Owner: write what is queued, send our close frame, wait for the peer's
        (bounded), end the connection. With ``fail`` (the peer broke the rules: RFC 6455
        7.1.7, *Fail the WebSocket Connection*) the peer's close frame is not waited for,
        as on the default backend: that wait would block the view's ``read()`` or
        ``count_messages()``. Without ``wait`` (a killed view, a dead peer) only the close
        frame is tried: what is queued is dropped with the connection."""
        if self._closed:
            return
        protocol = Connection(max_message_size=None)
        frame = protocol.send_close(code, reason)
        with self._lock:
            self._closing = (code, reason)
        try:
            if wait:
                # No send() queues a frame from here on (they raise): those that returned
                # before go out ahead of the close frame, as on the default backend.
                self._write_queued()
            written = not self._closed and self._write_raw(frame, self._close_timeout)
            if written and wait and not fail:
                self._await_close_frame(protocol)
        finally:
            # Also when the wait is killed (a request timeout, a greenlet kill): the
            # connection is over either way, and websocket_closed must be sent.
            self._finish(code, reason)

    def _await_close_frame(self, protocol: Connection) -> None:
        # uWSGI would answer the peer's close frame with a second close frame: read the
        # reply ourselves. Any partial frame left in uWSGI's buffer makes this parse
        # fail, which ends the wait early -- the bound is the timeout anyway.
        deadline = time.monotonic() + self._close_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._waiter.wait_connection(write=False, timeout=remaining):
                return
            try:
                data = os.read(self._fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            for event in protocol.receive_data(data):
                if isinstance(event, Close):
                    return
            if not data:
                return

    def _finish(self, code: int, reason: str) -> None:
        """The connection is over: record why, drop what is queued, shut TCP down so the
        client sees the end now (uWSGI closes the fd when the request ends)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            self._closing = None
            self._outbox.clear()
            self._outbox_bytes = 0
        self.close_code, self.close_reason = code, reason
        try:
            with _borrowed_socket(self._fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Groups leave on this; the owner sends it (it is the only one that closes), once
        # websocket_opened's receivers have returned (else accept() sends it after them).
        if self._opened:
            self._closed_signal()

    def _closed_signal(self) -> None:
        """Log the close and send ``websocket_closed``: once, after ``websocket_opened``."""
        log.closed(
            self._peer(), self._request.path, self.close_code, self.close_reason, self._opened_at
        )
        self._send_signal(websocket_closed, code=self.close_code)

    def _peer(self) -> str:
        # The address alone: uWSGI's --http router passes REMOTE_PORT byte-swapped
        # (2.0.31: a client on port 40001, 0x9c41, arrives as 16796, 0x419c), and
        # --http-socket passes none.
        return str(self._request.META.get("REMOTE_ADDR", "?"))

    def release(self) -> None:
        """Free the fds this connection added (idempotent); the connection's own fd is
        uWSGI's."""
        self._finalizer()

    @property
    def released(self) -> bool:
        """:meth:`release` ran: the session is over (the WSGI wrapper's stop waits for it)."""
        return not self._finalizer.alive

    def is_closed(self) -> bool:
        return self._closed or self._closing is not None
