"""docs/performance.rst quotes ``docs/benchmarks/results.json`` (``bench/compare.py``, read
through ``bench/report.py``'s own medians), ``docs/benchmarks/idle-guest.json`` (its idle
steps alone, in a guest: ``make bench-idle``), ``docs/benchmarks/groups.json``
(``bench/fanout.py``) and ``docs/benchmarks/memory/`` (``bench/memory.py``): every measured
figure of the page is computed here from those files, rounded as the page writes it, and
must be on the page.

Then no number may be left over: after the computed figures and the few numbers that are
not measurements (:data:`NOT_MEASURED`, each with its reason) are taken out, the page must
hold no digit. A figure typed by hand, or one that no longer matches its results file,
fails here.
"""

# The page is typeset: multiplication signs and en dashes are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "performance.rst"
RESULTS = ROOT / "docs" / "benchmarks" / "results.json"
GROUPS = ROOT / "docs" / "benchmarks" / "groups.json"
GUEST = ROOT / "docs" / "benchmarks" / "idle-guest.json"
# bench/memory.py's idle figures for the bare site and with startproject's middleware.
MEMORY = ROOT / "docs" / "benchmarks" / "memory"
OURS = "dwebsocket-gevent"
GIB = 2**30
WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

#: The rows of the 32-byte table: the page's label -> the stack in results.json.
TABLE = {
    "dwebsocket, gevent.pywsgi": "dwebsocket-gevent",
    "dwebsocket, gunicorn ``-k gevent``": "dwebsocket-gunicorn",
    "``websockets`` (asyncio server)": "websockets",
    "Channels, daphne": "channels-daphne",
    "Channels, uvicorn": "channels-uvicorn",
    "uWSGI's own API behind its HTTP router": "uwsgi-native",
    "uWSGI's own API, ``--http-socket``": "uwsgi-native-socket",
    "gevent-websocket": "gevent-websocket",
    "raw gevent echo, no WebSocket code": "gevent-raw",
    "picows (uvloop)": "picows",
}

#: Numbers on the page that are not measurements, and why.
NOT_MEASURED = {
    "(depth 1 per connection)": "how the load generator drives a connection",
    ":header-rows: 1": "reStructuredText",
    "``DWEBSOCKET_NO_SPEEDUPS=1``": "a setting's value",
    "``QUICK=1``": "a setting's value",
    "``read(2)``": "a manual section",
    "``write(2)``": "a manual section",
    "sections 8 to 10": "sections of bench/FINDINGS.md",
    "section 11": "a section of bench/FINDINGS.md",
    "section 15": "a section of bench/FINDINGS.md",
    "section 21": "a section of bench/FINDINGS.md",
    "Debian 12's User-Mode Linux": "a release of Debian",
    "``bench/FINDINGS.md``, section 11": "a section of bench/FINDINGS.md",
    "256 most recently active": "DEFAULT_LIVE_LIMIT in dwebsocket/protocol/_deflate.c",
    "(~50 KiB each)": "zlib's state at memLevel 5 (dwebsocket/protocol/deflate.py)",
    "at most 4 KiB each way by default": "the default window (DEFAULT_WINDOW_BITS = 12)",
    "(``make bench-groups``, about 12 minutes)": "how long the benchmark takes to run",
}


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(path: Path = RESULTS) -> dict[str, Any]:
    run: dict[str, Any] = json.loads(path.read_text())
    return run


def _ours_idle(run: dict[str, Any], deflate: bool) -> dict[str, Any]:
    result: dict[str, Any] = next(
        r for r in run["idle"] if r["stack"] == OURS and r["deflate"] is deflate
    )
    return result


def _idle_step(run: dict[str, Any], deflate: bool, target: int) -> dict[str, Any]:
    result = _ours_idle(run, deflate)
    step: dict[str, Any] = next(s for s in result["steps"] if s["target"] == target)
    assert step["all_answered"], step
    return step


