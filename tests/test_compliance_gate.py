"""The gate of ``tests/compliance.py``: a case passes only as kosoku itself judges it, on its
messages *and* its closing handshake, and an unreadable report is never a pass.

kosoku runs for real (two cases) against two small servers on 127.0.0.1: a correct
``websockets`` echo server, and one that echoes the first message and then drops the TCP
connection, never reading kosoku's close frame (a raw socket server: nothing can answer
the close behind its back). The messages of that one are right (``behavior`` OK), its
closing is not (``behaviorClose`` UNCLEAN): the old gate, which read ``behavior`` alone,
passed it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.server import ServerConnection, serve

from dwebsocket.protocol.handshake import accept_key
from tests.compliance import Result, _kosoku, judge

# Real servers and kosoku (a dev tool the test matrix's venvs do not install).
pytestmark = pytest.mark.server

CASES = ["1.1.1", "1.1.2"]
WAIT = 10.0


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def echo_then_drop(conn: socket.socket) -> None:
    """Handshake, echo one short text frame, then shut the connection down."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.decode("latin-1").split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
    )
    first, second = read_exactly(conn, 2)
    length = second & 0x7F
    assert first == 0x81 and second & 0x80 and length <= 125  # the cases' short text frames
    mask = read_exactly(conn, 4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exactly(conn, length)))
    conn.sendall(bytes((0x81, length)) + payload)
    conn.shutdown(socket.SHUT_RDWR)  # no close frame, no closing handshake


@pytest.fixture
def dropping_url() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)

        def serve_connections() -> None:
            for _ in CASES:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(WAIT)
                    echo_then_drop(conn)

        thread = threading.Thread(target=serve_connections, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/"
        thread.join(timeout=WAIT)


@pytest.fixture
def correct_url() -> Iterator[str]:
    with serve(echo, "127.0.0.1", 0, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        finally:
            server.shutdown()
            thread.join(timeout=WAIT)


def kosoku(url: str, outdir: Path) -> int:
    argv = [_kosoku(), "-p", "1", url, "-o", str(outdir)]
    for case in CASES:
        argv += ["-i", case]
    return subprocess.run(argv, capture_output=True, timeout=120, check=False).returncode


def test_a_correct_server_passes(correct_url: str, tmp_path: Path) -> None:
    returncode = kosoku(correct_url, tmp_path)
    result = Result("test", ",".join(CASES))
    judge(result, tmp_path, returncode)
    assert (result.error, returncode, result.ok, dict(result.counts)) == ("", 0, True, {"OK": 2})


def test_a_server_that_drops_instead_of_closing_fails(dropping_url: str, tmp_path: Path) -> None:
    returncode = kosoku(dropping_url, tmp_path)
    result = Result("test", ",".join(CASES))
    judge(result, tmp_path, returncode)
    assert result.error == ""
    assert (returncode, result.ok, dict(result.counts)) == (1, False, {"close UNCLEAN": 2})
    assert sorted(result.failing) == CASES
    assert all("close=UNCLEAN" in reason for reason in result.failing.values())


def test_no_report_is_an_error(tmp_path: Path) -> None:
    result = Result("test", "all")
    judge(result, tmp_path, 0)
    assert result.error == "kosoku wrote no report" and not result.ok


def test_an_unreadable_index_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text('{"agent": {"1.1.1": ')
    result = Result("test", "all")
    judge(result, tmp_path, 0)
    assert result.error.startswith("kosoku's index is unreadable") and not result.ok


def test_a_verdict_without_its_closing_part_fails(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text('{"agent": {"1.1.1": {"behavior": "OK"}}}')
    result = Result("test", "all")
    judge(result, tmp_path, 0)
    assert list(result.failing) == ["1.1.1"] and not result.ok
