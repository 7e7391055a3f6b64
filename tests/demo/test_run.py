"""``make demo``: it serves the page soon after it starts, from an empty database (and
from a fresh clone, virtual env and all), and Ctrl-C stops it cleanly: clients get 1001,
the script exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.demo.demo_server import RUN, START_TIMEOUT, start_demo, wait_for_page
from tests.servers import REPO, ServerProcess, free_port

pytestmark = pytest.mark.server


def test_serves_the_page_then_ctrl_c_says_goodbye(tmp_path: Path) -> None:
    db = tmp_path / "fresh.sqlite3"
    assert not db.exists()
    # Returned: the page answered within START_TIMEOUT of the (last) process's start.
    srv = start_demo(tmp_path / "demo.log", db=db, timeout=START_TIMEOUT)
    try:
        assert db.exists()  # migrated
        assert f"http://127.0.0.1:{srv.port}/" in srv.log()

        url = srv.url("/ws/lobby/?name=probe")
        # The page's client announces the dws envelope (dws=1): its socket is the backend's
        # envelope-aware subclass, which the goodbye must reach as well.
        with (
            connect(url, open_timeout=10, close_timeout=10) as one,
            connect(f"{url}&dws=1", open_timeout=10, close_timeout=10) as two,
        ):
            for client in (one, two):
                welcome = first_application_message(client)
                assert welcome["type"] == "welcome"
                assert welcome["user"] == "probe"

            srv.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            for client in (one, two):
                assert close_frame(client) == (1001, "server shutting down")
        assert srv.process.wait(20) == 0
        log = srv.log()
        assert "stopped (2 WebSocket(s) closed)" in log, log
        assert "Traceback" not in log
        assert '" 500 ' not in log, log  # no session ended by killing its view
    finally:
        srv.stop()


@pytest.mark.parametrize("port", ["eighty", "70000", "-1"])
def test_a_port_that_is_no_port_is_refused_in_a_line(tmp_path: Path, port: str) -> None:
    """``PORT=70000 make demo``: one line saying what PORT takes, exit status 2 (before:
    a number out of range got past the check, and bind() raised OverflowError)."""
    env = {**os.environ, "PORT": port, "CHAT_DB": str(tmp_path / "db.sqlite3")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(RUN)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stderr == f"PORT must be a number from 0 to 65535, not {port!r}\n", result


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
            assert close_frame(client)[0] == 1001
        make.wait(30)
        log = srv.log()
        assert "stopped (1 WebSocket(s) closed)" in log, log
        assert "Traceback" not in log, log
    finally:
        # Whatever is left of the group (make, the demo) goes; then reap make.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)
        srv.stop()


def first_application_message(client: ClientConnection) -> Any:
    """The first message that is not a ``dws`` envelope (a ``joined`` comes first)."""
    while True:
        message = json.loads(client.recv(timeout=10))
        if "dws" not in message:
            return message


def close_frame(client: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; the code and reason of its close frame."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:  # join/leave notices may come first
            client.recv(timeout=10)
    frame = closed.value.rcvd
    return (frame.code, frame.reason) if frame is not None else (None, None)
