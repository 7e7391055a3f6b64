"""SQLite whose close fails on demand (see the package's docstring)."""

from __future__ import annotations

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

__all__ = ["CLOSE_FAILS", "DatabaseWrapper"]

#: Set: closing a connection of this backend closes it, then raises OperationalError.
CLOSE_FAILS = threading.Event()


class DatabaseWrapper(base.DatabaseWrapper):
    def _close(self) -> None:
        super()._close()
        if CLOSE_FAILS.is_set():
            raise OperationalError("server closed the connection unexpectedly (test)")
