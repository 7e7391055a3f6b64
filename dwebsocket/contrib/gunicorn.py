"""A gunicorn configuration module: 1001 for open WebSockets when a worker stops.

    gunicorn -c python:dwebsocket.contrib.gunicorn -k gevent mysite.wsgi

or, in your own ``gunicorn.conf.py``: ``from dwebsocket.contrib.gunicorn import *``
(then call these hooks from yours if you define the same ones).

gunicorn stops a worker with SIGTERM (graceful: stop, ``HUP`` reload, ``TTOU``), or the
worker stops by itself (``--max-requests``), and waits ``--graceful-timeout`` for its
requests, which for WebSockets never end by themselves; with SIGINT/SIGQUIT (quick stop)
or a file changed under ``--reload`` it exits at once. With these hooks every open
WebSocket gets a 1001 close frame first (once: one "Server stopping" line per worker),
so the views return and the worker exits promptly; a WebSocket that opens in a stopping
worker gets it as it opens.
``post_worker_init`` also logs the server checks for this worker (``dwebsocket.W002``:
sync worker, ``dwebsocket.W003``: gthread with one thread). With ``PROMETHEUS_MULTIPROC_DIR``
set, ``child_exit`` tells ``prometheus_client`` that a worker is gone, so that the open
WebSockets it counted no longer count (``dwebsocket.metrics``).
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

__all__ = ["child_exit", "post_worker_init", "worker_exit", "worker_int"]


def post_worker_init(worker: Any) -> None:
    """Chain a goodbye to the worker's SIGTERM handler, to its liveness notice (for a
    worker that stops by itself) and to the opening of a WebSocket in a stopping worker;
    log the server checks."""
    from dwebsocket.checks import report_once
    from dwebsocket.worker import note_gunicorn_worker

    note_gunicorn_worker(worker, hooks=True)
    report_once()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # No waiting here: in the sync worker this handler interrupts the very view
        # whose connection is closing, and that view has to run for it to finish. Once
        # only: the arbiter sends a worker that outlives --graceful-timeout (reload,
        # TTOU) SIGTERM again each second.
        if not _said:
            _goodbye(0)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

    # A worker also stops without a signal: --max-requests reached sets ``alive`` to
    # False, the arbiter gone (its parent changed) ends gthread's loop, and it then waits
    # --graceful-timeout for its requests. It keeps telling the arbiter it lives while it
    # waits: say goodbye there.
    notify = worker.notify

    def notify_then_goodbye() -> None:
        notify()
        if not _said and _stopping(worker):
            _goodbye(0)

    worker.notify = notify_then_goodbye

    # A goodbye that found no registry (the worker had opened no WebSocket yet) was lost:
    # a connection that opens after it -- the request that reached --max-requests, or one
    # accepted in the second before a stopped worker stops accepting -- is told as it
    # opens, not at the next liveness notice, up to a second later, once its view ran.
    from dwebsocket.signals import websocket_opened

    def goodbye_if_stopping(sender: Any, **kwargs: Any) -> None:
        if not _said and _stopping(worker):
            _goodbye(0)

    websocket_opened.connect(
        goodbye_if_stopping, weak=False, dispatch_uid="dwebsocket.contrib.gunicorn"
    )


def _stopping(worker: Any) -> bool:
    """The worker stops: told to, at its --max-requests, or its arbiter gone."""
    return not worker.alive or worker.ppid != os.getppid()


def worker_int(worker: Any) -> None:
    """SIGINT/SIGQUIT, or a file changed under ``--reload``: the worker exits right after
    this hook; say goodbye first (the liveness notice then does not again). In the
    sync worker (or a class derived from it) without waiting: this handler interrupts
    the very view whose connection is closing. Nothing in a worker still loading the
    application: it has no WebSocket open, and the signal may have interrupted an import
    of the very modules a goodbye needs (half-initialized, they raise ImportError)."""
    if getattr(worker, "booted", True):
        from dwebsocket.worker import worker_kind

        _goodbye(0 if worker_kind(worker) == "sync" else None)


def worker_exit(server: Any, worker: Any) -> None:
    """The worker is exiting: a goodbye to anything still open (a last resort; nothing
    if it never finished loading the application, as for ``worker_int``). Said already
    (a worker that outlived ``--graceful-timeout``): no second one, a wait for those
    goodbyes to finish (``WEBSOCKET_CLOSE_TIMEOUT`` plus a second at most)."""
    if not getattr(worker, "booted", True):
        return
    if _said:
        _wait_for_goodbyes()
    else:
        _going_away(None)


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter, a worker exited: its live gauges (open WebSockets) are dropped from
    ``PROMETHEUS_MULTIPROC_DIR``, as ``prometheus_client`` asks of gunicorn configs."""
    import os

    # Either spelling, as prometheus_client reads them (the lower-case one is deprecated).
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not (directory or os.environ.get("prometheus_multiproc_dir")):  # noqa: SIM112
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


#: This worker said its goodbye (a stop signal, ``--reload``, or its liveness notice once
#: it stops by itself), so that the liveness notice does not say it again.
_said = False


def _goodbye(timeout: float | None) -> None:
    global _said
    # Said until the registry is loaded: the request that reached the limit, or that was
    # under way at a stop (whose goodbye found no registry and was lost), may be the
    # worker's first WebSocket, still before its handshake. Loaded, not in sys.modules:
    # the request's thread may be importing it, and that goodbye is lost too.
    from dwebsocket.contrib.shutdown import loaded_registry

    _said = loaded_registry() is not None
    _going_away(timeout)


def _wait_for_goodbyes() -> None:
    """Until the connections told goodbye have closed, or for ``stop_timeout()``. (Those
    that opened since were told as they opened.) Then the registry's exit hook has
    nothing left to say."""
    from dwebsocket.backends.default.registry import open_websockets, wait_until

    wait_until(lambda: not open_websockets())


def _going_away(timeout: float | None) -> None:
    from dwebsocket.contrib.shutdown import going_away

    going_away(timeout=timeout)
