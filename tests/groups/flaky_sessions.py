"""A session engine (``SESSION_ENGINE = "tests.groups.flaky_sessions"``): Django's
database sessions, whose reads fail with a database error while :data:`DOWN` is set --
a session database that went away, for the users tests."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.db import OperationalError

#: Set: every read of a session raises ``OperationalError``.
DOWN = threading.Event()


class SessionStore(DatabaseStore):
    def load(self) -> dict[str, Any]:
        if DOWN.is_set():
            raise OperationalError("could not connect to the session database (test)")
        return super().load()