def _table_row(label: str, stack: str, agg: dict[tuple[str, str], dict[str, Any]]) -> str:
    mine, ours = agg[(stack, "text32-c100")], agg[(OURS, "text32-c100")]
    ratio = "1×" if stack == OURS else f"{ours['msgs_per_s'] / mine['msgs_per_s']:.2f}×"
    return _cells(
        [
            label,
            f"{mine['msgs_per_s']:,.0f}",
            f"{mine['p99_us'] / 1000:.1f} ms",
            f"{mine['cpu_us_per_msg']:.1f} µs",
            ratio,
        ]
    )


def _cells(cells: list[str]) -> str:
    return "   * - " + "\n     - ".join(cells) + "\n"


def _deflate_row(
    label: str,
    scenario: str,
    agg: dict[tuple[str, str], dict[str, Any]],
    run: dict[str, Any],
    report: ModuleType,
) -> str:
    ours, peer = agg[(OURS, scenario)], agg[("websockets", scenario)]
    spread = str(report._per_round_ratios(run, scenario, "msgs_per_s", "websockets"))
    return _cells(
        [
            label,
            f"{ours['msgs_per_s']:,.0f} msg/s",
            f"{peer['msgs_per_s']:,.0f} msg/s",
            f"{ours['msgs_per_s'] / peer['msgs_per_s']:.2f}× ({spread.replace('–', ' to ')})",
            f"{ours['cpu_us_per_msg']:.1f} and {peer['cpu_us_per_msg']:.1f} µs",
        ]
    )


def _idle_row(run: dict[str, Any], target: int) -> str:
    plain, deflated = _idle_step(run, False, target), _idle_step(run, True, target)
    assert plain["open"] == deflated["open"] == target
    return _cells(
        [
            f"{target:,}",
            f"{plain['kb_per_conn_idle']:.1f} KiB",
            f"{plain['kb_per_conn_after_probe']:.1f} KiB",
            f"{deflated['kb_per_conn_idle']:.1f} KiB",
            f"{deflated['kb_per_conn_after_probe']:.1f} KiB",
        ]
    )


def _guest_figures() -> list[str]:
    """The idle steps run again, alone, in a guest (the host cannot hold 100,000)."""
    run = _run(GUEST)
    guest = run["idle_guest"]
    assert "error" not in guest and guest["exit_status"] == 0, guest
    plain, deflated = _ours_idle(run, False), _ours_idle(run, True)
    steps = [s["target"] for s in plain["steps"]]
    assert steps == [s["target"] for s in deflated["steps"]] and max(steps) == 100_000
    assert not plain["skipped"] and not deflated["skipped"]
    idle = [s["kb_per_conn_idle"] for s in plain["steps"]]
    last, before = deflated["steps"][-1], deflated["steps"][-2]
    day = datetime.datetime.strptime(run["started"][:10], "%Y-%m-%d").date()
    kernel = ".".join(guest["kernel"].split(".")[:2])
    return [
        f"bench-idle GUEST={guest['backend']}``, {day.day} {day:%B %Y}, commit "
        f"``{guest['machine']['commit']}``: Linux {kernel} on {WORDS[guest['cpus']]} "
        f"emulated\nCPUs, {run['minutes']:.0f} minutes)",
        *(_idle_row(run, target) for target in steps),
        f"{last['open']:,} connections with deflate hold {last['rss_after_probe'] / GIB:.1f} GiB",
        f"({min(idle):.1f} to {max(idle):.1f} KiB idle)",
        f"cost {last['kb_per_conn_idle']:.1f} KiB idle, against "
        f"{before['kb_per_conn_idle']:.1f} KiB at {before['target']:,}.",
        ":alt: server memory per connection at "
        f"{_and(f'{t:,}' for t in steps)} connections, in the guest",
    ]


