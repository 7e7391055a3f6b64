"""Hostile Python code inside a test server: finalizers that yield, and gc callbacks that
yield, run at every garbage collection (which a low threshold makes frequent).

Imported by ``tests/settings.py`` when ``DWEBSOCKET_TEST_HOSTILE=1`` (in a server
subprocess under gevent): whatever the default backend does between reading a socket
and handing the bytes to a session, Python code that switches greenlets may run in
between, as a finalizer or a gc callback may in a real application. The test
(``tests/backends/default/test_hostile_server.py``) checks that no session ever gets
another's bytes.
"""

from __future__ import annotations

import atexit
import gc
import random
from typing import Any

import gevent
from greenlet import getcurrent

_random = random.Random(6455)


_counts = {"collections": 0, "switches": 0}
_running = [True]


def _yield() -> None:
    """Switch to the hub (and so to other greenlets), unless this is the hub itself."""
    if _running[0] and getcurrent() is not gevent.get_hub() and _random.random() < 0.5:
        _counts["switches"] += 1
        gevent.sleep(0)


class _Hostile:
    """A reference cycle whose finalizer yields and makes another one: there is always
    one waiting for the next collection."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        if _running[0]:
            _Hostile()
            _yield()


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _counts["collections"] += 1
        _yield()


@atexit.register
def _report() -> None:
    _running[0] = False  # the interpreter is going away: no more greenlet switches
    gc.callbacks.remove(_on_gc)
    print(f"hostile: collections {_counts['collections']} switches {_counts['switches']}")


gc.set_threshold(20, 2, 2)
gc.callbacks.append(_on_gc)
_Hostile()
