"""docs/groups.rst's "Past one Redis" quotes ``docs/benchmarks/cluster.json``
(``bench/cluster.py``): each measured number is a substitution (``.. |name| replace::``)
at the end of the page, and must read what the results file says, rounded as written."""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path
from typing import Any

from tests.docs.pages import assert_quotes, print_block

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "groups.rst"
RESULTS = ROOT / "docs" / "benchmarks" / "cluster.json"
PREFIX = "cl_"  # this page's substitutions from cluster.json; others are not ours


def _throughput(run: dict[str, Any], topology: str, design: str, size: int) -> dict[str, Any]:
    for result in run["throughput"]:
        if (result["topology"], result["design"], result["members"]) == (topology, design, size):
            found: dict[str, Any] = result
            return found
    raise LookupError((topology, design, size))


def expected() -> dict[str, str]:
    run = json.loads(RESULTS.read_text())
    day = datetime.datetime.strptime(run["started"][:10], "%Y-%m-%d").date()
    sizes = sorted({r["members"] for r in run["latency"]})
    values = {
        "date": f"{day.day} {day:%B %Y}",
        "commit": f"``{run['commit']}``",
        "cpus": str(run["cpus"]),
        "receivers": str(run["receivers"]),
        "senders": str(run["senders"]),
        "rounds": str(len(run["latency"][0]["seconds"])),
        "seconds": f"{run['throughput'][0]['seconds']:.0f}",
        "small": f"{sizes[0]:,}",
        "large": f"{sizes[-1]:,}",
    }
    for result in run["latency"]:
        size = "small" if result["members"] == sizes[0] else "large"
        values[f"lat_{result['topology']}_{size}"] = (
            f"{1000 * statistics.median(result['seconds']):,.1f}"
        )
    for topology in ("node", "cluster"):
        for size, members in (("small", sizes[0]), ("large", sizes[-1])):
            result = _throughput(run, topology, "per group", members)
            values[f"tp_{topology}_{size}"] = f"{result['published_per_s']:,.0f}"
            values[f"dl_{topology}_{size}"] = f"{result['delivered_per_s']:,.0f}"
        received = [
            _throughput(run, topology, "per group", members) for members in (sizes[0], sizes[-1])
        ]
        values[f"received_{topology}"] = f"{sum(r['received'] for r in received):,}"
        values[f"unneeded_{topology}"] = f"{sum(r['unneeded'] for r in received):,}"
    one = [_throughput(run, "node", "one channel", members) for members in (sizes[0], sizes[-1])]
    values["one_published"] = f"{sum(r['published'] for r in one):,}"
    values["one_received"] = f"{sum(r['received'] for r in one):,}"
    values["one_unneeded"] = f"{sum(r['unneeded'] for r in one):,}"
    values["groups"] = str(one[0]["groups"])
    for topology in ("cluster", "sentinel"):
        runs = [f for f in run["failover"] if f["topology"] == topology]
        promoted = [f["promoted_s"] for f in runs]
        resumed = [f["resumed_after_promotion_s"] for f in runs]
        values[f"fo_{topology}_n"] = str(len(runs))
        values[f"fo_{topology}_promoted_min"] = f"{min(promoted):.1f}"
        values[f"fo_{topology}_promoted_max"] = f"{max(promoted):.1f}"
        values[f"fo_{topology}_resumed_max"] = f"{max(resumed):.2f}"
    return {PREFIX + name: value for name, value in values.items()}


def test_the_page_quotes_the_results() -> None:
    assert_quotes(PAGE, expected(), PREFIX)


if __name__ == "__main__":  # python -m tests.docs.test_cluster_numbers: the block to paste
    print_block(expected())
