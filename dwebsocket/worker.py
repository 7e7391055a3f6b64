"""Which gunicorn worker runs this process, if any: what the server checks need to know.

Only gunicorn has settings that make WebSockets fail by design (the sync worker's
``--timeout``, a gthread worker's single thread), and they are only known inside a
worker. The worker is noted by ``dwebsocket.contrib.gunicorn``'s ``post_worker_init``
hook, or else found on the call stack at the first WebSocket session; either way the
server checks (``dwebsocket.checks.report_once``) then run once and are logged.
``manage.py check`` runs outside any server, so it reports none of them.

A leaf: imports nothing of dwebsocket (the checks import it, not the other way round).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["GunicornWorker", "gunicorn_worker", "note_gunicorn_worker", "worker_kind"]


@dataclass(frozen=True)
class GunicornWorker:
    """What the checks need to know of the gunicorn worker running this process."""

    kind: str  # "sync", "gthread", "gevent", "eventlet", "tornado" or the class's path
    threads: int
    timeout: float
    #: ``dwebsocket.contrib.gunicorn``'s hooks run in it (stops send 1001).
    hooks: bool = False


_worker: GunicornWorker | None = None


def gunicorn_worker() -> GunicornWorker | None:
    """The gunicorn worker of this process, if one was noted (or can be found on the
    current call stack, i.e. during a request)."""
    if _worker is None and "gunicorn.workers.base" in sys.modules:
        found = _worker_on_stack()
        if found is not None:
            note_gunicorn_worker(found)
    return _worker


def note_gunicorn_worker(worker: Any, *, hooks: bool = False) -> GunicornWorker:
    """Remember ``worker`` (a ``gunicorn.workers.base.Worker``) as this process's;
    ``hooks``: ``dwebsocket.contrib.gunicorn``'s hooks are installed in it."""
    global _worker
    cfg = getattr(worker, "cfg", None)
    _worker = GunicornWorker(
        kind=worker_kind(worker),
        threads=int(getattr(cfg, "threads", 1) or 1),
        timeout=float(getattr(cfg, "timeout", 0) or 0),
        hooks=hooks,
    )
    return _worker


_KINDS = {
    "gunicorn.workers.sync.SyncWorker": "sync",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "gunicorn.workers.ggevent.GeventWorker": "gevent",
    "gunicorn.workers.ggevent.GeventPyWSGIWorker": "gevent",
    "gunicorn.workers.geventlet.EventletWorker": "eventlet",
    "gunicorn.workers.gtornado.TornadoWorker": "tornado",
}


def worker_kind(worker: Any) -> str:
    """The kind of gunicorn ``worker`` (:attr:`GunicornWorker.kind`): that of the gunicorn
    class it is or derives from, else its class's dotted path."""
    cls = type(worker)
    for c in cls.__mro__:
        kind = _KINDS.get(f"{c.__module__}.{c.__qualname__}")
        if kind is not None:
            return kind
    return f"{cls.__module__}.{cls.__qualname__}"


def _worker_on_stack() -> Any:
    base = sys.modules["gunicorn.workers.base"].Worker
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, base):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None
