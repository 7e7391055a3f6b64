"""``make demo``: it serves the page soon after it starts, from an empty database (and
from a fresh clone, virtual env and all), and Ctrl-C stops it cleanly: clients get 1001,
the script exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.demo.demo_server import START_TIMEOUT, start_demo, wait_for_page
from tests.servers import REPO, ServerProcess, free_port

pytestmark = pytest.mark.server


def test_serves_the_page_then_ctrl_c_says_goodbye(tmp_path: Path) -> None:
    db = tmp_path / "fresh.sqlite3"
    assert not db.exists()
    started = time.monotonic()
    srv = start_demo(tmp_path / "demo.log", db=db, timeout=START_TIMEOUT)
    try:
        # start_demo returned: the page answered within START_TIMEOUT of the process start.
        assert time.monotonic() - started < START_TIMEOUT
        assert db.exists()  # migrated
        assert f"http://127.0.0.1:{srv.port}/" in srv.log()

        url = srv.url("/ws/lobby/?name=probe")
        with (
            connect(url, open_timeout=10, close_timeout=10) as one,
            connect(url, open_timeout=10, close_timeout=10) as two,
        ):
            for client in (one, two):
                welcome = json.loads(client.recv(timeout=10))
                assert welcome["type"] == "welcome"
                assert welcome["user"] == "probe"

            srv.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            for client in (one, two):
                assert close_code(client) == 1001
        assert srv.process.wait(20) == 0
        log = srv.log()
        assert "stopped" in log
        assert "Traceback" not in log
    finally:
        srv.stop()


#: A fresh clone's ``make demo`` creates a virtual env and installs Django, gevent and
#: redis-py from the package index first: a bound for a slow network, not a target.
FRESH_CLONE_TIMEOUT = 300.0


@pytest.mark.slow
@pytest.mark.timeout(FRESH_CLONE_TIMEOUT + 120)
def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "dwebsocket"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "VIRTUAL_ENV",
            "PYTHONPATH",
            "DJANGO_SETTINGS_MODULE",
            "CHAT_DB",
            "REDIS_URL",
            "DWEBSOCKET_GROUPS_URL",
            # A newcomer's shell, not a sub-make of `make test`.
            "MAKEFLAGS",
            "MFLAGS",
            "MAKELEVEL",
        )
    }
    env["PORT"] = str(port)
    log_path = tmp_path / "make-demo.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by ServerProcess.stop()
    make = subprocess.Popen(
        ["make", "demo"],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    srv = ServerProcess("make demo", port, make, log_path, log_file)
    try:
        served = wait_for_page(srv, time.monotonic() + FRESH_CLONE_TIMEOUT)
        assert served, srv.log()
        assert (clone / "examples" / "chat" / "db.sqlite3").exists()
        with connect(srv.url("/ws/lobby/?name=newcomer"), open_timeout=10) as client:
            assert json.loads(client.recv(timeout=10))["type"] == "welcome"
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: make and the demo both get it
            assert close_code(client) == 1001
        make.wait(30)
        log = srv.log()
        assert "stopped (1 WebSocket(s) closed)" in log, log
        assert "Traceback" not in log, log
    finally:
        # Whatever is left of the group (make, the demo) goes; then reap make.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)
        srv.stop()


def close_code(client: ClientConnection) -> int | None:
    """Read until the server closes; the code of its close frame."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:  # join/leave notices may come first
            client.recv(timeout=10)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None
