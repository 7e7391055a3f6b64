"""The gate of ``tests/compliance.py``: a case passes only as kosoku itself judges it, on its
messages *and* its closing handshake, and an unreadable report is never a pass.

kosoku runs for real (two cases) against two small ``websockets`` servers on 127.0.0.1:
one correct, one that echoes and then drops the TCP connection instead of completing the
closing handshake. The messages of that one are right (``behavior`` OK), its closing is
not (``behaviorClose`` UNCLEAN): the old gate, which read ``behavior`` alone, passed it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.server import ServerConnection, serve

from tests.compliance import Result, _kosoku, judge

CASES = ["1.1.1", "1.1.2"]


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def echo_then_drop(ws: ServerConnection) -> None:
    ws.send(ws.recv())
    ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame, no closing handshake


@pytest.fixture(params=[echo, echo_then_drop], ids=["correct", "drops"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve(request.param, "127.0.0.1", 0, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def kosoku(url: str, outdir: Path) -> int:
    argv = [_kosoku(), "-p", "1", url, "-o", str(outdir)]
    for case in CASES:
        argv += ["-i", case]
    return subprocess.run(argv, capture_output=True, timeout=120, check=False).returncode


def test_a_case_passes_on_its_messages_and_its_closing_handshake(
    url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    returncode = kosoku(url, tmp_path)
    result = Result("test", ",".join(CASES))
    judge(result, tmp_path, returncode)
    assert result.error == ""
    if request.node.callspec.id == "correct":
        assert (returncode, result.ok, dict(result.counts)) == (0, True, {"OK": 2})
    else:
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
