"""The chat demo (``examples/chat/run.py``, what ``make demo`` runs) as a subprocess.

    srv = start_demo(tmp_path / "demo.log", db=tmp_path / "chat.sqlite3")
    srv.url("/r/lobby/", scheme="http")
    srv.stop()                   # SIGTERM: sockets get 1001, exit 0

Every wait is bounded; ``tests.servers.ServerProcess.stop`` ends with SIGKILL.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import REPO, ServerProcess, free_port, listens, spawn

__all__ = ["RUN", "START_TIMEOUT", "start_demo", "wait_for_page"]

RUN = REPO / "examples" / "chat" / "run.py"
#: What a user would wait for ``make demo`` (migrations included) to serve the page.
START_TIMEOUT = 30.0


def wait_for_page(srv: ServerProcess, deadline: float) -> bool:
    """Poll the chat page until it answers 200, the process exits, or ``deadline``
    (a ``time.monotonic()`` value) passes; True if it answered, from ``srv``'s process:
    False if the port is another's (another test's demo picked it at once)."""
    url = srv.url("/r/lobby/", scheme="http")
    while time.monotonic() < deadline and srv.process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    ours = listens(srv.process, srv.port)
                    if ours is not None:
                        return ours
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    return False


def start_demo(
    log_path: Path,
    *,
    db: Path,
    port: int | None = None,
    redis_url: str | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Start the demo on ``port`` (a free one if None) with its SQLite file at ``db``, and
    return once it serves the chat page. Raises ``RuntimeError`` with its log if it does
    not."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DWEBSOCKET_GROUPS_URL")}
    env.update(PYTHONUNBUFFERED="1", CHAT_DB=str(db))
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3 if port is None else 1):  # a free port may be taken meanwhile
        chosen = free_port() if port is None else port
        env["PORT"] = str(chosen)
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed by ServerProcess.stop()
        process = spawn([sys.executable, str(RUN)], REPO, env, log_file)
        srv = ServerProcess("demo", chosen, process, log_path, log_file)
        if wait_for_page(srv, time.monotonic() + timeout):
            return srv
        srv.stop()
    raise RuntimeError(f"the demo did not start; its log:\n{log_path.read_text(errors='replace')}")
