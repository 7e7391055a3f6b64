"""Graceful stop for scripts that run ``gevent.pywsgi`` or ``eventlet.wsgi`` themselves.

    from dwebsocket.contrib.shutdown import install
    install(server.stop)          # gevent.pywsgi: before server.serve_forever()
    install()                     # eventlet.wsgi: before eventlet.wsgi.server(...)

On SIGTERM or SIGINT every open WebSocket gets a 1001 close frame ("going away"), then
the server stops: ``stop()`` is called once the connections are closed and their views
have returned (or after ``WEBSOCKET_CLOSE_TIMEOUT`` plus a second). Without ``stop``, the
main thread (greenlet) is interrupted as Python would do it -- ``KeyboardInterrupt`` for
SIGINT, ``SystemExit`` for SIGTERM -- right away under threads and eventlet (whose
``wsgi.server`` then waits for its requests, which end as their connections close),
after the goodbyes under gevent.
``manage.py runserver`` needs nothing: on Ctrl-C an :mod:`atexit` hook says goodbye, and
the app (:func:`install_for_runserver`) makes SIGTERM end it as Ctrl-C does.
gunicorn has its own hooks: ``dwebsocket.contrib.gunicorn``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["going_away", "install", "install_for_runserver"]


def going_away(timeout: float | None = None) -> int:
    """Close every open WebSocket of this process with 1001; see
    ``dwebsocket.backends.default.registry.going_away``.

    Signal handlers call this, so it may run in the middle of any import (a gunicorn
    worker told to stop while it is still loading the app). It imports nothing: until
    the registry is loaded no WebSocket can be open, and importing it from inside a
    half-done import of ``dwebsocket.conf`` would fail on the import circle."""
    registry = loaded_registry()
    if registry is None:
        return 0
    return int(registry.going_away(timeout=timeout))


def loaded_registry() -> Any:
    """``dwebsocket.backends.default.registry`` once imported, else None: also while
    another thread imports it (a worker's first WebSocket request), when it is in
    ``sys.modules`` already, maybe with its ``going_away``, but not yet with what that
    uses nor the receiver that tells the connections opening later. No WebSocket can open
    before the import is over (their thread waits for it)."""
    registry = sys.modules.get("dwebsocket.backends.default.registry")
    return registry if getattr(registry, "loaded", False) else None


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def _eventlet_view_hub() -> Any:
    """eventlet's hub, if eventlet has patched threads and this code runs on a greenlet
    other than the hub's and the main one (the server's); else None."""
    from dwebsocket.backends.default.registry import eventlet_hub

    hub = eventlet_hub()
    if hub is None:
        return None
    import greenlet  # type: ignore[import-untyped]

    current = greenlet.getcurrent()
    return None if current is hub.greenlet or current is hub.greenlet.parent else hub


def install(
    stop: Callable[[], Any] | None = None,
    *,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    timeout: float | None = None,
) -> None:
    """Say goodbye to every open WebSocket on each of ``signals``, then stop (see the
    module docstring). Call from the main thread, before serving. A second signal while
    stopping is ignored, except without ``stop`` and gevent: it interrupts the main
    thread again, ending the server's wait for requests that do not end. ``timeout``
    bounds the wait for the goodbyes before ``stop()`` (None:
    ``WEBSOCKET_CLOSE_TIMEOUT`` plus a second). Under gevent the handlers are
    gevent's (``gevent.signal_handler``, run by the event loop); elsewhere
    :func:`signal.signal` handlers, which never block (under eventlet the interruption
    reaches the server's greenlet, whichever greenlet the handler ran on)."""
    from dwebsocket.backends.default.registry import spawn

    signals = list(signals)
    stopping = [False]

    if _gevent_patched():
        import gevent  # type: ignore[import-untyped]

        def goodbye_then_stop_gevent(signum: int) -> None:
            going_away(timeout)
            if stop is not None:
                stop()
            else:
                gevent.get_hub().parent.throw(_interruption(signum))

        for signum in signals:

            def on_signal_gevent(signum: int = signum) -> None:
                if not stopping[0]:
                    stopping[0] = True
                    gevent.spawn(goodbye_then_stop_gevent, signum)

            gevent.signal_handler(signum, on_signal_gevent)
        return

    def goodbye_then_stop() -> None:
        going_away(timeout)
        if stop is not None:
            stop()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping[0]:
            if stop is None:
                # The server waits for its requests, for ever under eventlet: a second
                # signal ends that wait, as it would without install().
                interrupt(signum)
            return
        stopping[0] = True
        if stop is not None:
            spawn(goodbye_then_stop)
            return
        going_away(0)  # starts the goodbyes; the server's own wait lets them finish
        interrupt(signum)

    def interrupt(signum: int) -> None:
        hub = _eventlet_view_hub()
        if hub is not None:
            # Python runs this on whichever greenlet is running. Usually the hub's, waiting
            # in epoll: raised there, the interruption ends the wait and reaches the main
            # greenlet (the server's, the hub's parent). But a view busy in Python code gets
            # it on its own greenlet, where it would end its request unanswered: the hub
            # throws it into the main greenlet once that view yields.
            hub.schedule_call_global(0, hub.greenlet.parent.throw, _interruption(signum))
            return
        raise _interruption(signum)

    for signum in signals:
        signal.signal(signum, on_signal)


def install_for_runserver(argv: list[str] | None = None) -> bool:
    """In the process that serves ``manage.py runserver`` (the autoreloader's child, or the
    only process with ``--noreload``), make SIGTERM say goodbye (1001) as Ctrl-C does,
    where nothing else handles SIGTERM; ``docker stop`` or an IDE's stop button send it.
    Called by the app's ``ready()``. Returns whether it installed the handler."""
    import os
    import threading

    argv = sys.argv if argv is None else argv
    serving = os.environ.get("RUN_MAIN") == "true" or "--noreload" in argv
    if (
        argv[1:2] != ["runserver"]
        or not serving
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        return False
    install(signals=(signal.SIGTERM,))
    return True
