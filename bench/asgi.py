"""dwebsocket under uvicorn (a sync view, an async view) against Channels on the same
uvicorn: 32-byte echo at 100 connections, and idle memory per connection.

    .venv/bin/python bench/asgi.py              # one round, ~1.5 min; needs channels
    .venv/bin/python bench/asgi.py --duration 20 --rounds 3

Uses bench/compare.py's machinery (the C load generator, pinning, CPU and RSS sampling).
The three servers are uvicorn 1 process with its defaults (the websockets implementation,
httptools, uvloop when installed), the same command line for all three. Writes
``docs/benchmarks/asgi.json``; ``docs/asgi.rst`` quotes it and ``tests/docs`` checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench.compare import DJANGO_ENV, OUT, PY, SCENARIOS, STACKS, Stack

RESULTS = compare.REPO / "docs" / "benchmarks" / "asgi.json"


def _uvicorn(app: str) -> Any:
    return lambda host, port: [
        str(Path(PY).parent / "uvicorn"),
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        app,
    ]


ASYNC_URLS = {
    "DWEBSOCKET_BENCH_SETTINGS": json.dumps({"ROOT_URLCONF": "bench.stacks.djsite.async_urls"})
}

ASGI_STACKS = [
    Stack(
        "dwebsocket-uvicorn-sync",
        "dwebsocket · uvicorn · sync view",
        _uvicorn("bench.stacks.djsite.asgi_dws:application"),
        DJANGO_ENV,
        ours=True,
    ),
    Stack(
        "dwebsocket-uvicorn-async",
        "dwebsocket · uvicorn · async view",
        _uvicorn("bench.stacks.djsite.asgi_dws:application"),
        {**DJANGO_ENV, **ASYNC_URLS},
        ours=True,
    ),
    STACKS["channels-uvicorn"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--idle", type=int, default=1000, help="idle connections")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    pin_server, pin_client = compare.pinning()
    compare.build_loadgen()
    compare.write_payloads()
    OUT.mkdir(parents=True, exist_ok=True)
    scenario = SCENARIOS["text32-c100"]
    echo: dict[str, list[dict[str, Any]]] = {stack.name: [] for stack in ASGI_STACKS}
    idle: dict[str, Any] = {}
    for round_no in range(1, args.rounds + 1):
        for stack in ASGI_STACKS:
            print(f"round {round_no}/{args.rounds}: {stack.name}", flush=True)
            with (
                compare.running(stack, OUT / f"{stack.name}.log", pin_server) as server,
                open(OUT / "loadgen.log", "ab") as log,
            ):
                problem = compare.check_stack(server, pin_client, log, warm=2.0)
                if problem:
                    raise SystemExit(f"{stack.name}: {problem}")
                result = compare.run_echo(server, scenario, 1.0, args.duration, pin_client, log)
                echo[stack.name].append(result)
                print(
                    f"  {result.get('msgs_per_s', 0):>10.0f} msg/s, p99 "
                    f"{result.get('p99_us', 0) / 1000:.2f} ms, server CPU "
                    f"{result.get('server_cpu_pct', 0)}% {result.get('error', '')}",
                    flush=True,
                )
    for stack in ASGI_STACKS:
        print(f"idle: {stack.name}", flush=True)
        steps = compare.run_idle(
            stack, [args.idle], False, pin_server, pin_client, OUT / f"{stack.name}-idle.log"
        )
        idle[stack.name] = steps
    rates = {name: median(r.get("msgs_per_s", 0) for r in runs) for name, runs in echo.items()}
    channels = rates["channels-uvicorn"] or 1
    summary = {
        "msgs_per_s": {name: round(rate) for name, rate in rates.items()},
        "vs_channels": {
            name: round(rate / channels, 2)
            for name, rate in rates.items()
            if name != "channels-uvicorn"
        },
        "kb_per_conn_idle": {name: _kb_per_conn(result) for name, result in idle.items()},
    }
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "idle_connections": args.idle,
        "machine": compare.machine(),
        "versions": compare.versions(),
        "load_before": os.getloadavg(),
        "summary": summary,
        "echo": echo,
        "idle": idle,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps(summary, indent=1))


def _kb_per_conn(result: dict[str, Any]) -> float | None:
    steps = result.get("steps") or []
    return steps[-1].get("kb_per_conn_idle") if steps else None


if __name__ == "__main__":
    main()
