"""Many concurrent WebSockets on one machine, served as users deploy them.

    .venv/bin/python bench/scale.py                         # 150,000 connections (make bench-scale)
    .venv/bin/python bench/scale.py --conns 5000 --idle 5   # a smoke run

For each stack: a private redis-server, the server (several processes sharing one port),
and LOADGENS load-generating processes (``bench/loadgen/loadgen.c`` in idle mode) on the
same machine, each opening its share of ``--conns`` from source addresses 127.21.0.x
(each address has its own ephemeral port range: one gives about 28,000 connections to one
server port). Then, in order:

1. open: every connection is opened (the handshake done, and under dwebsocket the view
   has joined group "scale");
2. idle: ``--idle`` seconds of nothing but the servers' keepalive pings (20 s apart);
3. echo: every connection sends one 32-byte text message and must get it back;
4. broadcast: one message published to group "scale" must reach every connection.

Stacks:

- ``dwebsocket``: gunicorn ``-k gevent`` with ``--workers`` processes and the default
  backend, ``WEBSOCKET_GROUPS_URL=redis://``; ``bench/stacks/djsite``'s ``member`` view;
  the broadcast is one ``dwebsocket.groups.send()`` from this process.
- ``websockets``: ``--workers`` processes of the ``websockets`` asyncio server behind one
  port (SO_REUSEPORT), each relaying the Redis channel "scale" to its connections with
  ``websockets.broadcast`` (``bench/stacks/websockets_group.py``); the broadcast is one
  PUBLISH.

Reported per stack: connections open and answering, how long opening took, the servers'
RSS (summed over their processes; per connection: the growth over the servers' RSS before
the first connection, divided by the connections), their CPU in each phase, the
connections per process, and the kernel's side (``/proc/net/sockstat``, slab). Writes
``docs/benchmarks/scale.json`` (``--json``); logs go to ``bench/out/scale-*``. Every wait
is bounded; every process started is stopped. Not part of CI.

This machine caps every process at 20,000 open files (``RLIMIT_NOFILE``, which nothing
here may raise), so no process holds more than ``--per-process`` connections.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from processes import HOST, Lines, Processes, free_port, raise_nofile, wait_listening

from dwebsocket.conf import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
LOADGEN_SRC = BENCH / "loadgen" / "loadgen.c"
LOADGEN = BENCH / "loadgen" / "loadgen"
RESULTS = REPO / "docs" / "benchmarks" / "scale.json"
PY = sys.executable
#: Source addresses of the load generators: 127.21.0.1 and up (loopback, issue 21).
SOURCE_PREFIX = "127.21.0."
#: Ephemeral ports one source address offers one server port (ip_local_port_range).
PORT_RANGE = (32768, 60999)
#: Descriptors a server process keeps beyond its connections (listening socket, Redis,
#: pipes to the arbiter, heartbeat file, ...), so its cap stays under RLIMIT_NOFILE.
FD_MARGIN = 300
START_TIMEOUT = 60.0
OPEN_TIMEOUT = 1800.0
ANSWER_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
GROUP = "scale"
BROADCAST = "broadcast"


# -- processes ------------------------------------------------------------------------------


def build_loadgen() -> None:
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler for bench/loadgen/loadgen.c")
    subprocess.run(
        [compiler, "-O2", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lz"], check=True, timeout=120
    )


# -- measuring ------------------------------------------------------------------------------


class Servers:
    """The processes of one server (a gunicorn arbiter and its workers, or several
    independent processes): their RSS, CPU and open descriptors, summed or listed."""

    def __init__(self, roots: list[subprocess.Popen[bytes]]) -> None:
        self.roots = [psutil.Process(p.pid) for p in roots]

    def processes(self) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for root in self.roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [root, *root.children(recursive=True)]
        return found

    def sample(self) -> dict[str, Any]:
        rss = cpu = 0.0
        per_process = []
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                with process.oneshot():
                    memory = process.memory_info()
                    times = process.cpu_times()
                    fds = process.num_fds()
                rss += memory.rss
                cpu += times.user + times.system + times.children_user + times.children_system
                per_process.append({"pid": process.pid, "rss": memory.rss, "fds": fds})
        return {"t": time.monotonic(), "rss": rss, "cpu": cpu, "processes": per_process}


def kernel() -> dict[str, int]:
    """Machine-wide figures: TCP sockets and their buffer pages, slab and used memory (KiB)."""
    figures: dict[str, int] = {}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            words = line.split()[1:]
            figures.update(
                {f"tcp_{k}": int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
            )
    meminfo = {
        line.split(":")[0]: int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
    }
    figures["slab_kib"] = meminfo["Slab"]
    figures["used_kib"] = meminfo["MemTotal"] - meminfo["MemAvailable"]
    return figures


def phase(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    seconds = after["t"] - before["t"]
    cpu = after["cpu"] - before["cpu"]
    return {"seconds": seconds, "cpu_s": cpu, "cpu_percent": 100 * cpu / seconds}


# -- the stacks -----------------------------------------------------------------------------


def start_redis(processes: Processes, workdir: str, name: str) -> tuple[str, int]:
    port = free_port()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", workdir, "--maxclients", "1000"]
    process = processes.start(
        argv,
        OUT / f"scale-{name}-redis.log",
    )
    wait_listening(port, process, START_TIMEOUT)
    return f"redis://{HOST}:{port}/0", port


def start_dwebsocket(
    processes: Processes, port: int, redis_url: str, workers: int, per_process: int
) -> list[subprocess.Popen[bytes]]:
    argv = [
        str(Path(PY).with_name("gunicorn")),
        "-c",
        "python:dwebsocket.contrib.gunicorn",
        "-k",
        "gevent",
        "--workers",
        str(workers),
        "--worker-connections",
        str(per_process),
        "--backlog",
        "4096",
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "bench.stacks.djsite.wsgi:application",
    ]
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.stacks.djsite.settings",
        "DWEBSOCKET_BENCH_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": redis_url}),
    }
    return [processes.start(argv, OUT / "scale-dwebsocket-server.log", env=env)]


def start_uwsgi(
    processes: Processes, port: int, redis_url: str, workers: int, per_process: int
) -> list[subprocess.Popen[bytes]]:
    # docs/deployment.rst's "default backend under uWSGI", with --listen raised from 100.
    argv = [
        str(Path(PY).with_name("uwsgi")),
        "--master",
        "--die-on-term",
        "--need-app",
        "--processes",
        str(workers),
        "--http-socket",
        f"{HOST}:{port}",
        "--gevent",
        str(per_process),
        "--gevent-early-monkey-patch",
        "--listen",
        "4096",
        "--disable-logging",
        "--module",
        "bench.stacks.djsite.wsgi:application",
    ]
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.stacks.djsite.settings",
        "DWEBSOCKET_BENCH_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": redis_url}),
    }
    return [processes.start(argv, OUT / "scale-uwsgi-server.log", env=env)]


def start_websockets(
    processes: Processes, port: int, redis_url: str, workers: int, per_process: int
) -> list[subprocess.Popen[bytes]]:
    script = str(BENCH / "stacks" / "websockets_group.py")
    return [
        processes.start(
            [PY, script, f"{HOST}:{port}", redis_url], OUT / f"scale-websockets-server{i}.log"
        )
        for i in range(workers)
    ]


STACKS = {
    "dwebsocket": (start_dwebsocket, "dwebsocket · gunicorn -k gevent (default backend)"),
    "uwsgi": (start_uwsgi, "dwebsocket · uWSGI --gevent (default backend)"),
    "websockets": (start_websockets, "websockets (asyncio), SO_REUSEPORT"),
}


def send_broadcast(stack: str, redis_url: str) -> float:
    """Send the broadcast as the stack's users would; the CLOCK_MONOTONIC just before."""
    if stack in ("dwebsocket", "uwsgi"):
        from dwebsocket import groups

        with override_groups_url(redis_url):
            groups.get_layer()  # connect first: the send is what is timed
            t0 = time.monotonic()
            groups.send(GROUP, BROADCAST, fail_silently=False)
            groups.reset()
        return t0
    import redis

    client = redis.Redis.from_url(redis_url)
    client.ping()
    t0 = time.monotonic()
    client.publish(GROUP, BROADCAST)
    client.close()
    return t0


