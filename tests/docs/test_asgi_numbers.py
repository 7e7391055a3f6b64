"""The numbers ``docs/asgi.rst`` gives come from ``docs/benchmarks/asgi.json``
(``bench/asgi.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.docs.pages import assert_quotes

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
PAGE = DOCS / "asgi.rst"
RESULTS = DOCS / "benchmarks" / "asgi.json"


def expected() -> dict[str, str]:
    run = json.loads(RESULTS.read_text())
    summary = run["summary"]
    rates, ratios, idle = summary["msgs_per_s"], summary["vs_channels"], summary["kb_per_conn_idle"]
    return {
        "async_rate": f"{rates['dwebsocket-uvicorn-async']:,}",
        "async_ratio": f"{ratios['dwebsocket-uvicorn-async']:.2f}",
        "async_idle": f"{idle['dwebsocket-uvicorn-async']:.1f}",
        "sync_rate": f"{rates['dwebsocket-uvicorn-sync']:,}",
        "sync_ratio": f"{ratios['dwebsocket-uvicorn-sync']:.2f}",
        "sync_idle": f"{idle['dwebsocket-uvicorn-sync']:.1f}",
        "channels_rate": f"{rates['channels-uvicorn']:,}",
        "channels_idle": f"{idle['channels-uvicorn']:.1f}",
        "bench_load": f"{run['load_before'][0]:.1f}",
    }


def test_the_numbers_are_the_committed_results() -> None:
    assert_quotes(PAGE, expected())


def test_the_goals_of_issue_20_hold_in_the_committed_run() -> None:
    ratios = json.loads(RESULTS.read_text())["summary"]["vs_channels"]
    assert ratios["dwebsocket-uvicorn-async"] >= 2
    assert ratios["dwebsocket-uvicorn-sync"] >= 1
