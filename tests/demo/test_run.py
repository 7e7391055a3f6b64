"""``make demo``'s script: it serves the page soon after it starts, from an empty
database, and Ctrl-C stops it cleanly (clients get 1001, exit status 0)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.demo.demo_server import START_TIMEOUT, start_demo

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
                with pytest.raises(ConnectionClosed) as closed:
                    while True:  # join/leave notices may come first
                        client.recv(timeout=10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1001
        assert srv.process.wait(20) == 0
        log = srv.log()
        assert "stopped" in log
        assert "Traceback" not in log
    finally:
        srv.stop()
