"""No session ever receives another session's bytes, while hostile Python code runs in
the server: finalizers and gc callbacks that switch greenlets (``tests/hostile.py``),
at a garbage collection every few allocations. A real gevent server (the C fast path on),
many clients at once, some sending invalid UTF-8 (which must close only their own
connection, with 1007)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from dwebsocket.protocol.connection import Close
from tests.servers import ServerProcess, start_server
from tests.wire import TIMEOUT, RawClient, masked

pytestmark = pytest.mark.server

CLIENTS = 40
MESSAGES = 60


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        "gevent",
        tmp_path_factory.mktemp("hostile") / "server.log",
        env={"DWEBSOCKET_TEST_HOSTILE": "1"},
        settings={"WEBSOCKET_PING_INTERVAL": None},
    )
    try:
        yield server
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    # tests/hostile.py says at exit how often it ran: it must have, or this proves nothing.
    counts = [line for line in log.splitlines() if line.startswith("hostile:")]
    assert counts and "collections 0 " not in counts[-1], log


def _client(server: ServerProcess, index: int, errors: list[str]) -> None:
    try:
        with RawClient(
            socket.create_connection((server.host, server.port), timeout=TIMEOUT)
        ) as client:
            client.handshake("/echo-wait/")
            for j in range(MESSAGES):
                text = f"client {index} message {j} " + "é" * (index % 7) * j
                client.send(text if j % 2 else text.encode())
                echoed = client.recv()
                expected = text if j % 2 else text.encode()
                if echoed != expected:
                    errors.append(f"client {index} sent {expected!r}, got {echoed!r}")
                    return
            if index % 4 == 0:  # invalid UTF-8: this connection alone closes, 1007
                client.sock.sendall(masked(0x1, b"client " + str(index).encode() + b"\xff\xfe"))
                event = client.recv()
                if not (isinstance(event, Close) and event.code == 1007):
                    errors.append(f"client {index}: invalid UTF-8 gave {event!r}, not 1007")
            else:
                client.sock.sendall(client.conn.send_close(1000))
                event = client.recv()
                if event != Close(1000, ""):
                    errors.append(f"client {index}: closing gave {event!r}")
    except Exception as exc:  # pragma: no cover - reported by the test
        errors.append(f"client {index}: {exc!r}")


def test_no_session_gets_another_sessions_bytes(hostile: ServerProcess) -> None:
    errors: list[str] = []
    threads = [
        threading.Thread(target=_client, args=(hostile, i, errors), daemon=True)
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 6)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert errors == []
