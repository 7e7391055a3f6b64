"""Graceful stop for scripts that run ``gevent.pywsgi`` or ``eventlet.wsgi`` themselves.

    from dwebsocket.contrib.shutdown import install
    install(server.stop)          # gevent.pywsgi: before server.serve_forever()
    install()                     # eventlet.wsgi: before eventlet.wsgi.server(...)

On SIGTERM or SIGINT every open WebSocket gets a 1001 close frame ("going away"), then
the server stops: ``stop()`` is called once the connections are closed (or after
``WEBSOCKET_CLOSE_TIMEOUT``); without ``stop``, the handler that was there before runs at
once -- for SIGINT Python's ``KeyboardInterrupt``, for SIGTERM a ``SystemExit`` -- and the
server waits for its requests (``eventlet.wsgi`` does), which end as their connections
close. ``manage.py runserver`` needs nothing: on Ctrl-C an :mod:`atexit` hook says
goodbye. gunicorn has its own hooks: ``dwebsocket.contrib.gunicorn``.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["going_away", "install"]


def going_away(timeout: float | None = None) -> int:
    """Close every open WebSocket of this process with 1001; see
    ``dwebsocket.backends.default.registry.going_away``."""
    from dwebsocket.backends.default.registry import going_away as close_all

    return close_all(timeout=timeout)


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def install(
    stop: Callable[[], Any] | None = None,
    *,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    timeout: float | None = None,
) -> None:
    """Say goodbye to every open WebSocket on each of ``signals``, then stop.

    Call from the main thread, before serving. ``timeout`` bounds the wait for the
    goodbyes before ``stop()`` (None: ``WEBSOCKET_CLOSE_TIMEOUT`` plus a second). Under
    gevent the handlers are gevent's (``gevent.signal_handler``), which run in the
    event loop; elsewhere they are :func:`signal.signal` handlers."""
    signals = list(signals)
    stopping = threading.Event()

    def goodbye_then_stop() -> None:
        going_away(timeout)
        if stop is not None:
            stop()

    if _gevent_patched():
        import gevent  # type: ignore[import-untyped]

        def on_signal_gevent() -> None:
            if not stopping.is_set():
                stopping.set()
                gevent.spawn(goodbye_then_stop)

        for signum in signals:
            gevent.signal_handler(signum, on_signal_gevent)
        return

    previous = {signum: signal.getsignal(signum) for signum in signals}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        if stop is not None:
            # In a thread: a handler must not block (under eventlet it runs in the hub).
            threading.Thread(target=goodbye_then_stop, name="dwebsocket-stop", daemon=True).start()
            return
        going_away(0)  # starts the goodbyes; the server's own wait lets them finish
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:
            raise SystemExit(128 + signum) if signum != signal.SIGINT else KeyboardInterrupt

    for signum in signals:
        signal.signal(signum, on_signal)