def _middleware_figures() -> list[str]:
    """What Django's startproject middleware adds to an idle connection (bench/memory.py)."""
    bare, full = (_run(MEMORY / f"{name}.json") for name in ("bare", "startproject"))
    assert not bare["middleware"] and full["middleware"]
    assert not bare["deflate"] and not full["deflate"]
    b, f = bare["results"][0], full["results"][0]
    assert b["label"] == f["label"] == "idle" and b["conns"] == f["conns"]
    classes = 7  # bench/memory.py's STARTPROJECT
    stack = f["saved_stack_kib"] - b["saved_stack_kib"]
    assert (b["python_stack_pages"], f["python_stack_pages"]) == (1, 2)
    return [
        f"(``bench/memory.py --middleware``, {f['conns']:,} connections, run\nright after "
        f"the bare site, which measured {b['rss_kib']:.1f} KiB idle), an idle connection "
        f"costs {f['rss_kib']:.1f}\nKiB. Of the {f['rss_kib'] - b['rss_kib']:.1f} KiB more, "
        f"{stack:.1f} KiB is C stack",
        f"({f['saved_stack_kib']:.1f} KiB against {b['saved_stack_kib']:.1f}: "
        f"{stack / classes:.2f} KiB a class)",
        f"({f['python_frames']:.0f} frames instead of {b['python_frames']:.0f})",
    ]


def _and(items: Any) -> str:
    words = list(items)
    return ", ".join(words[:-1]) + " and " + words[-1]