@contextlib.contextmanager
def override_groups_url(url: str) -> Iterator[None]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(INSTALLED_APPS=["dwebsocket"], USE_TZ=True)
        django.setup()
    from django.test.utils import override_settings

    with override_settings(WEBSOCKET_GROUPS_URL=url):
        yield


# -- one run --------------------------------------------------------------------------------


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_stack(stack: str, args: argparse.Namespace, processes: Processes) -> dict[str, Any]:
    start, label = STACKS[stack]
    result: dict[str, Any] = {"stack": stack, "label": label, "target": args.conns}
    lines: Lines | None = None
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        try:
            redis_url, _ = start_redis(processes, workdir, stack)
            port = free_port()
            roots = start(processes, port, redis_url, args.workers, args.cap)
            started += roots
            wait_listening(port, roots[0], START_TIMEOUT)
            time.sleep(args.settle)  # every worker up, the app loaded
            servers = Servers(roots)
            samples = {"start": servers.sample()}
            kernels = {"start": kernel()}
            result["server_processes"] = len(servers.processes())

            sources = [f"{SOURCE_PREFIX}{i + 1}" for i in range(args.sources)]
            loadgens = []
            for i, count in enumerate(shares(args.conns, args.loadgens)):
                own = sources[i % len(sources) :] + sources[: i % len(sources)]
                argv = [str(LOADGEN), "--mode", "idle", "--host", HOST, "--port", str(port)]
                argv += ["--path", "/member/", "--steps", str(count), "--src", ",".join(own)]
                argv += ["--connect-timeout", str(OPEN_TIMEOUT)]
                argv += ["--probe-timeout", str(ANSWER_TIMEOUT)]
                argv += ["--connect-concurrency", str(args.concurrency)]
                loadgens.append(
                    processes.start(
                        argv, OUT / f"scale-{stack}-loadgen{i}.log", stdin=True, stdout=True
                    )
                )
            started += loadgens
            lines = Lines(loadgens)
            print(f"  {stack}: opening {args.conns:,} connections", flush=True)
            opened = lines.each(loadgens, "opened", OPEN_TIMEOUT + 60)
            samples["open"], kernels["open"] = servers.sample(), kernel()
            result["open"] = {
                "open": sum(o["open"] for o in opened),
                "failed": sum(o["failed"] for o in opened),
                "dropped": sum(o["dropped"] for o in opened),
                "seconds": max(o["seconds"] for o in opened),
                "errors": sorted({o["error"] for o in opened if o["error"]}),
            }
            print(f"  {stack}: {result['open']}", flush=True)

            time.sleep(args.idle)
            samples["idle"] = servers.sample()

            command(loadgens, "probe")
            probed = lines.each(loadgens, "probed", ANSWER_TIMEOUT + 60)
            samples["echo"] = servers.sample()
            result["echo"] = {
                "asked": sum(p["asked"] for p in probed),
                "answered": sum(p["answered"] for p in probed),
                "seconds": max(p["seconds"] for p in probed),
                "p99_ms_worst": max(p["p99_us"] for p in probed) / 1000,
                "max_ms": max(p["max_us"] for p in probed) / 1000,
                "errors": sorted({p["error"] for p in probed if p["error"]}),
            }
            print(f"  {stack}: echo {result['echo']}", flush=True)

            command(loadgens, "broadcast")
            listening = lines.each(loadgens, "listening", 60)
            before = servers.sample()
            t0 = send_broadcast(stack, redis_url)
            got = lines.each(loadgens, "broadcast", ANSWER_TIMEOUT + 60)
            samples["broadcast"] = servers.sample()
            arrived = [g for g in got if g["received"]]
            result["broadcast"] = {
                "open": sum(g["open"] for g in listening),
                "received": sum(g["received"] for g in got),
                "first_ms": 1000 * (min(g["first"] for g in arrived) - t0) if arrived else None,
                "last_ms": 1000 * (max(g["last"] for g in arrived) - t0) if arrived else None,
                "cpu_s": samples["broadcast"]["cpu"] - before["cpu"],
            }
            print(f"  {stack}: broadcast {result['broadcast']}", flush=True)
            kernels["end"] = kernel()

            open_n = result["open"]["open"]
            grown = samples["open"]["rss"] - samples["start"]["rss"]
            result["memory"] = {
                "rss_start": samples["start"]["rss"],
                "rss_open": samples["open"]["rss"],
                "rss_end": samples["broadcast"]["rss"],
                "kib_per_conn_open": grown / 1024 / open_n if open_n else None,
                "kib_per_conn_end": (samples["broadcast"]["rss"] - samples["start"]["rss"])
                / 1024
                / open_n
                if open_n
                else None,
            }
            result["cpu"] = {
                "open": phase(samples["start"], samples["open"]),
                "idle": phase(samples["open"], samples["idle"]),
                "echo": phase(samples["idle"], samples["echo"]),
            }
            result["per_process"] = [
                {"fds": p["fds"], "rss": p["rss"]} for p in samples["broadcast"]["processes"]
            ]
            result["kernel"] = kernels
            command(loadgens, "quit")
        finally:
            if lines is not None:
                lines.close()
            for process in reversed(started):
                processes.stop(process)
    return result


