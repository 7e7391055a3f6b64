"""The raw socket of a connection taken over from the WSGI server: reading, waiting and
writing on it, and the bytes the server's HTTP parser already buffered past the request
head.

Where each server keeps that socket is :mod:`.takeovers`' business; a
:class:`Transport` is what a takeover function returns.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any, Protocol

from dwebsocket.backends.default.state import PyIOState, fastpath
from dwebsocket.db import CHECK_INTERVAL, release_idle_connections, wait_releasing

try:  # the C functions: eventlet's monkey-patching makes os.read/os.write wait in its hub
    from posix import read as _read
    from posix import write as _write
except ImportError:  # pragma: no cover - Windows
    from os import read as _read
    from os import write as _write

_fastpath: Any = fastpath

__all__ = ["RECV_SIZE", "Transport"]

_RECV_SIZE = 65536
RECV_SIZE = _RECV_SIZE  # the most one recv() returns


class BufferedStream(Protocol):
    """What we need of a server's request reader: ``io.BufferedReader.read1``."""

    def read1(self, size: int = ..., /) -> bytes: ...


class Transport:
    """The raw socket of one request, taken over from the server.

    ``sock`` stays the server's: we shut it down at the end but never close it. Or,
    instead of ``sock``, ``open_socket`` makes one when it is first needed (at
    :meth:`take_over`; a view that answers with plain HTTP never needs it): that socket is
    ours, and :meth:`release` closes it.
    ``rfile`` is the server's buffered reader on it, if any, drained once at takeover,
    and closed then if ``close_rfile`` (which frees its 8 KiB buffer: a server that looks
    at ``rfile.closed`` after the application, as gevent.pywsgi does, then ends the
    connection). ``on_take_over`` runs at :meth:`take_over` and ``on_release`` when the
    session is over (for servers that must be told).
    """

    def __init__(
        self,
        sock: socket.socket | None,
        *,
        server: str,
        rfile: BufferedStream | None = None,
        drain: Callable[[], bytes] | None = None,
        on_release: Callable[[], None] | None = None,
        close_rfile: bool = False,
        open_socket: Callable[[], socket.socket] | None = None,
        on_take_over: Callable[[], None] | None = None,
    ) -> None:
        if (sock is None) == (open_socket is None):
            raise TypeError("Transport() takes a socket or open_socket, not both or neither")
        self._sock = sock
        self._open_socket = open_socket
        self.server = server
        self.rfile = rfile
        self._close_rfile = close_rfile
        self._drain = drain
        self._on_take_over = on_take_over
        self._on_release = on_release
        self._poller: Any = None
        self._waiter: _ReadWaiter | None = None
        # The connection's IOState (state.py), given at take_over(): db_checked is ours.
        self.io: Any = PyIOState()
        self._nb_fd = -1  # for try_send() and recv(): the fd, once known to be non-blocking
        #: :meth:`take_over` was called: the socket is no longer the server's.
        self.taken_over = False

    def __repr__(self) -> str:
        fd = "-" if self._sock is None else self._sock.fileno()
        return f"<Transport {self.server} fd={fd}>"

    @property
    def sock(self) -> socket.socket:
        """The socket; made by ``open_socket`` at first use if the transport has one."""
        sock = self._sock
        if sock is None:
            assert self._open_socket is not None
            sock = self._sock = self._open_socket()
        return sock

    def take_over(self, timeout: float | None, io: Any = None) -> bytes:
        """Make the socket ours; return the bytes the server had already buffered.

        Sets ``TCP_NODELAY`` (small frames must not wait for Nagle) and our own socket
        timeout (``timeout`` bounds every blocking send; the server's own timeouts must
        not apply). ``io`` is the connection's ``IOState``, which the transport shares
        (``db_checked``). Call once; does not block.
        """
        self.taken_over = True
        if io is not None:
            self.io = io
        sock = self.sock  # opened now if it is ours to open
        if self._on_take_over is not None:
            self._on_take_over()
        buffered = self._drain() if self._drain is not None else self._drain_rfile()
        if self._close_rfile and self.rfile is not None:
            # Read no more: the socket is ours. Closing a BufferedReader frees its buffer
            # (bench/FINDINGS.md, section 11); its raw SocketIO's close()
            # leaves the socket open (the socket object holds its own reference).
            with contextlib.suppress(Exception):
                self.rfile.close()  # type: ignore[attr-defined]
            self.rfile = None
        with contextlib.suppress(OSError):  # not TCP (a socketpair in tests)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        # A timeout makes the fd O_NONBLOCK (for gevent's and eventlet's sockets too),
        # which is what lets try_send() and recv() use it directly. Not under TLS (a
        # server's certfile): the bytes on the fd are TLS records.
        with contextlib.suppress(OSError, ValueError):
            fd = sock.fileno()
            if not os.get_blocking(fd) and not hasattr(sock, "do_handshake"):
                self._nb_fd = fd
        self._waiter = _gevent_waiter(sock)
        self.io.bytes_in += len(buffered)
        return buffered

    def fast_path(self, **parts: Any) -> Any:
        """A ``_fastpath.FastPath`` over this socket (``parts``: the websocket's share of
        its arguments), or None where it cannot run: no gevent, no C extension, a TLS
        socket. Call after :meth:`take_over`."""
        waiter = self._waiter
        if _fastpath is None or not isinstance(waiter, _fastpath.Waiter) or self._nb_fd < 0:
            return None
        return _fastpath.FastPath(
            waiter=waiter,
            fd=self._nb_fd,
            release_idle=release_idle_connections,
            db_interval=CHECK_INTERVAL,
            **parts,
        )

    def _drain_rfile(self) -> bytes:
        # The client may send its first frame in the same segment as the handshake;
        # the server's reader then holds it (docs/internals/architecture.rst, pitfall 1).
        # With the socket non-blocking, read1() returns what is buffered, then what the
        # kernel has, then b"" instead of blocking.
        if self.rfile is None:
            return b""
        chunks = []
        previous = self.sock.gettimeout()
        self.sock.settimeout(0)
        try:
            while True:
                try:
                    chunk = self.rfile.read1(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            pass  # the peer is gone: the first recv() will say so
        finally:
            self.sock.settimeout(previous)
        return b"".join(chunks)

    def wait_readable(self, timeout: float | None) -> bool:
        """Block up to ``timeout`` seconds (None: forever, 0: just look) until the socket
        is readable (data, EOF or an error). Cooperative under gevent/eventlet
        monkey-patching, and it does not touch the socket's timeout (which a concurrent
        sender relies on). May return False before ``timeout`` (callers re-check the
        time). Before blocking, closes this thread's idle database connections
        (:func:`dwebsocket.db.release_idle_connections`)."""
        if timeout is not None and timeout <= 0:
            return self._poll(0)
        # About to block, maybe for long: give back the database connections Django would
        # close at the end of a request (docs/deployment.rst, "Database connections"). This
        # runs on the view's thread, whose connections they are. At one wait per message
        # that cost a tenth of the CPU (bench/FINDINGS.md, section 1), so a busy socket is
        # checked at most once a second; an idle one still is within a second: the wait
        # is cut there for the check.
        deadline = None if timeout is None else _monotonic() + timeout
        readable, self.io.db_checked = wait_releasing(
            self._ready, self.io.db_checked, deadline, release_idle_connections
        )
        return readable is not None

    def _ready(self, deadline: float | None) -> bool | None:
        """:meth:`_wait` as :func:`~dwebsocket.db.wait_releasing` asks: None, not False."""
        return True if self._wait(deadline) else None

    def _wait(self, deadline: float | None) -> bool:
        """Wait until readable or the monotonic time ``deadline`` (None: no limit)."""
        waiter = self._waiter
        if waiter is not None:
            readable = waiter.wait(deadline)
            if readable is not None:
                return readable
        return self._poll(None if deadline is None else max(0.0, deadline - _monotonic()))

    def _poll(self, timeout: float | None) -> bool:
        if hasattr(select, "poll"):
            poller = self._poller
            if poller is None:
                poller = self._poller = select.poll()
                poller.register(self.sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(None if timeout is None else int(timeout * 1000 + 0.999)))
        # eventlet (its green select module has no poll) and Windows:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def recv(self) -> bytes:
        """One ``recv``; b"" at EOF or when the connection broke. Call when readable.

        On a non-blocking fd, ``read(2)`` itself: the socket is readable, so what gevent's
        or eventlet's ``recv()`` adds (a Python frame, a wait on EAGAIN) is not needed.
        Raises ``BlockingIOError`` if it was not readable after all. A ``MemoryError``
        may come after the read (``os.read()``'s shrink of its buffer, the ``bytes_in``
        count), its bytes lost: the caller fails the connection
        (``DefaultWebSocket._lost_received``)."""
        try:
            if self._nb_fd >= 0:
                data = _read(self._nb_fd, _RECV_SIZE)
            else:
                data = self.sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError, InterruptedError):
            raise
        except OSError:
            return b""
        self.io.bytes_in += len(data)
        return data

    def try_recv(self) -> bytes | None:
        """What the socket has now, without waiting: None if nothing (or the fd is not
        known to be non-blocking), b"" at EOF or when the connection broke. A
        ``MemoryError`` may have lost what it read, as in :meth:`recv`."""
        if self._nb_fd < 0:
            return None
        try:
            data = _read(self._nb_fd, _RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""
        self.io.bytes_in += len(data)
        return data

    def try_send(self, data: bytes) -> int:
        """Write what the kernel takes now; return how many bytes that was (0 when its
        buffer is full, or before :meth:`take_over`). Never blocks, not even cooperatively.

        One ``write(2)`` on the non-blocking fd: ``sock.send`` would wait for room (a
        socket with a timeout polls first; gevent's and eventlet's wait on EAGAIN).
        Raises ``OSError`` when the connection is broken."""
        if self._nb_fd < 0:
            return 0
        try:
            sent = _write(self._nb_fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        self.io.bytes_out += sent
        return sent

    def sendall(self, data: bytes) -> None:
        """Write all of ``data``, waiting for room like ``sock.sendall`` (cooperatively
        under gevent/eventlet; bounded by the socket's timeout). Raises ``OSError`` when
        the connection is broken or the timeout expires.

        One ``write(2)`` first: it takes the whole frame unless the socket buffer is full,
        while gevent's ``sendall()`` costs a ``getsockopt()`` and a memoryview per call."""
        fd = self._nb_fd
        if fd >= 0:
            try:
                sent = _write(fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            self.io.bytes_out += sent
            if sent == len(data):
                return
            if sent:
                data = memoryview(data)[sent:]  # type: ignore[assignment]
        self.sock.sendall(data)
        self.io.bytes_out += len(data)

    def shutdown(self) -> None:
        """``shutdown(SHUT_RDWR)``, never ``close()``: the server owns the socket.

        The client sees EOF at once, and the server's later write of Django's response
        fails like a write to a client that went away (docs/internals/architecture.rst,
        "Taking a connection over, per server", pitfall 2)."""
        if self._sock is None:
            return  # never opened
        with contextlib.suppress(OSError):  # already shut down, or reset by the peer
            self._sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Tell the server the session is over (call after :meth:`shutdown`)."""
        self._nb_fd = -1  # the server may close it now, and the number be reused
        if self._waiter is not None:
            self._waiter.close()
        if self._on_release is not None:
            self._on_release()
        if self._open_socket is not None and self._sock is not None:
            self._sock.close()  # ours (see the class docstring)


#: ``_fastpath.Messages``: ``iter(websocket)`` in C, None without the extension.
fast_messages: Any = _fastpath.Messages if _fastpath is not None else None


class _ReadWaiter(Protocol):
    """What :class:`Transport` needs of a gevent read waiter (see _GeventReadWaiter)."""

    def wait(self, deadline: float | None, /) -> bool | None: ...
    def close(self) -> None: ...


def _gevent_waiter(sock: socket.socket) -> _ReadWaiter | None:
    """A waiter if ``sock`` is a gevent socket, else None: ``_fastpath.Waiter`` (the same
    in C) when the extension is built."""
    gevent_socket = sys.modules.get("gevent.socket")
    if gevent_socket is None or not isinstance(sock, gevent_socket.socket):
        return None
    from gevent import get_hub  # type: ignore[import-untyped]

    if _fastpath is not None:
        return _fastpath.Waiter(get_hub(), sock.fileno())  # type: ignore[no-any-return]
    return _GeventReadWaiter(sock, get_hub())


class _GeventReadWaiter:
    """Waits until a gevent socket is readable, cheaply: at one wait per message, gevent's
    ``select.poll()`` (new watchers and a result object per call) and a ``Timeout`` per
    call took a large share of the server's CPU (bench/FINDINGS.md, sections 1 and 12).
    ``_fastpath.Waiter`` is the same in C, except that its io watcher stays started between
    waits (see _fastpath.c).

    One libev io watcher serves the socket's whole life. One timer is armed for the
    earliest deadline asked and re-armed only when a wait must end sooner: a later
    deadline keeps it, so the keepalive deadline that moves with every message costs
    nothing. A wait may therefore end early (returns False); callers re-check the time.

    ``close()`` may come from any thread: the watchers are touched only in the hub's
    (which may be running libev without the GIL), and a wait in progress is woken
    through :meth:`_expired`, which switches only to a greenlet still waiting here.
    """

    def __init__(self, sock: socket.socket, hub: Any) -> None:
        from gevent.monkey import get_original  # type: ignore[import-untyped]
        from greenlet import getcurrent  # type: ignore[import-untyped]

        self._getcurrent = getcurrent
        # The OS thread's id (monkey-patching makes threading.get_ident() a greenlet's).
        self._get_ident = get_original("_thread", "get_ident")
        self._thread = self._get_ident()  # the hub's
        self._hub = hub
        self._hub_switch = hub.switch
        self._io = hub.loop.io(sock.fileno(), 1)
        self._timer: Any = None
        self._timer_at = 0.0
        self._waiting: Any = None  # the greenlet in wait() (arming or switched), if any
        self._switched = False  # it is in the hub's switch(): the watchers may wake it
        self._readable_meanwhile = False  # _ready() came while it armed (see wait())
        self._closed = False  # close() was called, in any thread
        self._torn_down = False  # the watchers are freed (or being freed)
        self._close_scheduled = False
        self._io_closed = False

    def wait(self, deadline: float | None) -> bool | None:
        """True when readable; False when a timer fired, maybe before ``deadline`` (a
        monotonic time; None: no limit), or the waiter was closed meanwhile. None when
        this waiter cannot be used: it is closed, another greenlet waits on it, or the
        caller is in another thread than the hub it was made with (the caller then falls
        back to ``select.poll()``).

        The io watcher's callback switches straight back to the waiting greenlet, without
        a gevent ``Waiter`` between (FINDINGS.md, section 9).

        The calls that arm the wait (``loop.timer()``, ``start()``; a garbage collection
        they start: its finalizers) may run Python that yields to the hub and to other
        greenlets. So the wait counts as begun before them: a close() or another
        greenlet's wait meanwhile sees it (that wait is refused). The watchers switch into
        the greenlet only once it is in the hub's ``switch()`` (a switch into the code
        running there would be a stray one); a timer that fired meanwhile or the socket
        readable meanwhile, like a close(), end the wait after those calls (False: the
        caller checks the time and waits again), as in ``_fastpath.Waiter``."""
        if self._closed or self._waiting is not None or self._get_ident() != self._thread:
            return None
        current = self._getcurrent()
        if current is self._hub:
            return None
        self._waiting = current
        try:
            if deadline is not None and (self._timer is None or self._timer_at > deadline):
                self._stop_timer()
                timer = self._hub.loop.timer(max(deadline - _monotonic(), 0.0), ref=False)
                # The waiter's before start(): Python that start() runs once it has
                # started it may see it fire (_expired() clears it: seen gone below).
                self._timer, self._timer_at = timer, deadline
                try:
                    timer.start(self._expired, update=True)
                except BaseException:
                    # start() may have started it before raising (Python it ran after):
                    # stopped and closed, unless it fired or a close() did that meanwhile.
                    if self._timer is timer:
                        self._stop_timer()
                    raise
            self._io.start(self._ready)
            if (
                self._closed
                or self._readable_meanwhile
                or (deadline is not None and (self._timer is None or self._timer_at > deadline))
            ):
                return False
            self._switched = True  # nothing that may run Python from the checks to the switch
            readable = self._hub_switch() is True
        finally:
            self._switched = self._readable_meanwhile = False
            self._io.stop()
            self._waiting = None
            if self._closed:  # during the wait: free the watchers here, in the hub's thread
                self._torn_down = True
                self._stop_timer()
                self._close_io()
        return readable and not self._closed  # closed: the fd may be another's by now

    def _ready(self) -> None:
        if self._switched:
            self._waiting.switch(True)
        elif self._waiting is not None:  # readable while the wait arms: it ends (wait())
            self._readable_meanwhile = True
            self._io.stop()  # or the loop calls again at every turn meanwhile

    def _expired(self) -> None:
        self._timer = None
        if self._switched:
            self._waiting.switch(False)

    def _stop_timer(self) -> None:
        # Dropped first: if stop() raises, no wait takes it for an armed timer after.
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def close(self) -> None:
        """Free the watchers; a wait in progress ends (False) and later ones return None.
        Callable from any thread (see the class docstring)."""
        self._closed = True
        if self._torn_down or self._close_scheduled:
            return
        if self._get_ident() != self._thread:
            self._close_scheduled = True
            self._hub.loop.run_callback_threadsafe(self._teardown)
            return
        self._teardown()

    def _teardown(self) -> None:
        """Stop the timer and close the io watcher, once; in the hub's thread."""
        if self._torn_down:
            return
        self._torn_down = True
        self._stop_timer()
        if self._waiting is None:
            self._close_io()
        else:  # the wait's finally closes it; wake it without a stray switch
            self._hub.loop.run_callback(self._expired)

    def _close_io(self) -> None:
        if not self._io_closed:
            self._io_closed = True
            self._io.close()
