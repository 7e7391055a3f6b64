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

from django.db import connections

__all__ = ["release_idle_connections"]

logger = logging.getLogger("dwebsocket")


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
