"""The worker thread of one ASGI ``websocket`` scope, which an idle session gives back.

Django runs each ASGI request in ``asgiref``'s ``ThreadSensitiveContext``: the request's
sync code (``request_started``, sync middleware, a sync view, an async view's
``sync_to_async`` calls) runs in one thread of its own, a ``ThreadPoolExecutor`` of one
worker that lives until the request ends. A WebSocket request ends hours later, so every
``async def`` view waiting for messages held an idle OS thread for its whole session
(``bench/FINDINGS.md`` section 18: under uvicorn an idle async connection cost 58 KiB, 35
once the thread was given back and the connection trimmed).

:class:`SessionExecutor` keeps asgiref's rule, one call at a time on one thread while the
calls keep coming, and lets the thread go after :data:`LINGER` seconds without one. Before
it ends, the thread closes its database connections, as a request's end does, unless one
of them is inside a transaction: then the thread stays until it is not. The next call
starts a new thread. A sync view's session is one long call, so it keeps its thread as
before (``WEBSOCKET_ASGI_THREADS`` counts those). So is an ``async def`` view's, when a
sync frame of the request waits for it (a sync-only middleware: Django then runs the
rest of the chain in the thread, and the view through ``async_to_sync``):
:func:`held` tells, and the session counts against the cap as well.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import Any

from asgiref.sync import SyncToAsync, ThreadSensitiveContext

from dwebsocket import db

__all__ = ["LINGER", "SessionExecutor", "held", "session_context"]

#: Seconds a session's thread waits for its next call before it ends.
LINGER = 1.0


class SessionExecutor(Executor):
    """Runs calls one at a time, in submission order, on one thread that is started by the
    first call and ends after ``linger`` idle seconds (see the module's docstring)."""

    def __init__(self, linger: float = LINGER) -> None:
        self._linger = linger
        # The lock orders a call's arrival against the thread's decision to end: a call
        # queued under it finds either the thread that will run it or none (and starts one).
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = False  # written by the thread only

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._calls.put((future, fn, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="dwebsocket-session")
                self._thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while not self._calls.empty():
                    call = self._calls.get()
                    if call is not None:
                        call[0].cancel()
            thread = self._thread
            self._calls.put(None)  # wakes the thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread now serving this executor's calls, if any."""
        return self._thread

    @property
    def running(self) -> bool:
        """Whether the thread is in a call now."""
        return self._running

    def _work(self) -> None:
        try:
            while True:
                try:
                    call = self._calls.get(timeout=self._linger)
                except queue.Empty:
                    call = None
                if call is None:
                    if self._calls.empty() and (self._closed or not _in_transaction()):
                        # Before letting go of the executor: once ``thread`` is None, this
                        # thread holds no connection (a call arriving meanwhile reopens).
                        db.close_thread_connections()
                    with self._lock:
                        if self._calls.empty() and (self._closed or not _in_transaction()):
                            self._thread = None
                            return
                    continue
                future, fn, args, kwargs = call
                del call
                if not future.set_running_or_notify_cancel():
                    continue
                # Cleared before the caller can see the call's end: held(), asked on the
                # loop right after awaiting it, must not find it still running.
                self._running = True
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._running = False
                    future.set_exception(exc)
                    del exc  # no cycle through this frame
                else:
                    self._running = False
                    future.set_result(result)
                    del result
                # An idle thread keeps no reference to what it ran.
                del future, fn, args, kwargs
        finally:
            db.close_thread_connections()  # never raises: a failure is logged (again: a no-op)


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _in_transaction() -> bool:
    """Whether one of this thread's database connections is inside ``atomic``."""
    from django.db import connections

    return any(conn.in_atomic_block for conn in connections.all(initialized_only=True))


def held() -> bool:
    """Whether the worker thread of the current ``websocket`` scope is in a call now. On
    the loop, in a coroutine of the request, that call is a sync frame waiting for this
    coroutine (``async_to_sync``), which holds the thread for as long as it runs. False
    outside :func:`session_context`, and inside another application's thread-sensitive
    context (its executor is not a :class:`SessionExecutor`). Never blocks."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.get(context) if context else None
    return isinstance(executor, SessionExecutor) and executor.running


@contextlib.asynccontextmanager
async def session_context() -> AsyncIterator[None]:
    """``ThreadSensitiveContext`` for one ``websocket`` scope, its sync code run by a
    :class:`SessionExecutor`. Inside another thread-sensitive context (an application
    wrapping ours in its own), that context's executor is used, as asgiref does."""
    context = ThreadSensitiveContext()
    async with context:
        if SyncToAsync.thread_sensitive_context.get(None) is context:
            # asgiref makes a context's executor on first use and shuts it down on exit;
            # this one is made first, so asgiref uses it and shuts it down.
            SyncToAsync.context_to_thread_executor[context] = SessionExecutor()
        yield
