"""``dwebsocket.contrib.gunicorn``'s hooks, in-process, on gunicorn's own worker class."""

from __future__ import annotations

import os
import sys
import types

import pytest
from gunicorn.workers.gthread import ThreadWorker

from dwebsocket.contrib import gunicorn as hooks


def test_a_stop_while_the_worker_still_boots_says_no_goodbye(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gunicorn forwards SIGINT to a worker still loading the application, and its
    ``worker_int`` hook runs in the middle of that import, where dwebsocket's modules may
    be half-initialized: CI saw ``ImportError: cannot import name 'worker_kind' from
    partially initialized module 'dwebsocket.worker'``, a traceback and exit code 3. A
    worker that has not booted has no WebSocket to say goodbye to: nothing is imported."""
    worker = ThreadWorker.__new__(ThreadWorker)
    worker.booted = False  # as gunicorn's Worker.__init__ leaves it until the app is loaded
    for name in ("dwebsocket.worker", "dwebsocket.contrib.shutdown"):
        # as an import the signal interrupted leaves them in sys.modules
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    hooks.worker_int(worker)
    hooks.worker_exit(None, worker)


def test_a_goodbye_while_the_registry_is_being_imported_is_said_at_the_next_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gthread worker's liveness notice after it reached ``--max-requests`` says the
    goodbye; it came while the request's own thread imported the registry (the worker's
    first WebSocket): in ``sys.modules`` already, its ``going_away`` maybe there, not yet
    what that uses. That goodbye counted as said, found nothing to close, and was never
    said again: the connection that opened next got no 1001 (a fresh-clone-like run, -n 3
    under a CPU hog, failed test_gunicorn_max_requests_recycling_sends_1001[gunicorn-gthread]
    with a timeout). It counts once the registry is loaded, and the next notice says it."""
    name = "dwebsocket.backends.default.registry"
    calls: list[float | None] = []

    def going_away(timeout: float | None = None) -> int:
        calls.append(timeout)
        if not getattr(registry, "loaded", False):
            raise NameError("name 'wait_until' is not defined")  # defined further down
        return 0

    registry = types.ModuleType(name)
    registry.going_away = going_away  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, registry)
    monkeypatch.setattr(hooks, "_said", False)
    hooks._goodbye(0)
    assert (hooks._said, calls) == (False, [])
    registry.loaded = True  # type: ignore[attr-defined]
    hooks._goodbye(0)
    assert (hooks._said, calls) == (True, [0])


def test_a_websocket_that_opens_in_a_stopping_worker_gets_its_goodbye_as_it_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose goodbye found no registry (it had opened no WebSocket: the request
    that reached ``--max-requests``, or one accepted in the second before a stopped worker
    stops accepting) told the connection that opened next only at its next liveness
    notice, up to a second later, once its view had run; docs/deployment.rst says it
    "gets 1001 as it opens". ``post_worker_init`` connects a ``websocket_opened``
    receiver that says the goodbye in a stopping worker, once, and nothing in a live one."""
    from dwebsocket import checks
    from dwebsocket import worker as worker_module
    from dwebsocket.signals import websocket_opened

    monkeypatch.setattr(worker_module, "note_gunicorn_worker", lambda worker, hooks: None)
    monkeypatch.setattr(checks, "report_once", lambda: None)
    monkeypatch.setattr(hooks.signal, "signal", lambda signum, handler: None)
    said: list[float | None] = []

    def goodbye(timeout: float | None) -> None:
        said.append(timeout)
        monkeypatch.setattr(hooks, "_said", True)

    monkeypatch.setattr(hooks, "_goodbye", goodbye)
    monkeypatch.setattr(hooks, "_said", False)
    # Its receiver alone (the others want a real request and connection); restored after.
    monkeypatch.setattr(websocket_opened, "receivers", [])
    worker = ThreadWorker.__new__(ThreadWorker)
    worker.notify = lambda: None  # type: ignore[method-assign]
    worker.alive = True
    worker.ppid = os.getppid()
    hooks.post_worker_init(worker)
    try:
        websocket_opened.send(sender=None, request=None, websocket=None)
        assert said == []  # a live worker: nothing to say
        worker.alive = False  # --max-requests reached
        websocket_opened.send(sender=None, request=None, websocket=None)
        websocket_opened.send(sender=None, request=None, websocket=None)
        assert said == [0]  # as it opens, once
    finally:
        websocket_opened.disconnect(dispatch_uid="dwebsocket.contrib.gunicorn")
