"""A synchronous WebSocket client that reconnects and resumes, for services and tests.

The Python twin of the browser client (``dwebsocket/static/dwebsocket/dwebsocket.js``):
it speaks the ``dws`` envelope, so group messages of history groups come with their
position; when the connection drops it reconnects with jittered exponential backoff and
asks to resume every group from the last position it saw::

    from dwebsocket.client import ReconnectingClient

    with ReconnectingClient("ws://127.0.0.1:8000/chat/lobby/") as client:
        client.send("hello")
        for received in client:           # reconnects by itself; stops when closed for good
            print(received.group, received.position, received.data)

It runs in the caller's thread only: everything (reading, answering pings, the heartbeat,
reconnecting) happens inside :meth:`~ReconnectingClient.recv`; between calls nothing
does (but a DNS lookup that outlived its attempt, in a daemon thread: see ``timeout``).
One client is for one thread, but :meth:`~ReconnectingClient.close` may come from any
thread: it ends a ``recv()`` waiting in another at once; and :meth:`~ReconnectingClient.send`
too, from several at once (each message goes out whole, in turn). Events (``open``, ``close``,
``joined``, ``recovered``, ``recovery_failed``) go to ``on_event``, called from ``recv()`` (and
``connect()``) in the order they happened relative to the messages: an event that came
after a message is emitted when ``recv()`` is called after that message was returned.
An exception ``on_event`` raises is logged (logger ``dwebsocket``), not raised.

Built on dwebsocket's own protocol core (``dwebsocket.protocol``) and the standard
library: no other dependency, no Django settings needed.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ipaddress
import json
import logging
import os
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import (
    parse_qsl,
    quote,
    quote_plus,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

from dwebsocket.exceptions import ConnectionClosed, InvalidHandshake, InvalidState
from dwebsocket.log import redact
from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import CloseCode, encode_close_payload
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response
from dwebsocket.websocket import Message

__all__ = ["Event", "Received", "ReconnectingClient"]

logger = logging.getLogger("dwebsocket")

#: The close code the client uses when it gives up on a silent connection.
HEARTBEAT_CLOSE = 4002
_RECV = 65536
_PING = '{"dws":"ping"}'
# What the server closes a member with when it reads group messages too slowly
# (WEBSOCKET_SEND_QUEUE_SIZE): not a verdict on the client, so retried despite the 1008.
_OVERFLOW = (1008, "send queue overflow")


class _Refused(OSError):
    """The server answered the handshake with ``status``, not 101; ``retry_after``: the
    seconds its ``Retry-After`` header asks for (None: none, or an HTTP date)."""

    def __init__(
        self, status: int, retry_after: float | None = None, location: str | None = None
    ) -> None:
        where = f" to {location}" if location and 300 <= status < 400 else ""
        super().__init__(f"handshake refused: HTTP {status}{where}")
        self.status = status
        self.retry_after = retry_after

    @property
    def final(self) -> bool:
        """True unless the status says "later" (5xx, 408, 429): a redirect (``APPEND_SLASH``,
        ``SECURE_SSL_REDIRECT``), a 200 from a page that is no WebSocket view, a 403 or a
        426 is the same answer on every attempt."""
        return 200 <= self.status < 500 and self.status not in (408, 429)


def _retry_after(headers: list[tuple[str, str]]) -> float | None:
    """The delay a ``Retry-After: <seconds>`` header asks for (RFC 9110 10.2.3)."""
    for name, value in headers:
        if name == "retry-after" and value.isascii() and value.isdigit():
            return float(value)
    return None


# What getaddrinfo() returns for one address; the last item, the address, goes to connect().
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


class _Lookup:
    """One ``getaddrinfo()`` under way in its own thread, and what it found."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.addresses: Sequence[_AddrInfo] = ()
        self.error: BaseException | None = None


# (host, port) -> the lookup under way: a retry while one still runs waits for it instead
# of starting another thread (a resolver that never answers holds each for minutes).
_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_lock = threading.Lock()


def _forget_lookups() -> None:
    # A forked child has none of the parent's threads: their lookups never end there.
    global _lookups_lock
    _lookups.clear()
    _lookups_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_lookups)


