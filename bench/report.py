"""Turn a ``bench/compare.py`` run into ``results.md`` and PNG plots.

    .venv/bin/python bench/report.py [docs/benchmarks/results.json]

Every figure is the median over the rounds of the run; ratios are medians of the same
run divided by each other. Called by compare.py at the end of a run; run it alone to
regenerate the report from a saved ``results.json``.
"""

# The report is typeset Markdown: en dashes, multiplication and minus signs are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from dwebsocket.conf import DEFAULTS

OURS = "dwebsocket-gevent"
ROOT = Path(__file__).resolve().parent.parent

#: The issue's reference figures for the peers, measured elsewhere (for context only).
REFERENCE = {
    ("websockets", "text32-c100"): "≈18,000 msg/s",
    ("channels-daphne", "text32-c100"): "≈2,000 msg/s",
    ("uwsgi-native", "text32-c100"): "≈27,000 msg/s",
    ("picows", "text32-c100"): "≈58,000 msg/s",
    ("websockets", "binary64k-c10"): "≈470 MB/s",
}


def _valid(result: dict[str, Any]) -> bool:
    complete = result.get("open") == result.get("conns")
    return complete and not result.get("error") and result.get("msgs", 0) > 0


def aggregate(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(stack, scenario) -> medians over the valid rounds, plus the per-round values."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result in run["echo"]:
        if _valid(result) and result.get("server_cpu_pct") is not None:
            # Server CPU per message: what a message costs whatever share of the CPU the
            # server got from a busy machine.
            result["cpu_us_per_msg"] = result["server_cpu_pct"] / 100 * 1e6 / result["msgs_per_s"]
        groups.setdefault((result["stack"], result["scenario"]), []).append(result)
    table = {}
    for key, results in groups.items():
        valid = [r for r in results if _valid(r)]
        entry: dict[str, Any] = {
            "runs": len(results),
            "valid": len(valid),
            "errors": sorted({r.get("error", "") for r in results if r.get("error")}),
        }
        if valid:
            for field in (
                "msgs_per_s",
                "mb_per_s",
                "p50_us",
                "p99_us",
                "server_cpu_pct",
                "client_cpu_pct",
                "server_rss_mb",
                "cpu_us_per_msg",
            ):
                values = [r[field] for r in valid if field in r]
                entry[field] = statistics.median(values) if values else None
                entry[field + "_all"] = values
            entry["deflate"] = min(r.get("deflate", 0) for r in valid) == valid[0]["conns"]
            entry["frame"] = valid[0].get("frame")
            entry["bad_replies"] = sum(r.get("bad_replies", 0) for r in valid)
        table[key] = entry
    return table


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ms(us: float | None) -> str:
    if us is None:
        return "–"
    return f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _per_round_ratios(run: dict[str, Any], scenario: str, field: str, peer: str) -> str:
    """Ratio ours/peer round by round (the spread a reader should see)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in run["echo"]:
        if r["scenario"] == scenario and _valid(r):
            by_round.setdefault(r["round"], {})[r["stack"]] = r[field]
    ratios = [v[OURS] / v[peer] for v in by_round.values() if OURS in v and peer in v and v[peer]]
    if len(ratios) < 2:
        return ""
    return f"{min(ratios):.2f}–{max(ratios):.2f}×"


class _View(NamedTuple):
    """What every section of the report reads: the run's medians and its stacks."""

    run: dict[str, Any]
    agg: dict[tuple[str, str], dict[str, Any]]
    labels: dict[str, str]
    present: list[str]
    ours: str


def markdown(run: dict[str, Any]) -> str:
    """The report: the run's header, then one section per function below."""
    agg = aggregate(run)
    labels = {name: info["label"] for name, info in run["stacks"].items()}
    present = [s for s in run["stacks"] if any(k[0] == s for k in agg)]
    view = _View(run, agg, labels, present, labels.get(OURS, OURS))
    lines: list[str] = []
    add = lines.append
    header_section(view, add)
    claims_section(view, add)
    echo_section(view, add)
    binary_section(view, add)
    compression_section(view, add)
    idle_section(run, add)
    loadgen_section(view, add)
    return "\n".join(lines)


def header_section(view: _View, add: Callable[[str], None]) -> None:
    """When, where and how the run was made."""
    run, labels = view.run, view.labels
    m = run["machine"]
    v = run["versions"]
    add("# dwebsocket benchmarks")
    add("")
    quick = " (quick smoke run: not for publication)" if run["quick"] else ""
    add(
        f"Run of {run['started']}{quick}"
        f" with `make bench-servers` (`bench/compare.py`), {run['rounds']} round(s), "
        f"{run['warmup_s']:g} s warmup + {run['duration_s']:g} s measured per scenario, "
        f"each server warmed by {run.get('server_warm_s', 0):g} s of traffic first; "
        f"{run['minutes']} min in all."
    )
    add("")
    add(
        f"Machine: {m['cpus']} × {m['cpu'] or 'CPU'}, {m['memory_gb']} GiB, Linux {m['kernel']}, "
        f"commit `{m['commit']}`. **Load average** before {_load(run['load_before'])}, "
        f"after {_load(run['load_after'])} (other work shared the machine: every figure is "
        "the median of the rounds, interleaved across stacks, and ratios compare stacks "
        "measured in the same run)."
    )
    add("")
    pin = run["pinning"]
    add(
        f"Pinning: server `{pin['server']}`, load generator `{pin['loadgen']}`. "
        "Each stack runs one process (one worker) serving the echo; multi-process servers "
        "(uWSGI's HTTP router + worker, gunicorn's arbiter + worker) share the server's core, "
        "and their CPU and RSS are summed over their processes."
    )
    add("")
    add("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    add("")
    if run.get("unavailable"):
        add(
            "Not measured: "
            + "; ".join(f"{labels.get(k, k)}: {why}" for k, why in run["unavailable"].items())
            + "."
        )
        add("")


def claims_section(view: _View, add: Callable[[str], None]) -> None:
    """The table of the issue's claims, each a ratio against one peer."""
    run, agg, ours = view.run, view.agg, view.ours
    add("## What the issue asks")
    add("")
    add(
        "| claim | measured (this run) | ratio | per-round ratios | server CPU per message, "
        "ours vs peer (ratio) | verdict |"
    )
    add("|---|---|---|---|---|---|")

    def claim(peer: str, scenario: str, field: str, need: float | None, text: str) -> None:
        a = agg.get((OURS, scenario), {}).get(field)
        b = agg.get((peer, scenario), {}).get(field)
        ratio = _ratio(a, b)
        unit = "MB/s" if field == "mb_per_s" else "msg/s"
        ref = REFERENCE.get((peer, scenario))
        measured = f"{_num(a)} vs {_num(b)} {unit}" + (f" (reference {ref})" if ref else "")
        if ratio is None:
            verdict = "not measured"
        elif need is None:
            verdict = "reported"
        else:
            verdict = "**met**" if ratio >= need else "**not met**"
        cpu_a = agg.get((OURS, scenario), {}).get("cpu_us_per_msg")
        cpu_b = agg.get((peer, scenario), {}).get("cpu_us_per_msg")
        cpu = (
            f"{cpu_a:.1f} vs {cpu_b:.1f} µs ({_x(_ratio(cpu_b, cpu_a))})"
            if cpu_a and cpu_b
            else "–"
        )
        add(
            f"| {text} | {measured} | {_x(ratio)} | "
            f"{_per_round_ratios(run, scenario, field, peer)} | {cpu} | {verdict} |"
        )

    claim(
        "websockets",
        "text32-c100",
        "msgs_per_s",
        2.0,
        "32-byte echo, 100 connections: ≥ 2× websockets",
    )
    claim(
        "channels-daphne",
        "text32-c100",
        "msgs_per_s",
        10.0,
        "32-byte echo, 100 connections: ≥ 10× Channels · daphne",
    )
    claim("uwsgi-native", "text32-c100", "msgs_per_s", None, "… against uWSGI native")
    claim("picows", "text32-c100", "msgs_per_s", None, "… against picows")
    claim(
        "gevent-raw",
        "text32-c100",
        "msgs_per_s",
        None,
        "… against a raw gevent echo (no WebSocket code: the floor of one greenlet per connection)",
    )
    claim(
        "websockets",
        "binary64k-c10",
        "mb_per_s",
        1.0,
        "64 KiB binary, 10 connections: ≥ websockets' MB/s",
    )
    idle_claim(run, add)
    add("")
    add(
        f"Ratios are {ours} ÷ peer, of medians measured in this run. Reference figures are "
        "the issue's, from another machine. The verdicts judge measured throughput. Server "
        "CPU per message (CPU seconds of all the server's processes over the measured "
        "window ÷ messages) does not depend on how much of its core a busy machine left "
        "the server, so its ratio (peer ÷ ours: how many times less CPU a message costs "
        "us) is the steadier figure when the load average is high."
    )
    add("")


def echo_section(view: _View, add: Callable[[str], None]) -> None:
    """The 32-byte echo at 1, 10 and 100 connections."""
    agg, labels, present, ours = view.agg, view.labels, view.present, view.ours
    add("## 32-byte text echo (msg/s; latency at 100 connections)")
    add("")
    add("![32-byte echo](echo.png)")
    add("")
    add(
        "| stack | 1 conn | 10 conns | 100 conns | p50 ms | p99 ms | server CPU | "
        f"CPU µs/msg | {ours} ÷ stack |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in present:
        c1 = agg.get((s, "text32-c1"), {})
        c10 = agg.get((s, "text32-c10"), {})
        c100 = agg.get((s, "text32-c100"), {})
        ratio = _ratio(agg.get((OURS, "text32-c100"), {}).get("msgs_per_s"), c100.get("msgs_per_s"))
        add(
            f"| {labels[s]} | {_num(c1.get('msgs_per_s'))} | {_num(c10.get('msgs_per_s'))} | "
            f"{_num(c100.get('msgs_per_s'))} | {_ms(c100.get('p50_us'))} | "
            f"{_ms(c100.get('p99_us'))} | "
            f"{_num(c100.get('server_cpu_pct'))}% | {_num(c100.get('cpu_us_per_msg'), 1)} | "
            f"{_x(ratio) if s != OURS else '1×'} |"
        )
    add("")


def binary_section(view: _View, add: Callable[[str], None]) -> None:
    """The 64 KiB binary echo."""
    agg, labels, present, ours = view.agg, view.labels, view.present, view.ours
    add("## 64 KiB binary echo, 10 connections")
    add("")
    add(
        "MB/s of payload echoed (each message counted once). "
        "![64 KiB and compression](throughput.png)"
    )
    add("")
    add(f"| stack | MB/s | msg/s | p99 ms | server CPU | {ours} ÷ stack |")
    add("|---|--:|--:|--:|--:|--:|")
    for s in present:
        e = agg.get((s, "binary64k-c10"), {})
        ratio = _ratio(agg.get((OURS, "binary64k-c10"), {}).get("mb_per_s"), e.get("mb_per_s"))
        add(
            f"| {labels[s]} | {_num(e.get('mb_per_s'))} | {_num(e.get('msgs_per_s'))} | "
            f"{_ms(e.get('p99_us'))} | {_num(e.get('server_cpu_pct'))}% | "
            f"{_x(ratio) if s != OURS else '1×'} |"
        )
    add("")


def compression_section(view: _View, add: Callable[[str], None]) -> None:
    """permessage-deflate on and off."""
    agg, labels, present = view.agg, view.labels, view.present
    add("## Compression (permessage-deflate) on vs off")
    add("")
    add(
        "The client offers `permessage-deflate; client_max_window_bits` (what browsers send) "
        "and, where the server accepts, sends pre-compressed frames; it does not inflate the "
        'replies. "not negotiated" means the server declined the offer and both directions '
        "ran uncompressed."
    )
    add("")
    add(
        "| stack | 32 B × 100 conns off | on | on ÷ off | 1 KiB JSON × 10 conns off | on | "
        "on ÷ off | 1 KiB JSON frame on the wire |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|")
    for s in present:
        t_off = agg.get((s, "text32-c100"), {})
        t_on = agg.get((s, "text32-c100-deflate"), {})
        j_off = agg.get((s, "json1k-c10"), {})
        j_on = agg.get((s, "json1k-c10-deflate"), {})

        def on(e: dict[str, Any]) -> str:
            if not e.get("valid"):
                return "–"
            return _num(e.get("msgs_per_s")) + ("" if e.get("deflate") else " (not negotiated)")

        frame = (
            f"{j_off.get('frame')} → {j_on.get('frame')} B"
            if j_on.get("deflate")
            else f"{j_off.get('frame', '–')} B"
        )
        add(
            f"| {labels[s]} | {_num(t_off.get('msgs_per_s'))} | {on(t_on)} | "
            f"{_x(_ratio(t_on.get('msgs_per_s'), t_off.get('msgs_per_s')))} | "
            f"{_num(j_off.get('msgs_per_s'))} | {on(j_on)} | "
            f"{_x(_ratio(j_on.get('msgs_per_s'), j_off.get('msgs_per_s')))} | {frame} |"
        )
    add("")


def loadgen_section(view: _View, add: Callable[[str], None]) -> None:
    """How busy the load generator was."""
    agg, labels, present = view.agg, view.labels, view.present
    add("## Is the load generator the bottleneck?")
    add("")
    add(
        "`bench/loadgen/loadgen.c`: one thread, epoll, every frame built and masked once, "
        "replies parsed by their header only. CPU is the share of one core during the "
        "measured window. A server at ~100% is saturated; the load generator's own share "
        "shows how far it is from being the limit."
    )
    add("")
    add(
        "| stack, 32 B × 100 conns | msg/s | server CPU | load generator CPU | "
        "load generator µs per message |"
    )
    add("|---|--:|--:|--:|--:|")
    for s in present:
        e = agg.get((s, "text32-c100"), {})
        rate, client = e.get("msgs_per_s"), e.get("client_cpu_pct")
        per_msg = f"{client / 100 / rate * 1e6:.1f}" if rate and client is not None else "–"
        add(
            f"| {labels[s]} | {_num(rate)} | {_num(e.get('server_cpu_pct'))}% | "
            f"{_num(client)}% | {per_msg} |"
        )
    add("")
    add("Raw figures for every round: `results.json`.")
    add("")


def _load(load: list[float] | tuple[float, ...]) -> str:
    return " / ".join(f"{x:.2f}" for x in load) + " (1/5/15 min)"


def idle_claim(run: dict[str, Any], add: Any) -> None:
    for outcome in run.get("idle", []):
        if outcome.get("stack", OURS) != OURS:
            continue  # a --baseline checkout: in the idle section
        steps = outcome.get("steps", [])
        mode = "deflate negotiated" if outcome.get("deflate") else "no compression"
        if not steps:
            add(f"| idle, {mode} | {outcome.get('error', 'not run')} | | | not measured |")
            continue
        top = steps[-1]
        reached = f"{top['open']:,} open, {top['answered']:,} answered"
        verdict = "**met**" if top["target"] >= 100_000 and top["all_answered"] else "**not met**"
        why = (
            " (in a guest: see the idle section)"
            if run.get("idle_guest", {}).get("backend")
            else ""
        )
        if outcome.get("skipped"):
            why = f" (stopped at {top['target']:,}: {outcome['skipped'][0]['reason']})"
        add(
            f"| idle, {mode}: 100,000 connections on one gevent process, all answering | "
            f"{reached}{why} | {top['kb_per_conn_idle']} KiB/conn idle, "
            f"{top['kb_per_conn_after_probe']} KiB/conn after one message | | {verdict} |"
        )


def idle_section(run: dict[str, Any], add: Any) -> None:
    add("## Idle connections on one dwebsocket gevent.pywsgi process")
    add("")
    add(
        "Connections are opened in steps (source addresses 127.0.0.1–10, 500 handshakes in "
        "flight); at each step the server's RSS is read, then every connection sends one "
        "32-byte message (compressed where deflate was negotiated) and must get its echo, "
        "then RSS is read again. *Idle* is what each connection added by the step costs "
        "before sending anything: (RSS idle − RSS after the previous step) ÷ connections "
        "added. *After one message* is (RSS after the probe − RSS of the warmed-up "
        "server) ÷ all open connections, every one of which has exchanged at least one "
        "message (with deflate, that is when the compressor is allocated). "
        "![idle](idle.png)"
    )
    add("")
    guest_note(run, add)
    add(
        "| deflate | target | open | answered | open took | probe p99 | RSS idle | "
        "KiB/conn idle | KiB/conn after one message |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    labels = {name: s["label"] for name, s in run.get("stacks", {}).items()}
    for outcome in run.get("idle", []):
        mode = "negotiated" if outcome.get("deflate") else "not offered"
        stack = outcome.get("stack", OURS)
        if stack != OURS:  # a --baseline checkout, measured in the same run
            mode = f"{mode}, {labels.get(stack, stack)}"
        for step in outcome.get("steps", []):
            add(
                f"| {mode} | {step['target']:,} | {step['open']:,} | {step['answered']:,} | "
                f"{step['open_seconds']:.1f} s | {step['probe_p99_ms']:.0f} ms | "
                f"{step['rss_idle_mb']:,.0f} MiB | {step['kb_per_conn_idle']} | "
                f"{step['kb_per_conn_after_probe']} |"
            )
        for skipped in outcome.get("skipped", []):
            add(f"| {mode} | {skipped['target']:,} | not run: {skipped['reason']} | | | | | | |")
        if outcome.get("error"):
            add(f"| {mode} | | error: {outcome['error']} | | | | | | |")
    add("")


#: What each bench/vm/run.py backend is, and how its times compare with the host's.
GUEST_KINDS = {
    "kvm": ("a KVM guest", "its times are close to the host's"),
    "uml": (
        "a User-Mode Linux guest (Debian's `user-mode-linux`: a Linux kernel running as a "
        "host process; guest programs run natively, their system calls and page faults go "
        "through that kernel, by ptrace)",
        "its times (open took, probe p99) are several times the host's, every system call "
        "costing a round trip through the UML kernel, with server and load generator "
        "sharing its one vCPU",
    ),
    "tcg": (
        "a qemu guest under software emulation (TCG)",
        "its times are about 30 times the host's",
    ),
}


def guest_note(run: dict[str, Any], add: Any) -> None:
    """The paragraph that says the idle rows were measured in a guest, and why."""
    guest = run.get("idle_guest")
    if not guest:
        return
    if guest.get("error"):
        add(f"A guest for the steps the host cannot hold could not run: {guest['error']}.")
        add("")
        return
    kind, times = GUEST_KINDS.get(guest.get("backend", ""), ("a guest", "its times differ"))
    m = guest.get("machine", {})
    why_not_kvm = guest.get("why_not_kvm")
    keepalive = max((o.get("keepalive_s") or 0 for o in run.get("idle", [])), default=0)
    add(
        f"**These rows were measured in {kind} on this machine**, with "
        f"`bench/vm/run.py` running `bench/compare.py --idle-only` as the guest's root: "
        f"Linux {guest.get('kernel', m.get('kernel'))} (Debian package "
        f"`{guest.get('package', '?')}`), {m.get('cpus', guest.get('cpus'))} vCPU(s), "
        f"{m.get('memory_gb', guest.get('memory'))} GiB, RLIMIT_NOFILE "
        f"{m.get('nofile_hard', '?'):,}, ephemeral ports 1024–65535; "
        f"{guest.get('minutes', '?')} min. Why: {guest.get('reason', '')}"
        + (f"; and not KVM, although /dev/kvm opens: {why_not_kvm}" if why_not_kvm else "")
        + f". RSS and reachability are the guest's own figures for the same code, "
        f"interpreter and allocator as on the host; {times}."
        + (
            f" In the guest, dwebsocket's keepalive (ping after {keepalive:g} s of silence, "
            f"drop {keepalive:g} s later without a pong, against "
            f"{DEFAULTS['WEBSOCKET_PING_INTERVAL']:g} s and "
            f"{DEFAULTS['WEBSOCKET_PING_TIMEOUT']:g} s by default) "
            "was stretched as much as the guest is slower, so that keepalive traffic costs "
            "it what it costs the host (unstretched, pinging 100,000 connections every 20 s "
            "took the whole vCPU, and its late event loop dropped live peers with 1011)."
            if keepalive
            else ""
        )
        + f" The guest's own report: `{guest.get('results')}/results.md`."
    )
    add("")


# -- plots ---------------------------------------------------------------------------------


def plots(run: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    agg = aggregate(run)
    labels = {name: info["label"] for name, info in run["stacks"].items()}
    present = [s for s in run["stacks"] if any(k[0] == s for k in agg)]
    colors = {s: ("#1f77b4" if run["stacks"][s]["ours"] else "#999999") for s in present}
    written = []

    def barh(ax: Any, values: dict[str, float | None], title: str, xlabel: str) -> None:
        names = [s for s in present if values.get(s)]
        ax.barh(
            [labels[s] for s in names], [values[s] for s in names], color=[colors[s] for s in names]
        )
        ax.invert_yaxis()
        ax.locator_params(axis="x", nbins=4)
        ax.xaxis.set_major_formatter(
            ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}")
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        for i, s in enumerate(names):
            ax.text(values[s], i, f" {values[s]:,.0f}", va="center", fontsize=8)
        ax.margins(x=0.18)

    # echo.png: msg/s at 1/10/100 connections, and latency at 100.
    fig, axes = plt.subplots(1, 4, figsize=(18, 0.5 * len(present) + 2), sharey=True)
    for ax, scenario, title in zip(
        axes[:3],
        ["text32-c1", "text32-c10", "text32-c100"],
        ["1 connection", "10 connections", "100 connections"],
        strict=True,
    ):
        barh(
            ax,
            {s: agg.get((s, scenario), {}).get("msgs_per_s") for s in present},
            f"32-byte echo, {title}",
            "messages/s (higher is better)",
        )
    ax = axes[3]
    names = [s for s in present if agg.get((s, "text32-c100"), {}).get("p99_us")]
    ys = range(len(names))
    ax.barh(
        [labels[s] for s in names],
        [agg[(s, "text32-c100")]["p99_us"] / 1000 for s in names],
        color="#dddddd",
        label="p99",
    )
    ax.barh(
        [labels[s] for s in names],
        [agg[(s, "text32-c100")]["p50_us"] / 1000 for s in names],
        color=[colors[s] for s in names],
        label="p50",
    )
    ax.set_xscale("log")
    ax.set_title("latency at 100 connections", fontsize=10)
    ax.set_xlabel("ms, log scale (lower is better)")
    ax.legend(fontsize=8)
    del ys
    fig.suptitle(_title(run), fontsize=9)
    fig.tight_layout()
    path = out / "echo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # throughput.png: 64 KiB MB/s; compression on vs off.
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.5 * len(present) + 2), sharey=True)
    barh(
        axes[0],
        {s: agg.get((s, "binary64k-c10"), {}).get("mb_per_s") for s in present},
        "64 KiB binary echo, 10 connections",
        "MB/s (higher is better)",
    )
    ax = axes[1]
    off = [agg.get((s, "json1k-c10"), {}).get("msgs_per_s") or 0 for s in present]
    on = [
        (agg.get((s, "json1k-c10-deflate"), {}).get("msgs_per_s") or 0)
        if agg.get((s, "json1k-c10-deflate"), {}).get("deflate")
        else 0
        for s in present
    ]
    y = list(range(len(present)))
    ax.barh([i - 0.2 for i in y], off, height=0.4, color="#999999", label="compression off")
    ax.barh(
        [i + 0.2 for i in y],
        on,
        height=0.4,
        color="#1f77b4",
        label="permessage-deflate (0 = not supported)",
    )
    ax.set_title("1 KiB JSON echo, 10 connections", fontsize=10)
    ax.set_xlabel("messages/s (higher is better)")
    ax.legend(fontsize=8)
    fig.suptitle(_title(run), fontsize=9)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # idle.png: KiB per connection at each step.
    if any(o.get("steps") for o in run.get("idle", [])):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for outcome in run["idle"]:
            steps = outcome.get("steps", [])
            if not steps:
                continue
            mode = "deflate negotiated" if outcome["deflate"] else "no compression"
            if outcome.get("stack", OURS) != OURS:
                mode += ", before"
            xs = [st["open"] for st in steps]
            ax.plot(xs, [st["kb_per_conn_idle"] for st in steps], marker="o", label=f"{mode}, idle")
            ax.plot(
                xs,
                [st["kb_per_conn_after_probe"] for st in steps],
                marker="s",
                linestyle="--",
                label=f"{mode}, after one message",
            )
        ax.set_xlabel("open connections")
        ax.set_ylabel("server RSS per connection, KiB")
        ax.set_ylim(bottom=0)
        ax.set_title("dwebsocket, one gevent.pywsgi process", fontsize=10)
        ax.legend(fontsize=8)
        fig.suptitle(_title(run), fontsize=9)
        fig.tight_layout()
        path = out / "idle.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _title(run: dict[str, Any]) -> str:
    m = run["machine"]
    return (
        f"{run['started']}, {m['cpus']} CPUs, load {run['load_before'][0]:.1f}, "
        f"median of {run['rounds']} round(s){' (quick)' if run['quick'] else ''}"
    )


def write(run: dict[str, Any], out: Path) -> None:
    """Write results.md and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(run))
    written = plots(run, out)
    print(f"wrote {out / 'results.md'} and {', '.join(p.name for p in written)}")


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "benchmarks" / "results.json"
    write(json.loads(path.read_text()), path.parent)
