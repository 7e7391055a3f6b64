"""docs/scaling.rst quotes ``docs/benchmarks/scale.json`` (``bench/scale.py``): each measured
number is a substitution (``.. |name| replace:: 150,000``) at the end of the page, and
must read what the results file says, rounded as written."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from tests.docs.pages import assert_quotes, print_block

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "scaling.rst"
RESULTS = ROOT / "docs" / "benchmarks" / "scale.json"
LIMITS = ROOT / "docs" / "benchmarks" / "limits.json"
GIB = 2**30


def _stack(run: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in run["results"] if r["stack"] == name)
    return found


def _idle_percent(result: dict[str, Any]) -> float:
    idle: float = result["cpu"]["idle"]["cpu_percent"]
    return idle


def _interval(run: dict[str, Any]) -> float:
    """The keepalive interval of both stacks (their default, 20 s, in runs before the file
    said so)."""
    interval: float = run.get("ping_interval", 20.0)
    return interval


def _ping_us(result: dict[str, Any], run: dict[str, Any]) -> float:
    """Server CPU per keepalive ping: idle CPU over the pings of the idle phase."""
    idle = result["cpu"]["idle"]
    pings = result["open"]["open"] * idle["seconds"] / _interval(run)
    return float(1e6 * idle["cpu_s"] / pings)


def expected() -> dict[str, str]:
    """Every substitution's value, from the results file."""
    run = json.loads(RESULTS.read_text())
    ours, theirs = _stack(run, "dwebsocket"), _stack(run, "websockets")
    day = datetime.datetime.strptime(run["started"][:10], "%Y-%m-%d").date()
    kernel = ours["kernel"]
    slab = (kernel["open"]["slab_kib"] - kernel["start"]["slab_kib"]) / ours["open"]["open"]
    values: dict[str, str] = {
        "conns": f"{run['conns']:,}",
        "date": f"{day.day} {day:%B %Y}",
        "commit": f"``{run['commit']}``",
        "cpus": str(run["machine"]["cpus"]),
        "memory": f"{run['machine']['memory'] / GIB:.0f}",
        "cap": f"{run['worker_cap']:,}",
        "slab": f"{slab:.1f}",
        "ping_us": f"{_ping_us(ours, run):.0f}",
        "ping_cpu": f"{_ping_us(ours, run) * run['conns'] / _interval(run) / 1e4:.0f}",
    }
    machine = run["machine"]
    values |= {
        "loadgens": str(run["loadgens"]),
        "sources": str(run["sources"]),
        "load_before": f"{machine['loadavg_before'][0]:.1f}",
        "load_after": f"{machine['loadavg_after'][0]:.1f}",
        "interval": f"{_interval(run):.0f}",
        "per_worker": f"{run['per_process_target']:,}",
        # The workers' descriptors at the end (the arbiter, with few, left out).
        "fds_min": f"{min(p['fds'] for p in ours['per_process'] if p['fds'] > 1000):,}",
        "fds_max": f"{max(p['fds'] for p in ours['per_process']):,}",
    }
    values |= _limits()
    for prefix, result in (("d", ours), ("w", theirs)):
        values |= {
            f"{prefix}_procs": str(run["workers"]),
            f"{prefix}_open": f"{result['open']['open']:,}",
            f"{prefix}_echo": f"{result['echo']['answered']:,}",
            f"{prefix}_bcast": f"{result['broadcast']['received']:,}",
            f"{prefix}_last": f"{result['broadcast']['last_ms']:,.0f}",
            f"{prefix}_kib": f"{result['memory']['kib_per_conn_open']:.1f}",
            f"{prefix}_rss": f"{result['memory']['rss_open'] / GIB:.1f}",
            f"{prefix}_idle": f"{_idle_percent(result):.0f}",
            f"{prefix}_open_s": f"{result['open']['seconds']:,.0f}",
            f"{prefix}_open_cpu": f"{result['cpu']['open']['cpu_s']:,.0f}",
        }
    return values


def _writable(entry: dict[str, Any]) -> str:
    return "writable" if entry["writable"] else "not writable"


def _limits() -> dict[str, str]:
    limits = json.loads(LIMITS.read_text())
    nofile = limits["RLIMIT_NOFILE"]
    ports = limits["net.ipv4.ip_local_port_range"]
    tcp_mem = limits["net.ipv4.tcp_mem"]
    page = limits["page_size"]
    values = {
        "nofile": f"{nofile['value'][1]:,}",
        "nofile_raise": (
            "may be raised"
            if nofile["writable"]
            else "cannot be raised"
            + ("" if nofile["cap_sys_resource"] else " (no ``CAP_SYS_RESOURCE``)")
        ),
        "nr_open": f"{limits['fs.nr_open']['value'][0]:,}",
        "file_max": f"{limits['fs.file-max']['value'][0]:,}",
        "file_max_w": _writable(limits["fs.file-max"]),
        "ports_low": str(ports["value"][0]),
        "ports_high": str(ports["value"][1]),
        "ports": f"{ports['value'][1] - ports['value'][0] + 1:,}",
        "ports_w": _writable(ports),
        "somaxconn": f"{limits['net.core.somaxconn']['value'][0]:,}",
        "syn_backlog": f"{limits['net.ipv4.tcp_max_syn_backlog']['value'][0]:,}",
        "somaxconn_w": _writable(limits["net.core.somaxconn"]),
        "tcp_mem_w": _writable(tcp_mem),
        "conntrack": f"{limits['net.netfilter.nf_conntrack_max']['value'][0]:,}",
        "conntrack_used": f"{limits['net.netfilter.nf_conntrack_count']['value'][0]:,}",
    }
    for n, pages in enumerate(tcp_mem["value"], 1):
        values[f"tcp_mem_{n}"] = f"{pages * page / GIB:.1f}"
    return values


def test_the_page_quotes_the_results() -> None:
    assert_quotes(PAGE, expected())


if __name__ == "__main__":  # python -m tests.docs.test_scale_numbers: the block to paste
    print_block(expected())