def _resolve(host: str, port: int, left: Callable[[], float]) -> Sequence[_AddrInfo]:
    """The TCP addresses of ``host`` (``socket.getaddrinfo``), blocking at most ``left()``
    seconds (asked again every 0.1 s: it raises when the attempt is to stop).

    ``getaddrinfo()`` takes no timeout and cannot be interrupted, and a resolver that gets
    no answer waits its own limits (``resolv.conf``: up to minutes), so the lookup runs in
    a daemon thread that the caller waits for; callers asking for the same name meanwhile
    wait for the same thread. Raises ``TimeoutError`` when ``left()`` runs out first
    (the lookup goes on, for the next attempt to use), else what ``getaddrinfo`` raised
    (``socket.gaierror``, ``UnicodeError`` for a name IDNA cannot encode)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an address: nothing to ask a server
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    key = (host, port)
    with _lookups_lock:
        lookup = _lookups.get(key)
        if lookup is None:
            lookup = _lookups[key] = _Lookup()
            thread = threading.Thread(
                target=_look_up, args=(key, lookup), name="dwebsocket-resolve", daemon=True
            )
            try:
                thread.start()
            except BaseException:
                del _lookups[key]
                raise
    while not lookup.done.wait(0):
        try:
            wait = left()
        except TimeoutError:
            raise TimeoutError(f"no answer resolving {host!r} in time") from None
        lookup.done.wait(min(wait, 0.1))
    if lookup.error is not None:
        raise copy.copy(lookup.error)  # a copy: other attempts may raise the same
    return lookup.addresses


def _look_up(key: tuple[str, int], lookup: _Lookup) -> None:
    try:
        lookup.addresses = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
    except BaseException as exc:  # handed to the attempts waiting
        lookup.error = exc
    finally:
        with _lookups_lock:
            if _lookups.get(key) is lookup:
                del _lookups[key]  # no cache: the next attempt asks afresh
        lookup.done.set()


def _connect_tcp(
    host: str,
    port: int,
    left: Callable[[], float],
    started: Callable[[socket.socket], None],
) -> socket.socket:
    """A TCP connection to the first address of ``host`` that accepts one (as
    ``socket.create_connection``), every step within ``left()`` seconds, which raises
    ``TimeoutError`` once none are left; each address but the last gets its share of
    them (one that drops the SYNs, an IPv6 route a firewall drops, would take them all,
    and the next, which works, would never be tried). ``started`` gets each socket
    before it connects (``shutdown()`` from another thread then ends the wait: Linux
    gives the connection up). Raises the last address's error."""
    error: OSError | None = None
    addresses = _resolve(host, port, left)
    for index, (family, kind, proto, _, address) in enumerate(addresses):
        sock = socket.socket(family, kind, proto)
        try:
            started(sock)
            sock.settimeout(left() / (len(addresses) - index))
            sock.connect(address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
        else:
            return sock
    raise error or OSError(f"no address for {host!r}")


class _Attempt:
    """A connection attempt under way: what a call whose own time ran out leaves for the
    next to go on with, until ``end`` (the client's ``timeout`` after it began)."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.sock: socket.socket | None = None  # once connected (TCP)
        self.secured = False  # its TLS handshake done (wss://)
        self.key = ""
        self.request = b""  # what is left to send of the upgrade request
        self.response = b""  # what came of the answer so far


def _unsent(sock: socket.socket) -> int | None:
    """The bytes written to ``sock`` that the peer has not acknowledged yet (``SIOCOUTQ``,
    Linux), or None where the system does not say."""
    try:
        import fcntl  # POSIX only: the client must import on Windows too
        import termios

        queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (ImportError, OSError, ValueError, AttributeError):  # ValueError: closed (fileno -1)
        return None
    return queued


def _writable(sock: socket.socket) -> bool:
    """True if ``sock`` has room for a write now (or cannot say: closed meanwhile)."""
    try:
        if not hasattr(select, "poll"):  # Windows
            return bool(select.select([], [sock], [], 0)[1])
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # ValueError: closed (fileno -1): the write will say
        return True


class Received(NamedTuple):
    """An application message: ``data`` (``str`` or ``bytes``); for a group message of a
    history group, its ``group`` and ``position`` (else None)."""

    data: Message
    group: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Event:
    """Something that happened to the connection.

    ``type``: ``"open"`` (``reconnect`` says if it is not the first), ``"close"``
    (``code``, ``reason``, ``will_retry``, ``delay`` until the next attempt, in seconds),
    ``"joined"`` (the server joined this client to a history group: ``group``,
    ``position``, ``since``, ``missed``), then also ``"recovered"`` or
    ``"recovery_failed"`` when ``since`` was given; ``"dws"`` for an envelope message of a
    type this client does not know (a later version's), the whole of it in ``extra``."""

    type: str
    code: int | None = None
    reason: str = ""
    will_retry: bool = False
    delay: float | None = None
    reconnect: bool = False
    group: str | None = None
    position: str | None = None
    since: str | None = None
    missed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ReconnectingClient:
    """See the module docstring.

    ``url``: ``ws://`` or ``wss://``. ``positions``: group -> position to resume from on the
    first connection (e.g. saved by an earlier run); :attr:`positions` holds, for each
    group, the position of the last message :meth:`recv` returned (never of one still
    waiting to be: save it after handling a message, and a later run resumes right
    after that message), none for a group after its ``recovery_failed`` until
    :meth:`state_loaded` (until then each reconnection joins it as a first visit, and the
    view sends the full state again: see ``docs/recovery.rst``).
    Backoff: attempt ``n`` after a drop waits a random time up to
    ``min(max_delay, min_delay * 2**n)`` seconds (``n`` starts again at 0 after a
    connection that stayed open ``stable`` seconds). Heartbeat: after ``ping_interval``
    seconds (``inf``: never) without any message it sends ``{"dws":"ping"}``; nothing within
    ``ping_timeout`` more and the connection counts as dead (close code 4002, in a close
    frame if the socket takes it at once), unless what
    it sent before is still leaving (on Linux: the send queue shrinks; the ping waits behind
    it), which gives the answer ``ping_timeout`` more each time. Close codes
    in ``no_retry`` (policy, session revoked), a handshake answered with a 2xx, 3xx or
    4xx status (but 408 and 429), a server certificate that fails verification (close
    code 1015: ``ssl.SSLCertVerificationError``; other TLS failures are retried) and
    :meth:`close` end it for good, except a 1008 whose
    reason is exactly ``"send queue overflow"`` (the server dropped a member that read too
    slowly): that one is retried with the backoff, and resumes where it left off. A
    refusal with ``Retry-After: <seconds>`` waits that long (at most ``max_delay``)
    before the jittered delay.
    ``timeout`` bounds each connection attempt (from the DNS lookup to the 101; a
    lookup still unanswered then goes on in a thread of its own, which the next attempt
    waits for rather than starting another) and a write's wait for the socket to take
    more of it (a write of a large message over a slow link lasts as long as its bytes
    keep moving); the ``timeout`` of
    :meth:`connect` and :meth:`recv` bounds their wait for an attempt too: one the
    caller's time cut short goes on at the next call (its TLS handshake and HTTP
    exchange where they stopped; a TCP connection not made yet starts again), and fails
    only once its own ``timeout`` ran out, so ``recv(1)`` in a loop connects to a server
    that takes longer than that to answer the handshake.
    ``compression``: offer permessage-deflate, as browsers do (the server's
    ``WEBSOCKET_COMPRESSION`` decides; ``max_message_size`` counts the bytes
    decompressed). A user and password in the URL go as HTTP Basic auth (unless
    ``headers`` has an ``Authorization``; ``repr()`` and errors show the password as
    ``***``). ``headers``, ``origin``, ``subprotocols`` go into the handshake (one it
    cannot carry, a line end or a character latin-1 has not, raises ``ValueError`` here;
    the one the server chose is :attr:`subprotocol`, one it did not offer fails the attempt);
    ``ssl_context`` for ``wss://``. ``since_limit``: the most characters the positions may
    take in the URL (``dws_since``, URL-encoded); past it, those of the groups that got a
    message longest ago are left out, and a group of those the server joins again without them gets
    ``"recovery_failed"`` (with the ``since`` left out), as when history no longer reaches
    back. A message over ``max_message_size`` (1009) leaves out every group's position
    from the next attempt so (from a history it would come again with each resume)."""

    def __init__(
        self,
        url: str,
        *,
        positions: Mapping[str, str] | None = None,
        min_delay: float = 1.0,
        max_delay: float = 16.0,
        stable: float = 10.0,
        ping_interval: float = 25.0,
        ping_timeout: float = 10.0,
        no_retry: Sequence[int] = (1008, 4001),
        timeout: float = 10.0,
        headers: Sequence[tuple[str, str]] = (),
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int | None = 2**24,
        since_limit: int = 2048,
        compression: bool = True,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        # The URL as repr() and error messages show it: without its password.
        self._shown = redact(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, not {self._shown!r}")
        try:
            # What getaddrinfo() does to a name first: one it refuses would fail every attempt.
            name = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"the host of {self._shown!r} is not a valid name: {exc}") from None
        try:
            parts.port  # noqa: B018 -- raises for a port out of range or not a number
        except ValueError as exc:
            raise ValueError(f"the port of {self._shown!r} is not valid: {exc}") from None
        if (parts.username is not None or parts.password is not None) and not any(
            key.lower() == "authorization" for key, _ in headers
        ):
            # HTTP Basic auth, as the websockets client sends a URL's credentials.
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            basic = base64.b64encode(credentials.encode()).decode("ascii")
            headers = [*headers, ("Authorization", f"Basic {basic}")]
        self.url = url
        self._parts = parts
        # Host: as given, but a name beyond ASCII in its IDNA form, as browsers send it
        # (and as DNS and ALLOWED_HOSTS know it); latin-1 cannot carry most of them.
        self._host = parts.netloc.rpartition("@")[2]
        if not self._host.isascii():
            self._host = name if parts.port is None else f"{name}:{parts.port}"
        #: Group -> the position of the last message :meth:`recv` returned (or of the
        #: last ``joined`` event): what the application has seen.
        self.positions: dict[str, str] = dict(positions or {})
        # Group -> the position of the last message read from the socket, which may wait
        # in the inbox still: where a reconnection resumes (no message comes twice).
        self._arrived: dict[str, str] = dict(self.positions)
        self.since_limit = since_limit
        # Group -> position: those the last attempt's URL had no room for (see _address),
        # and those given up after a message too large to read (see _feed) or a failed
        # join, until state_loaded(); with the last position read of each meanwhile, which
        # state_loaded() adopts.
        self._left_out: dict[str, str] = {}
        self._given_up: dict[str, str] = {}
        self._held: dict[str, str | None] = {}
        # Group -> the last position recv() returned since its recovery_failed, until
        # state_loaded(): then in positions (until then, the group is not there).
        self._loading: dict[str, str | None] = {}
        self.min_delay, self.max_delay, self.stable = min_delay, max_delay, stable
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.no_retry = frozenset(no_retry)
        self.timeout = timeout
        self.headers = list(headers)
        self.origin = origin
        self.subprotocols = list(subprotocols)
        #: The subprotocol the server chose for the connection open now, or the last one
        #: (None: none chosen, or none opened yet).
        self.subprotocol: str | None = None
        self.compression = compression
        # A header the request cannot carry (a token read with its line end, a character
        # latin-1 has not) would fail every attempt: raised here instead (ValueError).
        self._request(generate_key())
        self.ssl_context = ssl_context
        self.max_message_size = max_message_size
        self.on_event = on_event
        #: Consecutive failed attempts (the backoff's exponent).
        self.attempts = 0
        #: Connections opened so far.
        self.opened = 0
        #: Set once closed for good: the last close code and reason.
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed_for_good = False
        self._sock: socket.socket | None = None
        self._conn: Connection | None = None
        # The connection attempt under way that a call's timeout cut short (see _reconnect).
        self._attempt: _Attempt | None = None
        # Messages and events in the order they happened; recv() hands them over.
        self._inbox: deque[Received | Event] = deque()
        self._retry_at = 0.0
        self._opened_at = 0.0
        self._heard = 0.0
        self._ping_sent: float | None = None
        self._unsent: int | None = None  # bytes of ours not yet acknowledged (see _pump)
        self._ping_owed = False  # a ping due that the socket had no room for (see _ping)
        # For close() from another thread: the thread inside recv() or connect() (None:
        # none), what wakes it from a wait to reconnect, and who takes the socket to close.
        self._reader: int | None = None
        self._wake = threading.Event()
        self._closing = threading.Lock()
        # Held while a frame is written: a close frame written meanwhile (close() from
        # another thread, or from a signal handler in the writing one) would land inside it.
        self._writing = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._closed_for_good else "open" if self.connected else "waiting"
        return f"<ReconnectingClient {state} {self._shown}>"

    def __enter__(self) -> ReconnectingClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._conn is not None

    # -- public calls --------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> ReconnectingClient:
        """Block until a connection is open (retrying with backoff), at most ``timeout``
        seconds (None: until closed for good). Returns ``self``. Raises ``TimeoutError``,
        or ``ConnectionClosed`` once closed for good."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._reading():
            while True:
                self._emit_events()  # "open" (or "close"), unless messages come before
                self._check_open()
                if self._conn is not None:
                    return self
                if not self._reconnect(deadline):
                    raise TimeoutError(f"not connected to {self._shown} within {timeout}s")

    def recv(self, timeout: float | None = None) -> Received:
        """The next application message, reconnecting (and resuming) as needed.

        Blocks up to ``timeout`` seconds (None: forever; 0: a message already there) and
        raises ``TimeoutError`` then.
        Raises ``ConnectionClosed`` once closed for good (and every message before was
        received)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._reading():
            while (received := self._next()) is None:
                self._check_open()
                if self._conn is None:
                    if not self._reconnect(deadline):
                        raise TimeoutError(f"no message from {self._shown} within {timeout}s")
                    continue
                if not self._pump(deadline):
                    raise TimeoutError(f"no message from {self._shown} within {timeout}s")
            return received

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Mark this thread as the one reading, for :meth:`close` from another."""
        outer, self._reader = self._reader, threading.get_ident()
        try:
            yield
        finally:
            self._reader = outer
            # close() from another thread just then found this one reading and left the
            # socket to it (close() sets the flag before it looks: one of the two sees it).
            if self._closed_for_good:
                self._finish_close()

    def __iter__(self) -> Iterator[Received]:
        """Every message until the client is closed for good."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                return

    def send(self, message: Message | bytearray | memoryview) -> None:
        """Send ``message`` now (``str``: text, bytes-like: binary). Raises
        ``ConnectionClosed`` while not connected: what to do then is the caller's call;
        also when the connection ends during the write (with the server's code and reason
        when it closed it first: 1009 for a message over its limit).

        From several threads at once, each message goes out whole, one after the other.
        One whose connection ended before its turn to be written came raises
        ``ConnectionClosed`` too: it never goes out on the next connection."""
        if self._conn is None:
            raise ConnectionClosed(self.close_code or 1006, "not connected")

        def frame(conn: Connection) -> bytes:
            try:
                return conn.send_message(message)
            except InvalidState:  # close() in another thread sent the close frame
                raise ConnectionClosed(self.close_code or 1006, self.close_reason) from None

        self._write(frame)

    def state_loaded(self, group: str) -> None:
        """Say that the application has ``group``'s full state, which the view sends after
        a ``recovery_failed``: from now on a reconnection resumes the group again, after
        the last message of it received. Until then, each reconnection joins it as a
        first visit (the view sends the full state again, told ``recovery_failed`` with
        the same ``since``) and :attr:`positions` has no position for it: a connection
        lost before the full state came would otherwise resume after the failed join, the
        server say "recovered", and the full state never come. Call it from the thread
        that reads, once the state is in (a group not waiting for one: nothing to do)."""
        if group in self._given_up:
            del self._given_up[group]
            if (held := self._held.pop(group, None)) is not None:
                self._arrive(group, held)
        if group in self._loading and (seen := self._loading.pop(group)) is not None:
            self.positions[group] = seen

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good (no reconnection): a close frame, a short wait for the server's,
        then the socket. Idempotent. A close frame that cannot be made (a ``code`` that may
        not be sent, a ``reason`` over 123 bytes) raises ``ValueError``, the client closed
        all the same.

        From another thread than one inside :meth:`recv` (or :meth:`connect`), it wakes
        that call and returns at once: the reading thread sends the close frame (if the
        socket takes it at once), lets go of the socket and raises ``ConnectionClosed``.
        During a :meth:`send` (in another thread, or in this one, from a signal handler)
        it returns at once too: the message goes out whole, then the close frame. From a
        signal handler in the thread waiting in :meth:`recv` to reconnect, it ends that
        wait."""
        if self._closed_for_good:
            return
        self._closed_for_good = True
        self.close_code, self.close_reason = code, reason
        # Ends a wait to reconnect: another thread's, or this one's when a signal
        # handler (a SIGTERM) calls close() during it, which would sleep out the delay.
        self._wake.set()
        reader = self._reader
        if reader is not None and reader != threading.get_ident():
            # Another thread reads: the socket is its to close (closing it under a read
            # leaves the read waiting on a dead descriptor, or on the next socket given
            # its number). Wake it: from a wait to reconnect (above), from a read (b""
            # at once).
            conn, sock = self._conn, self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    # socket's own: SSLSocket.shutdown() also drops the TLS session, and
                    # the reader's close frame would go out in the clear.
                    socket.socket.shutdown(sock, socket.SHUT_RD)
            if conn is not None and not (code == 1005 and not reason):
                encode_close_payload(code, reason)  # what the reader could not send: raised here
            return
        if not self._writing.acquire(blocking=False):
            # A frame is being written (by send() in another thread, or in this one, a
            # signal handler's close() interrupting it): the writer sends the close frame
            # once its own is out (_write), then lets go of the socket.
            if self._conn is not None and not (code == 1005 and not reason):
                encode_close_payload(code, reason)  # what the writer could not send: raised here
            return
        self._writing.release()  # (taken again by _write: no frame of another comes between)
        if not self._closing.acquire(blocking=False):
            return  # the reading thread is closing it (see _finish_close)
        try:
            conn, sock = self._conn, self._sock
            if conn is not None and sock is not None:
                with contextlib.suppress(OSError, ConnectionClosed):
                    self._write(conn.send_close(code, reason))
                    deadline = time.monotonic() + min(self.timeout, 2.0)
                    while not conn.close_received and (left := deadline - time.monotonic()) > 0:
                        sock.settimeout(left)
                        data = sock.recv(_RECV)
                        conn.receive_data(data)
                        if not data:
                            break
        finally:
            self._drop()  # whatever went wrong above: closed for good holds no socket
            self._closing.release()

    def _finish_close(self, *, at_once: bool = True) -> None:
        """In the reading thread, after :meth:`close` from another: send the close frame
        (no wait for the server's: the read side is shut) and let go of the socket.
        ``at_once``: the frame only if the socket takes it at once (a link that takes
        nothing, its buffers full, would hold the reader up to ``timeout``), after the
        write under way in another thread if there is one; False after a message written
        in this thread (:meth:`_write`), which the frame follows as a write does."""
        if not self._closing.acquire(blocking=False):
            return  # close() in this thread is at it (a write failed: _lost)
        try:
            conn, sock = self._conn, self._sock
            if conn is not None and sock is not None:
                with contextlib.suppress(OSError, ConnectionClosed, ValueError):
                    code = self.close_code or 1000
                    frame = conn.send_close(code, self.close_reason)
                    self._write(frame, lose=False, timeout=0 if at_once else None)
        finally:
            self._drop()
            self._closing.release()

    # -- connecting ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed_for_good:
            self._finish_close()  # close() came from another thread
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)

    def _reconnect(self, deadline: float | None) -> bool:
        """Wait for the next attempt (False at ``deadline``), then make it, or go on with
        the one a call before left (False at ``deadline`` again)."""
        attempt = self._attempt
        if attempt is None:
            wait = self._retry_at - time.monotonic()
            if deadline is not None and time.monotonic() + max(wait, 0) > deadline:
                self._wake.wait(max(0.0, deadline - time.monotonic()))  # close() wakes it
                return self._closed_for_good
            if wait > 0 and self._wake.wait(wait):
                return True  # closed from another thread: the caller raises
            attempt = self._attempt = _Attempt(time.monotonic() + self.timeout)
        try:
            self._open(attempt, deadline)
        except (OSError, InvalidHandshake, ValueError) as exc:
            now = time.monotonic()
            if (
                isinstance(exc, TimeoutError)
                and deadline is not None
                and deadline <= now < attempt.end
            ):
                # The caller's time ran out, not the attempt's: the next call goes on with
                # it (a handshake slower than the caller's timeout would never end, each
                # call starting it again; one that never ends would never fail).
                if attempt.sock is None:
                    self._sock = None  # its TCP connection, closed, starts again
                return False
            self._drop()
            code, final = 1006, isinstance(exc, _Refused) and exc.final
            if isinstance(exc, ssl.SSLCertVerificationError):
                # As a 4xx: the same answer on every attempt until someone changes the
                # CA trusted, the host in the URL or the server's certificate. RFC 6455
                # 7.4.1 names the code for it (never sent: the close is ours alone).
                code, final = int(CloseCode.TLS_HANDSHAKE), True
            retry_after = exc.retry_after if isinstance(exc, _Refused) else None
            self._lost(code, str(exc) or type(exc).__name__, final=final, not_before=retry_after)
        except BaseException:
            # KeyboardInterrupt, a gevent.Timeout around the call: the attempt is abandoned
            # (not a failure); its socket must not wait for the next one to replace it.
            if self._conn is None:
                self._drop()
            raise
        return True

    def _request(self, key: str) -> bytes:
        """The upgrade request; raises ``ValueError`` for a header it cannot carry."""
        return build_request(
            self._host,
            self._address(),
            key=key,
            subprotocols=self.subprotocols,
            extensions=PerMessageDeflate.client_offer() if self.compression else None,
            origin=self.origin,
            extra_headers=self.headers,
        )

    def _address(self) -> str:
        query = [
            (k, v)
            for k, v in parse_qsl(self._parts.query, keep_blank_values=True)
            if k not in ("dws", "dws_since")
        ]
        query.append(("dws", "1"))
        since = self._since()
        if since:
            query.append(("dws_since", json.dumps(since, separators=(",", ":"))))
        # As a browser sends it: UTF-8, percent-encoded (what is already stays as it is).
        path = quote(self._parts.path or "/", safe="/%!$&'()*+,;=:@[]|^")
        return urlunsplit(("", "", path, urlencode(query), ""))

    def _since(self) -> dict[str, str]:
        """The positions to resume from that fit in ``since_limit`` characters of the URL,
        the most recent first: they grow with every group ever followed, and past a
        server's request-line limit (4 KiB for gunicorn, 8 KiB for gevent) every attempt
        was refused for good. The older ones are left out, and a ``joined`` of one of them
        without ``since`` says ``recovery_failed`` (:meth:`_message`)."""
        kept: dict[str, str] = {}
        room = self.since_limit - len(quote_plus("{}"))
        self._left_out = {}
        for group, position in reversed(self._arrived.items()):  # the most recent last
            pair = json.dumps({group: position}, separators=(",", ":"))[1:-1]
            room -= len(quote_plus(pair + ","))
            if room < 0 or self._left_out:
                self._left_out[group] = position
            else:
                kept[group] = position
        return dict(reversed(kept.items()))

    def _open(self, attempt: _Attempt, deadline: float | None) -> None:
        """Go on with ``attempt`` within its ``timeout`` and the caller's ``deadline``
        (from the DNS lookup to the 101, not for each step: else a call could block for
        twice its timeout). Raises ``TimeoutError`` when either runs out; what was done
        stays in ``attempt`` (the lookup, too, goes on in its thread), but for a TCP
        connection cut short, which starts again."""
        parts = self._parts
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        end = attempt.end if deadline is None else min(attempt.end, deadline)

        def left() -> float:
            if self._closed_for_good:  # close() from another thread: see _started
                raise ConnectionAbortedError("closed during the attempt")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer to the handshake")
            return remaining

        sock = attempt.sock
        if sock is None:
            sock = self._sock = _connect_tcp(host, port, left, self._started)
            if secure:
                context = self.ssl_context or ssl.create_default_context()
                # The TLS socket takes the plain one's descriptor over (the plain one's is
                # -1 then): it must be in _sock before its handshake waits, for close() to
                # shut it down (then left() sees the flag, or the shut down ends it).
                sock = self._sock = context.wrap_socket(
                    sock, server_hostname=host, do_handshake_on_connect=False
                )
            attempt.sock, attempt.key = sock, generate_key()
            attempt.request = self._request(attempt.key)
        if secure and not attempt.secured:
            assert isinstance(sock, ssl.SSLSocket)
            sock.settimeout(left())
            sock.do_handshake()  # after a timeout, OpenSSL goes on where it stopped
            attempt.secured = True
        while attempt.request:
            sock.settimeout(left())
            attempt.request = attempt.request[sock.send(attempt.request) :]
        key = attempt.key
        while (parsed := parse_response(attempt.response, key)) is None:
            sock.settimeout(left())
            chunk = sock.recv(_RECV)
            if not chunk:
                raise ConnectionResetError("connection closed during the handshake")
            attempt.response += chunk
        self._attempt, data = None, attempt.response
        status, headers, consumed = parsed
        if status != 101:
            raise _Refused(status, _retry_after(headers), dict(headers).get("location"))
        chosen = dict(headers).get("sec-websocket-protocol")
        if chosen is not None and chosen not in self.subprotocols:  # RFC 6455 4.1 too
            raise InvalidHandshake(f"subprotocol not offered: {chosen!r}")
        deflate = None
        if extensions := [value for name, value in headers if name == "sec-websocket-extensions"]:
            if not self.compression:  # RFC 6455 4.1: an extension not offered fails
                raise InvalidHandshake(f"extensions not offered: {', '.join(extensions)!r}")
            deflate = PerMessageDeflate.from_response(", ".join(extensions))
        self._conn = Connection(
            client=True, deflate=deflate, max_message_size=self.max_message_size
        )
        self.subprotocol = chosen
        now = time.monotonic()
        self._opened_at = self._heard = now
        self._ping_sent = None
        reconnect = self.opened > 0
        self.opened += 1
        if not self._closed_for_good:  # else close() came from another thread meanwhile:
            self._inbox.append(Event("open", reconnect=reconnect))  # not an open to announce
        if len(data) > consumed and self._conn is not None:  # the handler may have closed
            self._feed(data[consumed:])

    def _started(self, sock: socket.socket) -> None:
        """An attempt's socket, before it connects: for close() from another thread to
        shut down (it sets the flag before it looks: left() sees one or the other)."""
        self._sock = sock

    def _lost(
        self, code: int, reason: str, *, final: bool = False, not_before: float | None = None
    ) -> None:
        """The connection (or an attempt) ended: schedule the next attempt, or stop.
        ``not_before``: the seconds the server asked for (``Retry-After``), waited at most
        ``max_delay`` and jittered after, not instead."""
        if self._closed_for_good:  # a write failed in close(), or close() came from another
            self._finish_close()  # thread: nothing to announce
            return
        if self._opened_at and time.monotonic() - self._opened_at >= self.stable:
            self.attempts = 0
        self._opened_at = 0.0
        self._drop()
        if final or (code in self.no_retry and (code, reason) != _OVERFLOW):
            self._closed_for_good = True
            self.close_code, self.close_reason = code, reason
            self._inbox.append(Event("close", code=code, reason=reason))
            return
        # 2**1024 is too large for a float (OverflowError); long before, the cap is max_delay.
        cap = min(self.max_delay, self.min_delay * 2 ** min(self.attempts, 1023))
        self.attempts += 1
        delay = random.uniform(0, cap)  # full jitter: clients dropped together spread out
        if not_before is not None:
            # A server over its limits (503) says when: all its refused clients waiting
            # exactly that long would come back together, so the jitter comes after it.
            delay += min(not_before, self.max_delay)
        self._retry_at = time.monotonic() + delay
        self._inbox.append(Event("close", code=code, reason=reason, will_retry=True, delay=delay))

    def _drop(self) -> None:
        sock, self._sock, self._conn, self._attempt = self._sock, None, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- reading -------------------------------------------------------------------------

    def _pump(self, deadline: float | None) -> bool:
        """Read once (or run the heartbeat); False at ``deadline`` (past it, what is
        ready is still read, without waiting)."""
        sock = self._sock
        if sock is None:
            return True  # closed from another thread: the caller raises
        now = time.monotonic()
        if self._ping_sent is None:
            due = self._heard + self.ping_interval
        else:
            due = self._ping_sent + self.ping_timeout
        if now >= due:
            if self._ping_sent is None:
                self._ping_sent = now
                self._unsent = _unsent(sock)  # before the ping: what it waits behind
                self._ping(sock)
                return deadline is None or now < deadline  # a poll reads at the next call
            # The ping waits behind what send() left in the system's queue (a large
            # message over a slow uplink): while that drains, the connection lives.
            unsent = _unsent(sock)
            if unsent is not None and self._unsent is not None and unsent < self._unsent:
                self._ping_sent, self._unsent = now, unsent
                if self._ping_owed:
                    self._ping(sock)
                return deadline is None or now < deadline
            # The caller may have been away since the ping (recv() is not always being
            # called): the answer may be waiting unread. Only nothing at all is silence.
            dead, wait = True, 0.0
        elif deadline is not None and now >= deadline:
            dead, wait = False, 0.0  # no time to wait (recv(0), a poll): what is ready now
        else:
            dead, wait = False, max(0.001, min(due, deadline or due) - now)
        # settimeout() refuses what it cannot count (ping_interval inf: no heartbeat).
        sock.settimeout(min(wait, 86400.0))
        try:
            if isinstance(sock, ssl.SSLSocket) and not sock.pending():
                # Wait on the socket itself (a peek), not inside OpenSSL: close() from
                # another thread ends the wait by shutting the read side, and an SSL read
                # that met that end would leave the TLS session broken, the reader's
                # close frame unsent (the server saw a 1006, not the code given).
                socket.socket.recv(sock, 1, socket.MSG_PEEK)
                if self._closed_for_good:
                    self._finish_close()
                    return True
                if wait:  # what the peek took of it
                    sock.settimeout(max(0.0, min(wait, 86400.0) - (time.monotonic() - now)))
            data = sock.recv(_RECV)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            if dead:
                self._say_why(sock, HEARTBEAT_CLOSE, "no heartbeat")
                self._lost(HEARTBEAT_CLOSE, "no heartbeat")
                return True
            return deadline is None or time.monotonic() < deadline
        except OSError as exc:
            self._lost(1006, str(exc))
            return True
        if self._closed_for_good:  # close() from another thread woke this read
            self._finish_close()
            return True
        self._feed(data)
        return True

    def _ping(self, sock: socket.socket) -> None:
        """Send the heartbeat's ping; but where the system says how much of what was
        sent is still to go (:func:`_unsent`) and the socket has no room now, the ping
        is owed instead: :meth:`_pump` sends it once that shrinks, and counts the
        connection dead after ``ping_timeout`` in which it did not. (A write waiting for
        room would wait up to ``timeout``, past the caller's own and ``ping_timeout``,
        on a link that takes nothing.)"""
        self._ping_owed = self._unsent is not None and not _writable(sock)
        if not self._ping_owed:
            with contextlib.suppress(ConnectionClosed):
                self.send(_PING)

    def _say_why(self, sock: socket.socket, code: int, reason: str) -> None:
        """A close frame with ``code`` on a connection given up, as the browser client
        sends one (4002: the server's logs and metrics say why the client went), if the
        socket takes it at once: the connection is given up, nothing waits for it."""
        conn = self._conn
        if conn is None or not self._writing.acquire(blocking=False):
            return  # another thread is writing: its frame would be cut
        try:
            with contextlib.suppress(OSError, InvalidState):
                frame = conn.send_close(code, reason)
                sock.settimeout(0)
                sock.send(frame)
        finally:
            self._writing.release()

    def _feed(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None
        if data:
            self._heard = time.monotonic()
            self._ping_sent = None
        events = conn.receive_data(data)
        out = conn.data_to_send()  # pongs, the answer to a close frame
        broken = None
        if out:
            try:
                self._write(out, lose=False)
            except ConnectionClosed as exc:
                broken = exc.reason
        # What came before the write failed is delivered; a close frame among it says why
        # the connection ended (a server that closed with 4001 and reset the connection
        # before its answer came: one "close", final, not a 1006 announcing a retry first).
        for event in events:
            if isinstance(event, (str, bytes)):
                self._message(event)
            elif isinstance(event, Close):
                if event.code == 1009 and conn.error is not None:
                    # Ours: a message over max_message_size. One from a group's history
                    # would come again with every resume, and whose it was is unknown (it
                    # was not read): no group resumes, each joined again says so.
                    self._given_up.update(self._arrived)
                    self._arrived.clear()
                self._lost(event.code, event.reason)
                return
        if broken is not None:
            self._lost(1006, broken)

    def _message(self, message: Message) -> None:
        data: Any = None
        if isinstance(message, str) and message.startswith('{"dws"'):
            with contextlib.suppress(ValueError, RecursionError):  # nested too deep: not one
                data = json.loads(message)
        if not isinstance(data, dict) or "dws" not in data:
            self._inbox.append(Received(message))
            return
        kind, group, position = data["dws"], data.get("g"), data.get("p")
        if kind == "msg":
            if isinstance(position, str) and isinstance(group, str):
                if group in self._given_up:
                    self._held[group] = position  # see state_loaded
                else:
                    self._arrive(group, position)
            body = data["d"] if "d" in data else base64.b64decode(data.get("b", ""))
            self._inbox.append(Received(body, group, position))
        elif kind == "joined":
            left_out = given_up = None
            if isinstance(group, str):
                left_out = self._left_out.pop(group, None)
                given_up = self._given_up.pop(group, None)
            left_out = left_out or given_up
            info = {
                "group": group,
                "position": position,
                "since": data.get("since"),
                "missed": data.get("missed", 0),
            }
            self._inbox.append(Event("joined", **info))
            failed = None
            if info["since"] is not None:
                outcome = "recovered" if data.get("recovered") else "recovery_failed"
                self._inbox.append(Event(outcome, **info))
                if outcome == "recovery_failed":
                    failed = info["since"]
            elif left_out is not None:
                # Its position had no room in the URL: what it missed is not coming.
                self._inbox.append(Event("recovery_failed", **{**info, "since": left_out}))
                failed = left_out
            if isinstance(group, str) and failed is not None:
                # The view sends the full state next. Resumed from the join's position
                # before it came (the connection lost meanwhile), the server would say
                # "recovered" and the state would never come. Given up until
                # state_loaded(): a first visit, told "recovery_failed" again. (No
                # position: the server could not read Redis.)
                self._arrived.pop(group, None)
                self._given_up[group] = failed
                self._held[group] = position if isinstance(position, str) else None
            elif isinstance(group, str) and isinstance(position, str):
                self._arrive(group, position)
        elif kind != "pong":
            self._inbox.append(Event("dws", extra=data))

    def _arrive(self, group: str, position: str) -> None:
        self._arrived.pop(group, None)  # to the end: the most recent are kept in the URL
        self._arrived[group] = position

    def _write(
        self,
        data: bytes | Callable[[Connection], bytes],
        *,
        lose: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Write ``data``; raises ``ConnectionClosed`` when the socket fails, the
        connection then lost (``lose`` False: the caller calls :meth:`_lost` itself).
        ``timeout``: instead of :attr:`timeout` (0: only what the socket takes at once).
        ``data`` may be what makes the frame of the connection open when this write's
        turn comes (:meth:`send`, from several threads): frames are made in the order they
        go out (permessage-deflate's context takeover, RFC 7692 7.2.3: each may refer to
        the ones before it), and never go out on a connection they were not made for
        (``ConnectionClosed`` if it ended meanwhile)."""
        sock, conn, made = self._sock, self._conn, callable(data)
        if sock is None:
            raise ConnectionClosed(1006, "not connected")
        try:
            with self._writing:
                if callable(data):
                    # The socket after the connection: _open sets _sock first, _drop
                    # clears it first; the connection unchanged after, they go together.
                    conn, current = self._conn, self._sock
                    if conn is None or current is None or self._conn is not conn:
                        raise ConnectionClosed(self.close_code or 1006, "not connected")
                    sock, data = current, data(conn)
                sock.settimeout(self.timeout if timeout is None else timeout)
                # timeout for each send() to move some bytes, not for the whole message (as
                # sendall() has it, but ssl's): a large one over a slow link is not a dead one.
                view, sent = memoryview(data), 0
                while sent < len(view):
                    sent += sock.send(view[sent:])
        except ConnectionClosed:  # nothing was written
            if self._closed_for_good:
                self._finish_close(at_once=False)  # close() came meanwhile: left to it
            raise
        except OSError as exc:
            if lose:
                conn = conn if made else self._conn
                self._read_last_words(sock)
                if self._sock is sock:  # no close frame came: the link broke
                    self._lost(1006, str(exc))
                elif conn is not None and conn.close_code is not None:
                    raise ConnectionClosed(conn.close_code, conn.close_reason) from None
            raise ConnectionClosed(1006, str(exc)) from None
        except BaseException:
            # KeyboardInterrupt, a gevent.Timeout around send(): part of the frame may be
            # on the wire, and the next one would land in its middle.
            self._lost(1006, "a write was interrupted")
            raise
        if self._closed_for_good:
            self._finish_close(at_once=False)  # close() came during the write: left to it

    def _read_last_words(self, sock: socket.socket) -> None:
        """After a write failed: the server may have closed the connection with a code,
        then been reset by what kept coming (the rest of a message over its limit: 1009;
        of one sent as it revoked the session: 4001, which must not be retried). What it
        sent before is still there to read (Linux keeps it past the reset): a close frame
        among it ends the connection with its code (:meth:`_feed`), the messages before
        it delivered, where the failed write knew only of a 1006. Reads only what is
        there, and only where no other thread reads (:meth:`close` from one)."""
        if self._closed_for_good or self._reader not in (None, threading.get_ident()):
            return
        with contextlib.suppress(OSError):
            sock.settimeout(0)
            while self._sock is sock and (data := sock.recv(_RECV)):
                self._feed(data)

    def _next(self) -> Received | None:
        """Emit the events at the head of the inbox, then take its first message (None:
        empty). Positions move here, when the application gets what they follow."""
        self._emit_events()
        if not self._inbox:
            return None
        received = self._inbox.popleft()
        assert isinstance(received, Received)
        if received.group is not None and received.position is not None:
            if received.group in self._loading:
                self._loading[received.group] = received.position
            else:
                self.positions[received.group] = received.position
        return received

    def _emit_events(self) -> None:
        """Emit the events at the head of the inbox, up to its first message."""
        while self._inbox and isinstance(event := self._inbox[0], Event):
            self._inbox.popleft()
            if event.type == "joined" and event.group is not None and event.position:
                self.positions[event.group] = event.position
            elif event.type == "recovered":
                self._loading.pop(event.group or "", None)
            elif event.type == "recovery_failed" and event.group is not None:
                self.positions.pop(event.group, None)  # until state_loaded (see _message)
                self._loading[event.group] = event.position
            self._emit(event)

    def _emit(self, event: Event) -> None:
        """Call ``on_event``; an error there is the application's: logged, and the client
        goes on (raised here, it would lose the rest of a read, as the browser client's
        handlers cannot either)."""
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("dwebsocket client: the on_event handler raised on %r", event)
