"""Database hygiene for long-lived requests.

Django closes a thread's database connections at the end of each request when they are
older than ``CONN_MAX_AGE`` or unusable (``close_old_connections`` on
``request_started``/``request_finished``). A WebSocket request ends hours later, so a view
blocked in ``wait()`` would keep a connection the database server may have dropped
meanwhile. Backends call :func:`release_idle_connections` before they block: each message
then gets Django's per-request treatment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "CHECK_INTERVAL",
    "close_thread_connections",
    "release_idle_connections",
    "wait_releasing",
]

logger = logging.getLogger("dwebsocket")

#: Seconds between two :func:`release_idle_connections` of a view waiting for messages:
#: within a second of blocking, and no more often (a call per message cost a tenth of
#: the CPU of an echo, ``bench/FINDINGS.md`` section 1).
CHECK_INTERVAL = 1.0

_R = TypeVar("_R")


def release_idle_connections() -> None:
    """Close this thread's database connections that Django would close at the end of a
    request (older than ``CONN_MAX_AGE``, or unusable), except those inside a
    transaction (``atomic``), which stay as they are. Does not block on the network
    beyond closing a connection; never raises."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        try:
            conn.close_if_unusable_or_obsolete()
        except Exception as exc:  # hygiene must never break wait(); Django retries later
            logger.debug("Could not release database connection %r: %r", conn.alias, exc)


def wait_releasing(
    wait: Callable[[float | None], _R | None],
    checked: float,
    deadline: float | None,
    release: Callable[[], None] | None = None,
) -> tuple[_R | None, float]:
    """``wait(until)`` (``until``: a ``time.monotonic()`` time, None: no limit; None as the
    answer: it timed out, or woke early and the caller looks again) until ``deadline``,
    giving back this thread's idle database connections (:func:`release_idle_connections`)
    once before it blocks: within ``CHECK_INTERVAL`` of blocking, and at most once per
    ``CHECK_INTERVAL`` (``checked``: when they were last given back). A wait that would
    come too soon after the last one is cut at the interval for the release, then goes on.
    Returns what ``wait`` answered last and the new ``checked``. ``release``: what gives
    the connections back, if not :func:`release_idle_connections`.

    The default backend's C fast path (``_fastpath.c``, ``fast_wait_readable``) is the
    same rule for the same transport."""
    now = time.monotonic()
    check_at = checked + CHECK_INTERVAL
    if now < check_at:
        if deadline is not None and deadline <= check_at:
            return wait(deadline), checked
        answer = wait(check_at)
        if answer is not None:
            return answer, checked
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return answer, checked
    (release or release_idle_connections)()
    return wait(deadline), now


def close_thread_connections(keep: frozenset[str] = frozenset()) -> None:
    """Close, for good, the database connections this thread opened (but those named in
    ``keep``): for a thread of ours that queried the database outside a request. SQLite's
    ``close()`` keeps a connection to an in-memory database open so as not to lose it;
    this one is one of several to it (a test database's shared cache) and nobody else
    would close it (Python 3.13 warns when it is collected open).

    Never raises: a connection whose close fails (its server went away meanwhile) is
    dropped all the same (Django forgets it) and the others are still closed. The first
    failure of each database in this process is a WARNING, later ones DEBUG (every
    thread ending would log one while that database is away)."""
    for conn in connections.all(initialized_only=True):
        if conn.alias in keep:
            continue
        try:
            conn.close()
            if conn.connection is not None and conn.vendor == "sqlite" and not conn.in_atomic_block:
                BaseDatabaseWrapper.close(conn)
        except Exception as exc:
            loud = conn.alias not in _close_failed
            _close_failed.add(conn.alias)
            logger.log(
                logging.WARNING if loud else logging.DEBUG,
                "Closing database connection %r of thread %s failed (it is dropped): %r",
                conn.alias,
                threading.current_thread().name,
                exc,
            )


#: The databases whose close failed in this process (one WARNING each).
_close_failed: set[str] = set()
