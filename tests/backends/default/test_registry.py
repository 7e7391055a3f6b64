"""The goodbyes at interpreter exit (``registry._at_exit``): each open connection is
closed with 1001, in a real interpreter that exits, whatever Python (3.12 and later start
no thread from an ``atexit`` hook)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.wire import TIMEOUT

SCRIPT = textwrap.dedent(
    """
    import django
    from django.conf import settings

    settings.configure(INSTALLED_APPS=["dwebsocket"])
    django.setup()

    from dwebsocket.backends.default import registry


    class Open:
        def close(self, code, reason):
            print("closed", code, reason, flush=True)
            registry._open.discard(self)


    registry._open.add(Open())
    print("exiting", flush=True)
    """
)


def test_open_connections_are_closed_at_interpreter_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=TIMEOUT * 3
    )
    assert done.stdout.splitlines() == ["exiting", "closed 1001 server shutting down"]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0
