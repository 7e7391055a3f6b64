"""The benchmark tools still run: ``bench/core.py``, and the C load generator against a
real dwebsocket server (for ``bench/compare.py``, which CI does not run: it needs the
peers of ``.[bench]`` and half an hour). Nothing here judges speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import REDIS_SETUP, executable
from tests.servers import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def test_core_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "core.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("  ")[0] for line in result.stdout.splitlines()]
    for name in ("dwebsocket", "dwebsocket (pure Python)", "websockets", "wsproto"):
        assert name in rows, result.stdout


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    binary = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(REPO / "bench" / "loadgen" / "loadgen.c"), "-lz"],
        check=True,
        timeout=120,
    )
    return binary


def run_loadgen(
    loadgen: Path, server: ServerProcess, *args: str, commands: str = ""
) -> list[dict[str, Any]]:
    """Run the load generator to its end; the JSON lines it printed."""
    result = subprocess.run(
        [str(loadgen), "--host", server.host, "--port", str(server.port), *args],
        input=commands,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.server
@pytest.mark.parametrize(
    "args",
    [
        ["--conns", "10", "--size", "32"],
        ["--conns", "2", "--size", "65536", "--binary"],
        ["--conns", "4", "--size", "1000", "--deflate"],
    ],
    ids=["text32", "binary64k", "deflate"],
)
def test_the_load_generator_measures_an_echo(
    loadgen: Path, make_server: Callable[..., ServerProcess], args: list[str]
) -> None:
    server = make_server("gevent")
    path = "/echo/?binary=1" if "--binary" in args else "/echo/"
    *_, result = run_loadgen(
        loadgen,
        server,
        *["--mode", "echo", "--path", path, "--warmup", "0.2", "--duration", "1"],
        *args,
    )
    assert result["error"] == "", result
    assert result["open"] == result["conns"] and result["failed"] == result["dropped"] == 0
    assert result["msgs"] > 0 and result["bad_replies"] == 0, result
    assert result["deflate"] == ("--deflate" in args) * result["conns"], result


@pytest.mark.server
def test_the_load_generator_holds_idle_connections(
    loadgen: Path, make_server: Callable[..., ServerProcess]
) -> None:
    # As compare.py drives it: open a step, probe every connection, open the next.
    server = make_server("gevent")
    reports = run_loadgen(
        loadgen,
        server,
        *["--mode", "idle", "--path", "/echo/", "--steps", "20,50", "--probe-timeout", "20"],
        commands="probe\nnext\nprobe\nnext\nquit\n",
    )
    assert [(r["event"], r["open"], r["error"]) for r in reports] == [
        ("opened", 20, ""),
        ("probed", 20, ""),
        ("opened", 50, ""),
        ("probed", 50, ""),
    ]
    assert [r["answered"] for r in reports if r["event"] == "probed"] == [20, 50]


@pytest.mark.server
def test_the_history_benchmark_runs() -> None:
    """``bench/history.py --quick``: a redis-server, a gevent server, members, a worker."""
    executable("redis-server", REDIS_SETUP)
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "history.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert report["sent_per_s"]["on"]["median"] > 0
    assert report["recovery_s"]["median"] > 0


@pytest.mark.server
def test_the_xread_benchmark_runs() -> None:
    """``bench/history_xread.py --quick``: a redis-server, a sender, subscribed and XREAD
    readers."""
    executable("redis-server", REDIS_SETUP)
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "history_xread.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert report["designs"]["xadd"]["delivered_per_s"]["median"] > 0
    assert report["designs"]["xadd"]["messages_per_read"]["median"] >= 1
