"""How a request's own core waits, under each uWSGI concurrency mode, for its connection
to become readable or for another greenlet/thread to hand it something to send.

uWSGI lets only the request's own core call its API (``SystemError: you can call uwsgi api
function only from the main callable``; under ``--async`` another request's core would
silently act on its *own* connection instead). So the owning core waits on two things at
once: the connection fd, and a wake-up fd other cores write to. Both live in one
per-connection selector (epoll/kqueue), and only the selector's fd is handed to the
server's event loop, because (measured on 2.0.31, ``core/async.c``):

- under ``--async``, when two fds registered with ``uwsgi.wait_fd_read`` are ready in
  the same loop iteration, uWSGI resumes the request for the first and ``close()``\\ s the
  second as an "unknown fd" -- the wake-up fd, or the connection itself;
- under ``--async``, a ``uwsgi.wait_fd_read(fd, timeout)`` that times out leaves the
  request's timed-out flag set, and the next write that has to wait (a large send) then
  fails at once with ``TIMEOUT !!!``. Deadlines therefore come from a ``timerfd`` in the
  same selector, never from uWSGI;
- under ``--async --ugreen`` (uWSGI 2.0.31 always enables Python threads), the Python
  ``uwsgi.suspend()`` switches cores *holding the GIL*: the next request that starts
  waits for the GIL forever and the worker hangs. uWSGI's own blocking calls
  (``websocket_recv``) release the GIL before they switch; we do the same by calling the
  C function behind ``uwsgi.suspend`` through ctypes, which releases the GIL around
  foreign calls.

Under ``--gevent`` the selector fd is waited on with ``gevent.socket.wait_read``
(``uwsgi.wait_fd_read`` + ``suspend`` fails there); under processes/threads with a
plain blocking ``select``. The selectors are the interpreter's own even when gevent has
monkey-patched ``selectors`` (``--gevent-early-monkey-patch``): gevent's
``DefaultSelector`` has no fd to hand to the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import math
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uwsgi  # type: ignore[import-untyped]

from dwebsocket.exceptions import BackendUnavailable

__all__ = ["Mode", "Waiter", "current_mode", "owner_key"]


class Mode(enum.Enum):
    """The uWSGI concurrency model of the current worker."""

    GEVENT = "gevent"  # --gevent N: one greenlet per request
    ASYNC = "async"  # --async N with a suspend engine (--ugreen, --greenlet)
    BLOCKING = "blocking"  # processes and --threads: one request per thread


def _opt(name: str) -> Any:
    value = uwsgi.opt.get(name)
    if isinstance(value, list):  # an option given more than once
        value = value[-1]
    return value


def current_mode() -> Mode:
    """The concurrency mode this worker runs in. Does not block.

    Raises ``BackendUnavailable`` for ``--async`` cores without a suspend engine
    (``--ugreen``, ``--greenlet``) and other loop engines: nothing would switch cores
    while a view waits, so one WebSocket would hold the whole worker."""
    loop = uwsgi.loop
    if loop in (b"gevent", "gevent"):
        return Mode.GEVENT
    if uwsgi.cores > 1 and not _opt("threads"):
        if _opt("ugreen") or _opt("greenlet"):
            return Mode.ASYNC
        raise BackendUnavailable(
            "the uwsgi backend cannot serve uWSGI --async cores without --ugreen (a view "
            "waiting for messages would block every core of the worker); use --gevent, "
            "or add --ugreen"
        )
    return Mode.BLOCKING


def owner_key(mode: Mode) -> tuple[Any, ...]:
    """Who is calling: the identity of the current greenlet / thread / async core.

    Compared with the key taken when the connection was created to tell the request's
    own core from the others. Never calls the uWSGI API from a foreign greenlet (that
    logs ``[BUG] current_wsgi_req NOT FOUND``)."""
    if mode is Mode.GEVENT:
        import greenlet  # type: ignore[import-untyped]

        return (greenlet.getcurrent(),)
    if mode is Mode.ASYNC:
        # Every --async core runs on the same thread and the same greenlet: only the
        # request's fd tells them apart. A thread that is no request has none.
        try:
            return (threading.get_ident(), uwsgi.connection_fd())
        except SystemError:
            return (threading.get_ident(), None)
    return (threading.get_ident(),)


class _TimerFd:
    """A Linux ``timerfd``: an fd that becomes readable at a deadline (so ``--async`` cores
    get sub-second deadlines without uWSGI's timeouts). ``os.timerfd_create`` exists
    from Python 3.13; before, the libc call through ctypes."""

    _CLOCK_MONOTONIC = 1

    class _Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", ctypes.c_long * 2), ("it_value", ctypes.c_long * 2)]

    _libc: Any = None

    def __init__(self) -> None:
        if hasattr(os, "timerfd_create"):  # pragma: no cover - Python >= 3.13
            self.fd = os.timerfd_create(
                time.CLOCK_MONOTONIC,
                flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC,  # type: ignore[attr-defined]
            )
            self._settime: Callable[[float], None] = lambda delay: os.timerfd_settime(  # type: ignore[attr-defined]
                self.fd, initial=delay
            )
            return
        libc = type(self)._libc
        if libc is None:
            libc = type(self)._libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(self._CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

        def settime(delay: float) -> None:
            spec = self._Itimerspec()
            if delay > 0:
                seconds = int(delay)
                spec.it_value[0] = seconds
                spec.it_value[1] = max(1, int((delay - seconds) * 1e9))
            if libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None) < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

        self._settime = settime

    def arm(self, delay: float) -> None:
        """Become readable in ``delay`` seconds (> 0); replaces any earlier deadline."""
        self._settime(max(delay, 1e-6))

    def disarm(self) -> None:
        self._settime(0)
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


_suspend_c: Any = None


def _suspend() -> None:
    """``uwsgi.suspend()`` with the GIL released (see the module docstring)."""
    global _suspend_c
    if _suspend_c is None:
        try:
            func = ctypes.CDLL(None).py_uwsgi_suspend  # exported by the uwsgi binary
        except AttributeError:  # pragma: no cover - a uWSGI without the symbol
            _suspend_c = False
        else:
            func.restype = ctypes.c_void_p  # Py_True, borrowed: not ours to touch
            func.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            _suspend_c = func
    if _suspend_c:
        _suspend_c(None, None)
    else:  # pragma: no cover
        uwsgi.suspend()


def _new_selector() -> selectors.BaseSelector:
    """A selector of the platform's (epoll, kqueue), also where gevent has monkey-patched
    ``selectors`` and its ``DefaultSelector`` (gevent's) has no ``fileno()``."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("selectors"):
        return monkey.get_original("selectors", "DefaultSelector")()  # type: ignore[no-any-return]
    return selectors.DefaultSelector()


def _timerfd_available() -> bool:
    return sys.platform.startswith("linux")


class Waiter:
    """The owning core's wait: its connection fd, a wake-up fd, and (``--async``) a timer.

    :meth:`wake` may be called from any thread or greenlet and never blocks;
    :meth:`wait` only from the owning core. :meth:`close` releases the fds.
    """

    def __init__(self, mode: Mode, connection_fd: int) -> None:
        self.mode = mode
        self._selector = _new_selector()
        self._wake_r = self._wake_w = -1
        self._timer: _TimerFd | None = None
        try:
            if not hasattr(self._selector, "fileno") and mode is not Mode.BLOCKING:
                raise RuntimeError(
                    "the uwsgi backend needs epoll or kqueue under --gevent and --async"
                )
            self._wake_r, self._wake_w = self._wake_fds()
            if mode is Mode.ASYNC and _timerfd_available():
                self._timer = _TimerFd()
                self._selector.register(self._timer.fd, selectors.EVENT_READ)
            self._connection_fd = connection_fd
            self._selector.register(connection_fd, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
        except BaseException:
            # Out of fds halfway (EMFILE): give back those taken, the caller refuses.
            self._release()
            raise
        self._closed = False
        # wake() may run in another thread while the owner closes: never write to an fd
        # number that close() released (it may already be another connection's socket).
        self._lock = threading.Lock()

    @staticmethod
    def _wake_fds() -> tuple[int, int]:
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return fd, fd
        r, w = os.pipe()  # pragma: no cover - not Linux
        for fd in (r, w):  # pragma: no cover
            os.set_blocking(fd, False)
        return r, w  # pragma: no cover

    def wake(self) -> None:
        """Make the owner's current or next :meth:`wait` return. Never blocks."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._wake_r == self._wake_w:
                    os.eventfd_write(self._wake_w, 1)
                else:  # pragma: no cover - not Linux
                    os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # already signalled

    def _clear_wake(self) -> None:
        try:
            if self._wake_r == self._wake_w:
                os.eventfd_read(self._wake_r)
            else:  # pragma: no cover - not Linux
                while os.read(self._wake_r, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def _block(self, timeout: float | None) -> None:
        """Block the owning core until something in the selector is ready or ``timeout``
        seconds passed (None: no limit); cooperative under ``--gevent`` and ``--async``."""
        selector = self._selector
        if self.mode is Mode.GEVENT:
            from gevent.socket import wait_read  # type: ignore[import-untyped]

            with contextlib.suppress(_Timeout):
                wait_read(selector.fileno(), timeout=timeout, timeout_exc=_Timeout())  # type: ignore[attr-defined]
        elif self.mode is Mode.ASYNC:
            timer = self._timer
            if timer is not None:
                if timeout is not None:
                    timer.arm(timeout)
                try:
                    uwsgi.wait_fd_read(selector.fileno())  # type: ignore[attr-defined]
                    _suspend()
                finally:
                    if timeout is not None:
                        timer.disarm()
            else:  # pragma: no cover - not Linux: uWSGI's own (whole-second) timeout
                seconds = 0 if timeout is None else max(1, math.ceil(timeout))
                uwsgi.wait_fd_read(selector.fileno(), seconds)  # type: ignore[attr-defined]
                _suspend()
        else:
            selector.select(timeout)

    def wait(self, timeout: float | None) -> None:
        """Block the owning core until the connection is readable, :meth:`wake` was
        called, or ``timeout`` seconds passed (None: no limit). Returns nothing: the
        caller looks at everything again anyway."""
        self._block(timeout)
        self._clear_wake()

    def let_others_run(self) -> None:
        """Let the worker's event loop run once (the other cores' I/O and requests), then
        return; for the owning core, which otherwise waits only when nothing is ready.
        Nothing where the loop is no one's to yield to (processes and threads), nor under
        ``--async`` without a ``timerfd``, whose whole-second wait would stall the core."""
        if self.mode is Mode.GEVENT or (self.mode is Mode.ASYNC and self._timer is not None):
            self._block(0)

    def wait_connection(self, *, write: bool, timeout: float) -> bool:
        """Block the owning core until the connection is writable (``write``) or readable,
        up to ``timeout`` seconds; True if it is. Wake-ups do not end this wait. For the
        few raw writes and reads uWSGI has no API for (close frames, pings)."""
        event = selectors.EVENT_WRITE if write else selectors.EVENT_READ
        deadline = time.monotonic() + timeout
        fd, selector = self._connection_fd, self._selector
        # The connection's own selector with the wake-up fd left out, not a new one: a
        # worker out of file descriptors must still be able to close its connections.
        selector.unregister(self._wake_r)
        selector.modify(fd, event)
        try:
            while not any(key.fd == fd for key, _ in selector.select(0)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._block(remaining)
        finally:
            selector.modify(fd, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
        return True

    def close(self) -> None:
        """Release the selector, the wake-up fd and the timer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def _release(self) -> None:
        self._selector.close()
        for fd in {self._wake_r, self._wake_w} - {-1}:
            os.close(fd)
        if self._timer is not None:
            self._timer.close()


class _Timeout(Exception):
    """A wait that timed out (gevent's ``timeout_exc``)."""
