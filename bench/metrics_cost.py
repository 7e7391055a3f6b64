"""What dwebsocket.metrics costs the echo: before (a revision without it), off
(``WEBSOCKET_METRICS = False``) and on, interleaved, each the median of ``--repeat`` runs.

    .venv/bin/python bench/metrics_cost.py --before main --after HEAD   # ~8 min; heavy lock

Each run is ``bench/compare.py --stacks dwebsocket-gevent`` (its load generator, CPU
pinning and measurement) of a revision's checkout, one round. The checkouts are temporary
worktrees of ``--before`` and ``--after`` with their C extensions built beside the
sources, so the working tree may change meanwhile. Prints messages per second per
scenario and the ratios on/before and on/off, and writes them to
``bench/out/metrics_cost.json``. Needs the ``prometheus`` and ``bench`` extras.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
SCENARIOS = "text32-c1,text32-c100,binary64k-c10,json1k-c10"


def run(checkout: Path, settings: dict[str, object], out: Path) -> dict[str, tuple[float, float]]:
    """One compare.py run of ``checkout``; ``{scenario: (msgs/s, server CPU us per msg)}``
    (the second is the cost when the load generator, not the server, is the limit)."""
    env = {**os.environ, "DWEBSOCKET_BENCH_SETTINGS": json.dumps(settings)}
    subprocess.run(
        [
            sys.executable,
            str(checkout / "bench" / "compare.py"),
            "--stacks",
            "dwebsocket-gevent",
            "--scenarios",
            SCENARIOS,
            "--rounds",
            "1",
            "--no-idle",
            "--out",
            str(out),
        ],
        cwd=checkout,
        env=env,
        check=True,
        timeout=900,
    )
    results = json.loads((out / "results.json").read_text())
    return {
        r["scenario"]: (rate := r.get("msgs_per_s", 0.0), 1e4 * r["server_cpu_pct"] / rate)
        for r in results["echo"]
        if r.get("msgs_per_s")
    }


def build_in_place(checkout: Path, out: Path) -> None:
    """The checkout's C extensions, built as ``pip install`` builds them (an isolated
    build: the venv's own setuptools may be older than the project needs) and put beside
    their sources."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(checkout)],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".so"):
                archive.extract(name, checkout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="a revision without the metrics")
    parser.add_argument("--after", default="HEAD", help="a revision with them")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dwebsocket-metrics-cost-"))
    checkouts = {"before": work / "before", "after": work / "after"}
    try:
        for name, checkout in checkouts.items():
            revision = args.before if name == "before" else args.after
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), revision],
                check=True,
                timeout=120,
            )
            build_in_place(checkout, work / f"wheel-{name}")
        before, after = checkouts["before"], checkouts["after"]
        configs = {
            "before": (before, {}),
            "off": (after, {"WEBSOCKET_METRICS": False}),
            "on": (after, {}),
        }
        rates: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
        cpu: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
        for n in range(args.repeat):
            for name, (checkout, settings) in configs.items():
                print(f"-- run {n + 1}/{args.repeat}: {name}", flush=True)
                measured = run(checkout, settings, work / f"{name}-{n}")
                for scenario, (rate, us) in measured.items():
                    rates[name].setdefault(scenario, []).append(rate)
                    cpu[name].setdefault(scenario, []).append(us)
    finally:
        for checkout in checkouts.values():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                check=False,
                timeout=120,
            )
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: {s: statistics.median(v) for s, v in by.items()} for name, by in rates.items()}
    cpu_medians = {
        name: {s: statistics.median(v) for s, v in by.items()} for name, by in cpu.items()
    }
    print(f"\nmessages per second (server CPU us per message), median of {args.repeat}")
    print(f"{'scenario':<16}{'before':>16}{'off':>16}{'on':>16}{'on/before':>11}{'on/off':>8}")
    for scenario, on in medians["on"].items():
        b, off = medians["before"][scenario], medians["off"][scenario]
        us = [cpu_medians[name][scenario] for name in ("before", "off", "on")]
        cells = "".join(
            f"{rate:>9.0f} ({u:>4.1f})" for rate, u in zip((b, off, on), us, strict=True)
        )
        print(f"{scenario:<16}{cells}{on / b:>11.3f}{on / off:>8.3f}")
    (OUT / "metrics_cost.json").write_text(
        json.dumps(
            {
                "before": args.before,
                "after": args.after,
                "msgs_per_s": rates,
                "server_us_per_msg": cpu,
                "medians": medians,
                "cpu_medians": cpu_medians,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
