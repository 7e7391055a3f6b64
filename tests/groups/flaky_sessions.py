"""A session engine (``SESSION_ENGINE = "tests.groups.flaky_sessions"``): Django's
database sessions, whose reads fail with a database error while :data:`DOWN` is set --
a session database that went away, for the users tests -- and whose reads of the
sessions in :data:`HUNG` wait until :data:`ANSWER` is set: a store that hangs (NFS, a
database without a timeout); and whose reads raise what :data:`RAISE` holds."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.db import OperationalError

#: Set: every read of a session raises ``OperationalError``.
DOWN = threading.Event()
#: Session keys whose reads wait for :data:`ANSWER` (at most :data:`HANG_BOUND` s).
HUNG: set[str] = set()
ANSWER = threading.Event()
HANG_BOUND = 120.0
#: Holding an exception: every read raises it (``SystemExit``: ``sys.exit()`` in code the
#: store calls), and sets :data:`RAISED`.
RAISE: list[BaseException] = []
RAISED = threading.Event()


class SessionStore(DatabaseStore):
    def load(self) -> dict[str, Any]:
        if RAISE:
            RAISED.set()
            raise RAISE[0]
        if DOWN.is_set():
            raise OperationalError("could not connect to the session database (test)")
        if self.session_key in HUNG:
            ANSWER.wait(HANG_BOUND)
        return super().load()
