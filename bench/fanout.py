"""How long one group message takes to reach every member: dwebsocket vs Channels.

    .venv/bin/python bench/fanout.py                  # 1,000 and 10,000 members, ~12 min
    .venv/bin/python bench/fanout.py --sizes 1000 --rounds 3 --stacks dwebsocket

For each stack and group size: SERVERS server processes, CLIENTS client processes holding
the members (``groups/members.c``, built with gcc, or ``--client python`` for
``groups/client.py``; spread evenly over the servers, from 127.0.0.x source addresses),
one sender process sending one message to the group, per round. A round's time runs from just
before the sender's call (``groups.send`` / ``group_send``) to the moment the last member
has the message, both read from CLOCK_MONOTONIC (one clock for every process on the
machine). The first round warms up and is not counted; the table shows the median of the
others, and the fastest and slowest.

Stacks, all with a private redis-server started for the run:

- ``dwebsocket``: gevent.pywsgi servers, ``WEBSOCKET_GROUPS_URL=redis://``;
- ``channels``: daphne servers, an ``AsyncWebsocketConsumer``, channels_redis'
  ``RedisChannelLayer`` (its default layer), ``group_send`` from the sender;
- ``channels-pubsub``: the same with ``RedisPubSubChannelLayer``.

For reference, django-websocket-redis published about 1.5 s for 1,000 gevent
subscribers (its README); it is not run here.

Needs channels, channels_redis and daphne (``pip install 'dwebsocket[bench]'``) for the
Channels stacks. Every wait is bounded; every process started is stopped. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its helper modules
from processes import HOST, Lines, Processes, free_port, raise_nofile, wait_listening

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "bench" / "groups"
MEMBERS_SRC = HERE / "members.c"
MEMBERS = HERE / "members"
OUT = REPO / "bench" / "out"
PY = sys.executable
SETUP_TIMEOUT = 300.0  # connecting 10,000 members to a slow stack
ROUND_TIMEOUT = 120.0
DJANGO_WEBSOCKET_REDIS_1000 = 1.5  # seconds, published figure (1,000 gevent subscribers)


def build_members() -> None:
    """Build the C member client (members.c) unless it is up to date."""
    if MEMBERS.exists() and MEMBERS.stat().st_mtime >= MEMBERS_SRC.stat().st_mtime:
        return
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(MEMBERS), str(MEMBERS_SRC)]
    print("building the member client:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=120)


def start_redis(processes: Processes, workdir: str) -> tuple[str, int]:
    port = free_port()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = processes.start(
        [
            server,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--maxclients",
            "20000",
        ],
        OUT / "groups-redis.log",
    )
    wait_listening(port, process)
    return f"redis://{HOST}:{port}/0", port


def redis_command(port: int, *args: str) -> None:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        parts = [f"*{len(args)}\r\n".encode()]
        parts += [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
        sock.sendall(b"".join(parts))
        sock.recv(4096)


def server_argv(stack: str, port: int) -> list[str]:
    if stack == "dwebsocket":
        return [PY, str(HERE / "serve_dwebsocket.py"), str(port)]
    daphne = str(Path(PY).with_name("daphne"))
    return [
        daphne,
        "-b",
        HOST,
        "-p",
        str(port),
        "--ping-interval",
        "3600",
        "--ping-timeout",
        "3600",
        "--websocket_connect_timeout",
        "600",
        "channels_site:application",
    ]


def run_stack(
    stack: str, size: int, args: argparse.Namespace, redis_url: str, processes: Processes
) -> list[float]:
    """Times (seconds) of every counted round for ``size`` members on ``stack``."""
    env = {
        "BENCH_REDIS_URL": redis_url,
        "BENCH_CHANNEL_LAYER": "pubsub" if stack == "channels-pubsub" else "core",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]),
        "PYTHONWARNINGS": "ignore",
    }
    kind = "dwebsocket" if stack == "dwebsocket" else "channels"
    started: list[subprocess.Popen[bytes]] = []
    lines: Lines | None = None
    try:
        ports = []
        for i in range(args.servers):
            port = free_port()
            started.append(
                processes.start(
                    server_argv(kind, port), OUT / f"groups-{stack}-server{i}.log", env=env
                )
            )
            ports.append(port)
        for port, process in zip(ports, started, strict=True):
            wait_listening(port, process)
        sender = processes.start(
            [PY, str(HERE / "send.py"), kind],
            OUT / f"groups-{stack}-sender.log",
            env=env,
            stdin=True,
            stdout=True,
        )
        started.append(sender)
        clients = []
        for i in range(args.clients):
            count = size // args.clients + (1 if i < size % args.clients else 0)
            clients.append(
                processes.start(
                    [
                        *([str(MEMBERS)] if args.client == "c" else [PY, str(HERE / "client.py")]),
                        f"127.0.0.{10 + i}",
                        str(count),
                        "/member/",
                        *map(str, ports),
                    ],
                    OUT / f"groups-{stack}-client{i}.log",
                    env=env,
                    stdin=True,
                    stdout=True,
                )
            )
        started.extend(clients)
        lines = Lines([sender, *clients])
        ready: set[int] = set()
        setup_started = time.monotonic()
        for process, line in lines.read(SETUP_TIMEOUT):
            if "ready" in line:
                ready.add(process.pid)
            if len(ready) == len(clients) + 1:
                break
        print(
            f"  {stack}: {size} members joined in {time.monotonic() - setup_started:.1f} s",
            flush=True,
        )
        times = []
        for n in range(args.rounds + 1):
            time.sleep(args.pause)
            assert sender.stdin is not None
            sender.stdin.write(f"{n}\n".encode())
            sender.stdin.flush()
            t0, last, done, dropped = None, 0.0, 0, 0
            try:
                for process, line in lines.read(ROUND_TIMEOUT):
                    dropped += "dropped" in line
                    if line.get("round") != n:
                        continue
                    if process is sender:
                        t0 = line["t0"]
                    else:
                        last, done = max(last, line["last"]), done + 1
                    if t0 is not None and done == len(clients):
                        break
            except TimeoutError:
                print(f"  {stack}: round {n} incomplete after {ROUND_TIMEOUT:.0f} s", flush=True)
                break
            if dropped:  # the members still open are the ones waited for
                print(f"  {stack}: servers dropped {dropped} members (round {n})", flush=True)
            assert t0 is not None
            if n:  # round 0 warms up
                times.append(last - t0)
        return times
    finally:
        if lines is not None:
            lines.close()
        for process in reversed(started):
            processes.stop(process)


def table(results: dict[tuple[str, int], list[float]], stacks: list[str], sizes: list[int]) -> str:
    rows = [
        "| stack | members | median | fastest | slowest | Channels (core) / this |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        base = results.get(("channels", size))
        for stack in stacks:
            times = results.get((stack, size))
            if not times:
                continue
            median = statistics.median(times)
            ratio = f"{statistics.median(base) / median:.1f}x" if base else "-"
            rows.append(
                f"| {stack} | {size:,} | {1000 * median:.1f} ms | "
                f"{1000 * min(times):.1f} ms | {1000 * max(times):.1f} ms | {ratio} |"
            )
        if size == 1000:
            rows.append(
                f"| django-websocket-redis (published, not run) | 1,000 | "
                f"~{1000 * DJANGO_WEBSOCKET_REDIS_1000:.0f} ms | | | |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--stacks", default="dwebsocket,channels,channels-pubsub")
    parser.add_argument("--servers", type=int, default=4, help="server processes per stack")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--rounds", type=int, default=10, help="counted rounds per size")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between rounds")
    parser.add_argument(
        "--client",
        choices=["c", "python"],
        default="c",
        help="member client: members.c (default; built with gcc) or client.py",
    )
    parser.add_argument("--json", type=Path, default=OUT / "groups.json")
    args = parser.parse_args()
    if args.client == "c":
        build_members()
    sizes = [int(s) for s in args.sizes.split(",")]
    stacks = args.stacks.split(",")
    hard = raise_nofile()
    if max(sizes) // args.servers + 100 > hard or max(sizes) // args.clients + 100 > hard:
        raise SystemExit(f"ulimit -Hn is {hard}: use more --servers/--clients")

    processes = Processes(HERE)
    results: dict[tuple[str, int], list[float]] = {}
    print(
        f"groups benchmark: {args.servers} server processes, {args.clients} client "
        f"processes ({args.client}), {args.rounds} rounds; {os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as workdir:
        try:
            redis_url, redis_port = start_redis(processes, workdir)
            for size in sizes:
                for stack in stacks:
                    redis_command(redis_port, "FLUSHALL")
                    results[(stack, size)] = run_stack(stack, size, args, redis_url, processes)
                    times = results[(stack, size)]
                    median = f"{1000 * statistics.median(times):.1f} ms" if times else "none"
                    print(f"  {stack}: {size} members: median {median}", flush=True)
        finally:
            processes.stop_all()
    print()
    print(table(results, stacks, sizes))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "servers": args.servers,
                "clients": args.clients,
                "client": args.client,
                "cpus": os.cpu_count(),
                "results": [
                    {"stack": k[0], "members": k[1], "seconds": v} for k, v in results.items()
                ],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