def expected() -> list[str]:
    """Every measured figure of the page, as the page must write it, with its context."""
    report = _report()
    run = _run()
    agg = report.aggregate(run)
    m = run["machine"]

    def get(stack: str, scenario: str, field: str) -> float:
        value: float = agg[(stack, scenario)][field]
        return value

    def rate(peer: str, scenario: str = "text32-c100") -> float:
        return get(OURS, scenario, "msgs_per_s") / get(peer, scenario, "msgs_per_s")

    def cpu(peer: str) -> float:
        return get(peer, "text32-c100", "cpu_us_per_msg") / get(
            OURS, "text32-c100", "cpu_us_per_msg"
        )

    def per_round(peer: str) -> str:
        spread = report._per_round_ratios(run, "text32-c100", "msgs_per_s", peer)
        return str(spread).rstrip("×").replace("–", " to ")

    def mb(stack: str) -> str:
        return f"{get(stack, 'binary64k-c10', 'mb_per_s'):,.0f} MB/s"

    day = datetime.datetime.strptime(run["started"][:10], "%Y-%m-%d").date()
    loads = [run["load_before"][0], run["load_after"][0]]
    # The stacks behind uWSGI's HTTP router: --http, not --http-socket.
    router = [name for name, info in run["stacks"].items() if "--http " in info["label"] + " "]
    assert sorted(router) == ["dwebsocket-uwsgi", "uwsgi-native"], router
    router_mb = [get(s, "binary64k-c10", "mb_per_s") for s in router]
    small_on_off = get(OURS, "text32-c100-deflate", "msgs_per_s") / get(
        OURS, "text32-c100", "msgs_per_s"
    )
    json_on_off = get(OURS, "json1k-c10-deflate", "msgs_per_s") / get(
        OURS, "json1k-c10", "msgs_per_s"
    )
    plain, compressed = agg[(OURS, "json1k-c10")], agg[(OURS, "json1k-c10-deflate")]
    # The idle steps this run took (on the host: its guest could not run), plain and
    # deflate alike.
    ours_plain = _ours_idle(run, False)
    steps = [s["target"] for s in ours_plain["steps"]]
    largest = _idle_step(run, True, max(steps))
    assert "error" in run["idle_guest"], "a run with its guest: the page says it had none"
    skipped = [s["target"] for s in ours_plain["skipped"]]
    assert skipped and max(skipped) == 100_000, skipped
    echo_conns = (
        _and(
            f"{s['conns']:,}"
            for s in run["scenarios"].values()
            if s["name"].startswith("text32-c") and not s["deflate"]
        )
        + " connections"
    )
    groups = json.loads(GROUPS.read_text())
    medians = {
        (r["stack"], r["members"]): statistics.median(r["seconds"]) for r in groups["results"]
    }

    figures = [
        # The run.
        f"({day.day} {day:%B %Y}, commit ``{m['commit']}``)",
        f"with {m['cpus']} {m['cpu']} CPUs",
        f"(load average {min(loads):.1f} to {max(loads):.1f} during the",
        f"medians of {WORDS[run['rounds']]} rounds",
        # The 32-byte table: its scenario, then every row.
        "32-byte text echo, 100 connections",
        *(_table_row(label, stack, agg) for label, stack in TABLE.items()),
        f":alt: messages per second at {echo_conns}",
        # What the numbers say.
        f"with {cpu('websockets'):.1f} times less CPU than the",
        f"({rate('websockets'):.2f} times its rate; {per_round('websockets')} over",
        f"and {cpu('channels-daphne'):.1f} times less than Channels under daphne "
        f"({rate('channels-daphne'):.2f} times its rate)",
        f"WebSocket work at all by {rate('gevent-raw'):.1f} times",
        f"is faster ({1 / rate('picows'):.1f} times)",
        ":alt: MB/s for 64 KiB messages, and 1 KiB JSON",
        f"Large messages (64 KiB binary, 10 connections): {mb(OURS)}, against "
        f"{mb('websockets')} for\n  ``websockets`` ({rate('websockets', 'binary64k-c10'):.2f}×), "
        f"{mb('gevent-raw')} for the raw gevent echo and {mb('picows')} for picows",
        f"64 KiB messages ran at {min(router_mb):,.0f} to {max(router_mb):,.0f} MB/s",
        f"(against {get('dwebsocket-uwsgi-socket', 'binary64k-c10', 'mb_per_s'):,.0f} and "
        f"{get('uwsgi-native-socket', 'binary64k-c10', 'mb_per_s'):,.0f} MB/s with",
        # Compression.
        _deflate_row("32-byte text echo, 100 connections", "text32-c100-deflate", agg, run, report),
        _deflate_row("1 KiB JSON echo, 10 connections", "json1k-c10-deflate", agg, run, report),
        f"costs dwebsocket {1 - small_on_off:.0%} of its small-message rate and "
        f"{1 - json_on_off:.0%} for 1 KiB JSON",
        f"from {plain['frame']:,} to {compressed['frame']:,} bytes on the wire",
        # Idle connections.
        *(_idle_row(run, target) for target in steps),
        f"That is {largest['rss_after_probe'] / GIB:.1f} GiB for {largest['open']:,} "
        "connections with deflate",
        f"at most {ours_plain['nofile_limit']:,} files",
        f"idle steps up to\n{max(skipped):,} connections",
        f"({min(steps):,} to {max(skipped):,} on one\n    process",
        *_middleware_figures(),
        *_guest_figures(),
        f":alt: server memory per connection at {_and(f'{t:,}' for t in steps)} connections",
        # How it was measured.
        "microseconds per 32-byte text message",
        "MB/s for 64 KiB binary frames",
        f"Group broadcast through Redis to {1000:,} and {10000:,} members over "
        f"{WORDS[groups['servers']]} server\n    processes",
        f"{medians[('dwebsocket', 1000)] * 1000:.1f} ms\n    and "
        f"{medians[('dwebsocket', 10000)] * 1000:.1f} ms, "
        f"{medians[('channels', 1000)] / medians[('dwebsocket', 1000)]:.0f} and "
        f"{medians[('channels', 10000)] / medians[('dwebsocket', 10000)]:.0f} times faster",
    ]
    # A scenario the page names must be one the run measured.
    assert (100, 32) in {(s["conns"], s["size"]) for s in run["scenarios"].values()}
    assert (10, 65536) in {(s["conns"], s["size"]) for s in run["scenarios"].values()}
    return figures


@pytest.mark.parametrize("figure", expected())
def test_the_page_quotes_the_results(figure: str) -> None:
    assert figure in PAGE.read_text(), f"docs/performance.rst should read:\n{figure}"


def test_every_number_on_the_page_comes_from_a_results_file() -> None:
    text = PAGE.read_text()
    for known in sorted([*expected(), *NOT_MEASURED], key=len, reverse=True):
        text = text.replace(known, "<checked>")
    left = [
        text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " ")
        for m in re.finditer(r"(?<![\w-])\d[\d,.]*", text)
    ]
    assert not left, "numbers in docs/performance.rst that no results file backs:\n" + "\n".join(
        left
    )


def test_the_router_figure_is_the_routers() -> None:
    """The 17 MB/s that the page once gave as the router's upper bound was gevent-websocket's
    (no router at all): the range must span the router's setups only."""
    assert "9 to 17 MB/s" not in PAGE.read_text()
