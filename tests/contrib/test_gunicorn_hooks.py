"""``dwebsocket.contrib.gunicorn``'s hooks, in-process, on gunicorn's own worker class."""

from __future__ import annotations

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
