"""Every number ``docs/users.rst`` gives comes from ``docs/benchmarks/presence.json``
(``bench/presence.py``), and the goals the issue set hold in it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.docs.pages import assert_quotes, print_block

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
PAGE = DOCS / "users.rst"
RESULTS = json.loads((DOCS / "benchmarks" / "presence.json").read_text())


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def expected() -> dict[str, str]:
    redis, memory = RESULTS["presence_redis"], RESULTS["presence_memory"]
    send = RESULTS["users_send_3_sockets_3_processes"]
    logout = RESULTS["logout_to_close_other_process"]
    disconnect = RESULTS["disconnect_3_sockets_3_processes"]
    return {
        "bench_machine": f"{RESULTS['machine']} (Python {RESULTS['python']})",
        "bench_redis": RESULTS["redis"],
        "bench_load": " to ".join(f"{load:.1f}" for load in RESULTS["load_average"]),
        "presence_members": f"{redis['members']:,}",
        "presence_p50": ms(redis["unchanged"]["p50_ms"]),
        "presence_p99": ms(redis["unchanged"]["p99_ms"]),
        "presence_changed_p50": ms(redis["after_a_change"]["p50_ms"]),
        "presence_changed_p99": ms(redis["after_a_change"]["p99_ms"]),
        "presence_first": ms(redis["first_read_ms"]),
        "presence_joins": f"{redis['joins_per_s']:,}",
        "memory_p50": ms(memory["unchanged"]["p50_ms"]),
        "memory_p99": ms(memory["unchanged"]["p99_ms"]),
        "send_p50": ms(send["p50_ms"]),
        "send_p99": ms(send["p99_ms"]),
        "logout_p50": ms(logout["p50_ms"]),
        "logout_p99": ms(logout["p99_ms"]),
        "disconnect_p50": ms(disconnect["p50_ms"]),
        "disconnect_p99": ms(disconnect["p99_ms"]),
    }


def test_the_numbers_are_the_committed_results() -> None:
    assert_quotes(PAGE, expected())


def test_the_goals_hold() -> None:
    """The issue's goals: presence of 10,000 members in < 5 ms at p99 -- on a machine
    that other work does not hold up (a 1-minute load average under its CPU count; the
    results say what it was, and the page too) -- and revocation within 1 s at p99."""
    presence = RESULTS["presence_redis"]
    assert presence["members"] >= 10_000
    for case in ("unchanged", "after_a_change"):
        assert presence[case]["p50_ms"] < 5
        if max(RESULTS["load_average"]) < int(RESULTS["machine"].split(", ")[1].split()[0]):
            assert presence[case]["p99_ms"] < 5
    assert RESULTS["logout_to_close_other_process"]["p99_ms"] < 1000
    assert RESULTS["disconnect_3_sockets_3_processes"]["p99_ms"] < 1000


if __name__ == "__main__":  # prints the substitutions to paste after a new run
    print_block(expected())
