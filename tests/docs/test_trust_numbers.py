"""bench/FINDINGS.md section 13 (the C fast path made safe by construction, issue #16:
before and after, in one run) quotes ``docs/benchmarks/trust-ab.json``: the table there
is this test's :func:`table`, word for word.

After a new run (``bench/compare.py --baseline <checkout before> --stacks
dwebsocket-gevent,websockets --scenarios text32-c100,binary64k-c10 --no-idle``), copy its
results.json to docs/benchmarks/trust-ab.json and paste ``python -m
tests.docs.test_trust_numbers``'s output into the section."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "docs" / "benchmarks" / "trust-ab.json"
FINDINGS = REPO / "bench" / "FINDINGS.md"
SCENARIOS = {
    "text32-c100": "32 B text, 100 connections",
    "binary64k-c10": "64 KiB binary, 10 connections",
}


def table() -> str:
    runs = json.loads(RESULTS.read_text())["echo"]

    def median(stack: str, scenario: str) -> float:
        return statistics.median(
            r["msgs_per_s"] for r in runs if r["stack"] == stack and r["scenario"] == scenario
        )

    lines = [
        "| echo | before (msg/s) | after (msg/s) | websockets (msg/s) "
        "| before / websockets | after / websockets |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, label in SCENARIOS.items():
        before = median("dwebsocket-gevent-baseline", scenario)
        after = median("dwebsocket-gevent", scenario)
        peer = median("websockets", scenario)
        lines.append(
            f"| {label} | {before:,.0f} | {after:,.0f} | {peer:,.0f} "
            f"| {before / peer:.2f}x | {after / peer:.2f}x |"
        )
    return "\n".join(lines)


def test_findings_quote_the_results_file() -> None:
    assert table() in FINDINGS.read_text()


if __name__ == "__main__":
    print(table())
