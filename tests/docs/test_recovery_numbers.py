"""Every number ``docs/recovery.rst`` gives comes from a committed results file: the
reconnection table from ``docs/benchmarks/reconnect.json`` (``tests/groups/
test_client_backoff.py``), the costs from ``docs/benchmarks/history.json``
(``bench/history.py``, ``make bench-history``), the client's size from the file itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
PAGE = (DOCS / "recovery.rst").read_text()


def substitutions() -> dict[str, str]:
    return dict(re.findall(r"^\.\. \|(\w+)\| replace:: (.*)$", PAGE, re.M))


def per_second(value: float) -> str:
    return f"{round(value):,}"


RESULTS = DOCS / "benchmarks" / "history.json"


def expected() -> dict[str, str]:
    if not RESULTS.exists():  # not measured yet: the page quotes nothing
        return {}
    history = json.loads(RESULTS.read_text())
    recovery = history["recovery_s"]
    cpu = {
        f"cpu_{name}_{side}": f"{sides[side]:.0f}"
        for name, sides in history["cpu_us_per_message"].items()
        for side in ("off", "on")
    }
    return cpu | {
        "bench_members": f"{history['members']:,}",
        "bench_count": f"{history['count']:,}",
        "bench_rounds": str(history["rounds"]),
        "bench_redis": history["redis"],
        "bench_machine": f"{history['machine']} (Python {history['python']})",
        "sent_off": per_second(history["sent_per_s"]["off"]["median"]),
        "sent_on": per_second(history["sent_per_s"]["on"]["median"]),
        "sent_ratio": f"{history['sent_per_s']['ratio']:.2f}",
        "delivered_off": per_second(history["delivered_per_s"]["off"]["median"]),
        "delivered_on": per_second(history["delivered_per_s"]["on"]["median"]),
        "delivered_ratio": f"{history['delivered_per_s']['ratio']:.2f}",
        "recovery_median": f"{recovery['median'] * 1000:.0f}",
        "recovery_min": f"{recovery['min'] * 1000:.0f}",
        "recovery_max": f"{recovery['max'] * 1000:.0f}",
        "redis_off": f"{history['redis_usec_per_message']['off']:.1f}",
        "redis_on": f"{history['redis_usec_per_message']['on']:.1f}",
    }


def test_the_cost_numbers_are_the_committed_results() -> None:
    assert substitutions() == expected()
    assert ("What it costs" in PAGE) == RESULTS.exists()


def test_the_reconnection_table_is_the_committed_results() -> None:
    runs = json.loads((DOCS / "benchmarks" / "reconnect.json").read_text())["runs"]
    for run in runs:
        row = (
            f"   * - {run['down_s']} s\n"
            f"     - {run['t99_s']:.2f} s\n"
            f"     - {run['all_s']:.2f} s\n"
            f"     - {run['peak_per_s']}\n"
        )
        assert row in PAGE, row
    worst = max(run["peak_per_s"] / run["clients"] for run in runs)
    assert worst <= 0.6  # "at most 60 % of its clients in one second"
    assert "at most 60 % of its clients in one" in PAGE
    assert max(run["t99_s"] for run in runs) <= 15  # "measured: within 15 s"
    assert "(measured: within 15 s)" in PAGE
