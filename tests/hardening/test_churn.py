"""Churn: 20,000 connect / handshake / close cycles against gevent.pywsgi, half of them
aborted abruptly (RST after the 101, RST mid-frame, RST mid-handshake, half-close
mid-frame, silent half-open peers); afterwards the server's file descriptors, threads and
greenlets are back to their baseline and its RSS within ``RSS_TOLERANCE`` of it.

The client is tests/hardening/churn.py, in ``WORKERS`` processes at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.hardening.churn import KIND_NAMES
from tests.hardening.support import SETTINGS, Stats, foreign_tracebacks, rss, settled, stats
from tests.servers import REPO, ServerProcess, running_server

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(900)]

CYCLES = 20_000
WARMUP = 4_000  # as many parked silent peers at once as the churn itself: the same peak
WORKERS = 4
#: RSS may exceed the baseline by this much after the churn: the allocator keeps some
#: freed memory, and Python's caches fill. A leak of even 1 KiB per cycle is 20 MB.
RSS_TOLERANCE = 8 << 20

CHURN_SETTINGS = {
    **SETTINGS,
    # Silent peers are found by the keepalive: ping after 1 s, give up 1 s later.
    "WEBSOCKET_PING_INTERVAL": 1.0,
    "WEBSOCKET_PING_TIMEOUT": 1.0,
    "WEBSOCKET_CLOSE_TIMEOUT": 2.0,
}


def churn(server: ServerProcess, first: int, count: int) -> Counter[str]:
    """Run cycles ``first`` .. ``first + count - 1`` in ``WORKERS`` client processes."""
    per = count // WORKERS
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.hardening.churn",
                server.host,
                str(server.port),
                str(first + w * per),
                str(per),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(WORKERS)
    ]
    totals: Counter[str] = Counter()
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode(errors="replace")
            totals.update({k: v for k, v in json.loads(out).items() if k != "seconds"})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return totals


def expected(count: int) -> Counter[str]:
    kinds = Counter(KIND_NAMES[i % 10] for i in range(count))
    kinds["silent_closed:1011"] = kinds["silent"]
    return kinds


def test_churn_leaves_no_trace(tmp_path: Path) -> None:
    with running_server("gevent", tmp_path / "gevent.log", settings=CHURN_SETTINGS) as server:
        assert churn(server, 0, WARMUP) == expected(WARMUP)

        def quiet(s: Stats) -> bool:
            return s["websockets"] == 0

        baseline = settled(server, quiet)
        baseline_rss = rss(server)
        totals = churn(server, WARMUP, CYCLES)

        def back(s: Stats) -> bool:
            return (
                quiet(s) and s["fds"] <= baseline["fds"] and s["greenlets"] <= baseline["greenlets"]
            )

        after = settled(server, back)
        after_rss = rss(server)
        report = {
            "baseline": {**baseline, "rss": baseline_rss},
            "after": {**after, "rss": after_rss},
        }
        (tmp_path / "churn.json").write_text(json.dumps({"totals": totals, **report}, indent=1))
        print("churn:", json.dumps(report))

        assert totals == expected(CYCLES)
        assert after["websockets"] == 0
        assert after["fds"] <= baseline["fds"], report
        assert after["threads"] <= baseline["threads"], report
        assert after["os_threads"] <= baseline["os_threads"], report
        assert after["greenlets"] <= baseline["greenlets"], report
        assert after_rss <= baseline_rss + RSS_TOLERANCE, report
        assert stats(server)["fds"] <= baseline["fds"]
    assert foreign_tracebacks(server.log()) == []
