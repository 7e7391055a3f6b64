"""The open connections of this process, so that a stopping server can say goodbye.

A connection of the default backend is registered when its 101 response is out and
unregistered when it closes (through the ``websocket_opened`` / ``websocket_closed``
signals). :func:`going_away` closes every registered connection with 1001 (RFC 6455
7.4.1: "an endpoint is going away, such as a server going down"); the views blocked in
``wait()`` then see the connection closed and return. A connection that opens after it
(its handshake was in progress when the stop began) is closed with 1001 as it opens:
the server is waiting for its views to return. The per-server hooks that call it
on SIGTERM/SIGINT are in ``dwebsocket.contrib`` (see ``docs/deployment.rst``); an
:mod:`atexit` hook calls it as a last resort, for servers stopped with Ctrl-C
(``manage.py runserver``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.conf import CLOSE_TIMEOUT, settings
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.websocket import WebSocket

__all__ = ["going_away", "open_websockets", "spawn"]

logger = logging.getLogger("dwebsocket")

GOING_AWAY = 1001
_POLL = 0.05  # seconds between looks while waiting for the goodbyes

# set.add/discard and list(set) are atomic under the GIL: no lock, so that a signal
# handler interrupting a thread in the middle of an update cannot deadlock.
_open: set[DefaultWebSocket] = set()

#: The reason :func:`going_away` gave, once it was called: this process is stopping.
_stopping: str | None = None

#: A :func:`going_away` has waited for the connections: the exit hook does not again (a
#: connection whose goodbye cannot go out would hold the exit for a second timeout).
_waited = False


def open_websockets() -> list[DefaultWebSocket]:
    """The connections of this process that are open now (a snapshot)."""
    return list(_open)


def going_away(reason: str = "server shutting down", timeout: float | None = None) -> int:
    """Close every open connection with 1001 and ``reason``; return how many there were.

    Each is closed concurrently (a thread, or a greenlet / green thread when
    monkey-patched), as ``websocket.close(1001, reason)`` does. Waits up to ``timeout``
    seconds for them to close and for their views to return, ``finally`` blocks included,
    since the server may exit or kill what still runs as soon as this returns (None:
    ``WEBSOCKET_CLOSE_TIMEOUT`` plus a second; 0: not at all --
    what a signal handler running on a view's own thread must pass, since that view
    has to run for its connection to finish closing). From then on, a connection that
    opens in this process is closed with 1001 as it opens. Never raises.
    """
    global _stopping, _waited
    _stopping = reason  # before the snapshot: a connection opening meanwhile is in one of them
    websockets = open_websockets()
    if not websockets:
        return 0
    logger.info("Server stopping: closing %d WebSocket(s) with %d", len(websockets), GOING_AWAY)
    if _exiting:
        # Python 3.12 and later start no thread here: spawn() runs each close() in turn,
        # and each waited for its peer's answer before the next close frame went out (N
        # clients that do not answer: N times WEBSOCKET_CLOSE_TIMEOUT). Every close frame
        # goes out first; the views' readers take the answers.
        for websocket in websockets:
            _start_close(websocket, reason)
    for websocket in websockets:
        spawn(goodbye, websocket, reason)
    if timeout is None:
        timeout = stop_timeout()
    wait_until(lambda: not any(_running(websocket) for websocket in websockets), timeout)
    _waited = _waited or timeout > 0
    return len(websockets)


def wait_until(
    done: Callable[[], bool],
    timeout: float | None = None,
    sleep: Callable[[float], Any] | None = None,
) -> None:
    """Until ``done()``, for ``timeout`` seconds at most (None: :func:`stop_timeout`).
    Polls rather than joins: cooperative under gevent and eventlet (``time.sleep``, looked
    up at each call, is patched; ``sleep`` is the loop's own where it is not), and the
    same code whatever ran the goodbyes."""
    deadline = time.monotonic() + (stop_timeout() if timeout is None else timeout)
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        (sleep or time.sleep)(min(_POLL, remaining))


def stop_timeout() -> float:
    """How long a stop waits for its goodbyes by default: ``WEBSOCKET_CLOSE_TIMEOUT``
    plus a second (the close handshake, then the views' ``finally`` blocks)."""
    try:
        return float(settings.WEBSOCKET_CLOSE_TIMEOUT) + 1.0
    except InvalidSetting:  # reported at each handshake; the server is stopping
        return CLOSE_TIMEOUT.default + 1.0


def _running(websocket: DefaultWebSocket) -> bool:
    """Open, or its session not over yet (the view still runs)."""
    return websocket in _open or not getattr(websocket, "_session_over", True)


def spawn(target: Callable[..., None], *args: Any) -> None:
    """Run ``target(*args)`` concurrently without blocking the caller, which may be a
    signal handler running inside gevent's or eventlet's event loop (where even
    ``Thread.start()`` would block, waiting for the new thread to start; eventlet's hub,
    waiting for I/O there, is woken so that it starts at once). At interpreter exit
    (``atexit``), where Python 3.12 and later start no thread, it runs here."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        import gevent  # type: ignore[import-untyped]

        gevent.spawn(target, *args)
        return
    hub = eventlet_hub()
    if hub is not None:
        import eventlet  # type: ignore[import-untyped]

        eventlet.spawn_n(target, *args)
        _wake_eventlet_hub(hub)
        return
    thread = threading.Thread(target=target, args=args, name="dwebsocket-going-away", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        if not sys.is_finalizing() and not _exiting:
            raise
        target(*args)


def eventlet_hub() -> Any:
    """eventlet's hub where eventlet has patched threads, else None."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None or not patcher.is_monkey_patched("thread"):
        return None
    from eventlet import hubs

    return hubs.get_hub()


def _wake_eventlet_hub(hub: Any) -> None:
    """Called on eventlet's hub greenlet (a signal handler that ran while the hub waited
    for I/O), make that wait end now. Python retries a wait that a signal interrupted once
    its handler returns (PEP 475), for the time left, which the hub reckoned before
    anything was spawned: the new green thread (a timer) would start at the hub's next
    timer or I/O, seconds later (60 s with neither). The write end of a new pipe, which
    is writable at once, ends the retried wait; the hub's callback closes the pipe.
    Elsewhere (a view's green thread, the main one) the hub is not waiting: nothing to do."""
    import greenlet  # type: ignore[import-untyped]

    if greenlet.getcurrent() is not hub.greenlet:
        return
    read_end, write_end = os.pipe()

    def woken(fileno: int) -> None:
        hub.remove(listener)
        os.close(read_end)
        os.close(write_end)

    listener = hub.add(hub.WRITE, write_end, woken, lambda *_: None, lambda *_: None)


def goodbye(websocket: WebSocket, reason: str) -> None:
    """``websocket.close(1001, reason)``; what it raises is logged at DEBUG only."""
    try:
        websocket.close(GOING_AWAY, reason)
    except Exception as exc:  # a goodbye that fails changes nothing: the server stops
        logger.debug("Closing %r with 1001 failed: %r", websocket, exc)


def _start_close(websocket: DefaultWebSocket, reason: str) -> None:
    try:
        websocket._start_close(GOING_AWAY, reason)
    except Exception as exc:  # as goodbye(): the close() that follows tries again
        logger.debug("Closing %r with 1001 failed: %r", websocket, exc)


def _opened(sender: Any, websocket: DefaultWebSocket, **kwargs: Any) -> None:
    if not isinstance(websocket, DefaultWebSocket):
        return
    _open.add(websocket)
    if _stopping is not None:  # its handshake was in progress when the stop began
        spawn(goodbye, websocket, _stopping)


def _closed(sender: Any, websocket: DefaultWebSocket, **kwargs: Any) -> None:
    if isinstance(websocket, DefaultWebSocket):
        _open.discard(websocket)


#: True once the interpreter runs its exit hooks (``sys.is_finalizing()`` is not yet).
_exiting = False


def _at_exit() -> None:
    global _exiting
    _exiting = True
    if _open and not _waited:
        # A second Ctrl-C (or a SIGTERM) while the goodbyes finish: the 1001s are out,
        # and whoever sent it wants the process gone now, not a traceback.
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            if _stopping is None:
                going_away()
            else:
                # Said already, without a wait (going_away(0): a stop signal that
                # interrupts runserver, dwebsocket.contrib.shutdown): no second goodbye,
                # a wait for those (connections that opened since were told as they
                # opened), as a going_away() that waits would have.
                websockets = open_websockets()
                wait_until(lambda: not any(_running(websocket) for websocket in websockets))


# Every sender, not DefaultWebSocket's alone: the class an application's factory makes may
# be a subclass of it, whose signals have that subclass as sender.
websocket_opened.connect(_opened, dispatch_uid="dwebsocket.registry")
websocket_closed.connect(_closed, dispatch_uid="dwebsocket.registry")
atexit.register(_at_exit)

#: Set last: the module is imported (``dwebsocket.contrib.shutdown.loaded_registry``).
loaded = True