def command(loadgens: list[subprocess.Popen[bytes]], line: str) -> None:
    for process in loadgens:
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()


# -- the machine's limits -------------------------------------------------------------------

LIMITS = REPO / "docs" / "benchmarks" / "limits.json"
#: The kernel settings docs/scaling.rst discusses.
SYSCTLS = [
    "fs.file-max",
    "fs.nr_open",
    "net.ipv4.ip_local_port_range",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_mem",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
]
CAP_SYS_RESOURCE = 24


def limits() -> dict[str, Any]:
    """This machine's limits for many connections, and which of them root may change here
    (each sysctl is written back with its own value: nothing changes)."""
    found: dict[str, Any] = {}
    for name in SYSCTLS:
        path = Path("/proc/sys") / name.replace(".", "/")
        try:
            value = path.read_text().split()
        except OSError:
            continue
        writable = True
        try:
            path.write_text(" ".join(value))
        except OSError:
            writable = False
        found[name] = {"value": [int(v) for v in value], "writable": writable}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
        raisable = True
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):
        raisable = False
    status = Path("/proc/self/status").read_text()
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff"))[7:], 16)
    found["RLIMIT_NOFILE"] = {
        "value": [soft, hard],
        "writable": raisable,
        "cap_sys_resource": bool(effective >> CAP_SYS_RESOURCE & 1),
    }
    found["page_size"] = resource.getpagesize()
    return found


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=150_000)
    parser.add_argument("--stacks", default="dwebsocket,websockets")
    parser.add_argument(
        "--per-process",
        type=int,
        default=15_000,
        help="connections one server process aims at (workers = conns / this, rounded up)",
    )
    parser.add_argument(
        "--workers", type=int, help="server processes (default: from --per-process)"
    )
    parser.add_argument("--loadgens", type=int, help="load generators (default: like workers)")
    parser.add_argument("--sources", type=int, help="source addresses (default: enough ports x2)")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="handshakes in flight per loadgen"
    )
    parser.add_argument("--idle", type=float, default=45.0, help="seconds idle after opening")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds for workers to start")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--limits", action="store_true", help=f"only record the machine's limits ({LIMITS.name})"
    )
    args = parser.parse_args()
    if args.limits:
        LIMITS.write_text(json.dumps(limits(), indent=1) + "\n")
        print(f"wrote {LIMITS}")
        return
    # SIGTERM stops the run as Ctrl-C does: every process started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    hard = raise_nofile()
    cap = hard - FD_MARGIN
    args.workers = args.workers or math.ceil(args.conns / min(args.per_process, cap))
    # The cap a gunicorn worker accepts up to (--worker-connections): the descriptors it
    # may have, so that an uneven share of the accepts never makes one run out of them.
    args.cap = cap
    if args.conns > args.workers * cap:
        raise SystemExit(f"{args.workers} processes hold at most {args.workers * cap:,}")
    args.loadgens = args.loadgens or args.workers
    if math.ceil(args.conns / args.loadgens) + 100 > hard:
        raise SystemExit(f"RLIMIT_NOFILE is {hard:,}: use more --loadgens")
    ports = PORT_RANGE[1] - PORT_RANGE[0] + 1
    args.sources = args.sources or max(2, math.ceil(2 * args.conns / ports))
    build_loadgen()
    stacks = args.stacks.split(",")
    print(
        f"scale: {args.conns:,} connections, {args.workers} server processes (cap {cap:,} each), "
        f"{args.loadgens} load generators, {args.sources} source addresses; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    run: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "memory": psutil.virtual_memory().total,
            "kernel": platform.release(),
            "rlimit_nofile": hard,
            "loadavg_before": os.getloadavg(),
        },
        "conns": args.conns,
        "workers": args.workers,
        "worker_cap": cap,
        "per_process_target": args.per_process,
        "loadgens": args.loadgens,
        "sources": args.sources,
        "idle_seconds": args.idle,
        # Both stacks' default keepalive: dwebsocket's WEBSOCKET_PING_INTERVAL and
        # websockets' ping_interval.
        "ping_interval": DEFAULTS["WEBSOCKET_PING_INTERVAL"],
        "results": [],
    }
    processes = Processes(REPO, STOP_TIMEOUT)
    try:
        for stack in stacks:
            run["results"].append(run_stack(stack, args, processes))
    finally:
        processes.stop_all()
    run["machine"]["loadavg_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
