"""Measure dwebsocket against the stacks users would pick instead, in one run.

    .venv/bin/python bench/compare.py            # everything (make bench-servers), ~40 min
    .venv/bin/python bench/compare.py --quick    # smoke run: 1 round, short scenarios
    .venv/bin/python bench/compare.py --stacks picows,dwebsocket-gevent --scenarios text32-c100

Builds ``bench/loadgen/loadgen`` (C, epoll) with the machine's gcc, then for each round
starts every stack's echo server, runs every scenario against it, stops it. Three rounds
by default, so each figure is the median of three runs taken in three separate server
processes, interleaved with the other stacks (a burst of load from elsewhere hits all
stacks alike rather than one). The idle test opens 10,000 / 50,000 / 100,000
connections on one dwebsocket gevent process, with and without permessage-deflate.

The server and its children are pinned to CPU 1 and the load generator to CPU 0
(``taskset``) when the machine has two or more CPUs, so the two never compete for a
core. Server CPU (all its processes) is sampled at the start and end of each
measurement window; RSS is the sum over its processes.

Writes ``docs/benchmarks/results.json`` (every run), ``results.md`` and the PNG plots
(``bench/report.py``). Server and load generator logs go to ``bench/out/``. Every wait
is bounded; every process started is stopped (SIGTERM to its process group, then
SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its helper modules
from processes import HOST, free_port, nofile_hard, raise_nofile, stop_group
from vm.run import UML_XSTATE_WHY

from dwebsocket.conf import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
LOADGEN_SRC = BENCH / "loadgen" / "loadgen.c"
LOADGEN = BENCH / "loadgen" / "loadgen"
RESULTS = REPO / "docs" / "benchmarks"
PY = sys.executable

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Descriptors the idle server keeps for itself beyond one per connection.
FD_MARGIN = 100
#: The settings run_idle stretches in a slow guest.
KEEPALIVE = ("WEBSOCKET_PING_INTERVAL", "WEBSOCKET_PING_TIMEOUT")

# -- the stacks -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stack:
    """One echo server: how to start it and what it is."""

    name: str
    label: str
    argv: Callable[[str, int], list[str]]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    ours: bool = False
    #: Why the stack cannot run here, if it cannot (checked before starting it).
    unavailable: Callable[[], str | None] = lambda: None
    stop_signal: int = signal.SIGTERM


def _uwsgi(*args: str, router: bool = True) -> Callable[[str, int], list[str]]:
    # One worker, 1000 gevent cores; --die-on-term so that SIGTERM stops, not reloads.
    # router: behind uWSGI's HTTP router (--http --http-websockets, the documented
    # setup; the router is a second process on the same core), else the worker
    # speaks HTTP itself (--http-socket, as behind nginx).
    listen = ["--http", "{addr}", "--http-websockets"] if router else ["--http-socket", "{addr}"]
    return lambda host, port: [
        str(Path(PY).parent / "uwsgi"),
        "--master",
        *(arg.format(addr=f"{host}:{port}") for arg in listen),
        "--gevent",
        "1000",
        "--workers",
        "1",
        "--die-on-term",
        "--disable-logging",
        "--need-app",
        *args,
    ]


def _uwsgi_backend_missing() -> str | None:
    if not (REPO / "dwebsocket" / "backends" / "uwsgi" / "websocket.py").exists():
        return "dwebsocket.backends.uwsgi has not landed yet"
    return None


DJANGO_ENV = {"DJANGO_SETTINGS_MODULE": "bench.stacks.djsite.settings"}
UWSGI_FACTORY = "dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory"

STACKS: dict[str, Stack] = {
    stack.name: stack
    for stack in [
        Stack(
            "dwebsocket-gevent",
            "dwebsocket · gevent.pywsgi",
            # The way the test suite runs it (monkey-patched gevent.pywsgi).
            lambda host, port: [PY, str(REPO / "tests" / "run_gevent.py"), f"{host}:{port}"],
            DJANGO_ENV,
            ours=True,
        ),
        Stack(
            "dwebsocket-gunicorn",
            "dwebsocket · gunicorn -k gevent",
            lambda host, port: [
                str(Path(PY).parent / "gunicorn"),
                "-k",
                "gevent",
                "-w",
                "1",
                "--worker-connections",
                "100000",
                "-b",
                f"{host}:{port}",
                "--log-level",
                "warning",
                "bench.stacks.djsite.wsgi:application",
            ],
            DJANGO_ENV,
            ours=True,
        ),
        Stack(
            "dwebsocket-uwsgi",
            "dwebsocket · uWSGI --http --gevent (uwsgi backend)",
            # Not monkey-patched, as in tests/servers.py: with --gevent-monkey-patch the
            # backend finds no select.epoll (gevent removes it) and every session fails.
            _uwsgi("--module", "bench.stacks.djsite.wsgi:application"),
            {
                **DJANGO_ENV,
                "DWEBSOCKET_BENCH_SETTINGS": json.dumps({"WEBSOCKET_FACTORY_CLASS": UWSGI_FACTORY}),
            },
            ours=True,
            unavailable=_uwsgi_backend_missing,
        ),
        Stack(
            "dwebsocket-uwsgi-socket",
            "dwebsocket · uWSGI --http-socket --gevent (uwsgi backend)",
            _uwsgi("--module", "bench.stacks.djsite.wsgi:application", router=False),
            {
                **DJANGO_ENV,
                "DWEBSOCKET_BENCH_SETTINGS": json.dumps({"WEBSOCKET_FACTORY_CLASS": UWSGI_FACTORY}),
            },
            ours=True,
            unavailable=_uwsgi_backend_missing,
        ),
        Stack(
            "websockets",
            "websockets (asyncio server)",
            lambda host, port: [PY, str(BENCH / "stacks" / "websockets_echo.py"), f"{host}:{port}"],
        ),
        Stack(
            "channels-daphne",
            "Channels · daphne",
            lambda host, port: [
                str(Path(PY).parent / "daphne"),
                "-b",
                host,
                "-p",
                str(port),
                "-v",
                "0",
                "bench.stacks.djsite.asgi:application",
            ],
            DJANGO_ENV,
        ),
        Stack(
            "channels-uvicorn",
            "Channels · uvicorn",
            lambda host, port: [
                str(Path(PY).parent / "uvicorn"),
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "bench.stacks.djsite.asgi:application",
            ],
            DJANGO_ENV,
        ),
        Stack(
            "uwsgi-native",
            "uWSGI native API (--http --gevent)",
            _uwsgi("--wsgi-file", str(BENCH / "stacks" / "uwsgi_native.py")),
        ),
        Stack(
            "uwsgi-native-socket",
            "uWSGI native API (--http-socket --gevent)",
            _uwsgi("--wsgi-file", str(BENCH / "stacks" / "uwsgi_native.py"), router=False),
        ),
        Stack(
            "gevent-websocket",
            "gevent-websocket",
            lambda host, port: [
                PY,
                str(BENCH / "stacks" / "gevent_websocket_echo.py"),
                f"{host}:{port}",
            ],
        ),
        Stack(
            "gevent-raw",
            "raw gevent echo, no WebSocket library (floor)",
            lambda host, port: [
                PY,
                str(BENCH / "stacks" / "gevent_raw_echo.py"),
                f"{host}:{port}",
            ],
        ),
        Stack(
            "picows",
            "picows (uvloop)",
            lambda host, port: [PY, str(BENCH / "stacks" / "picows_echo.py"), f"{host}:{port}"],
        ),
    ]
}

#: The stack the ratios are computed for, and the peers the issue asks about.
OURS = "dwebsocket-gevent"
#: ``--baseline DIR``: the same stack served from another checkout (its own built C
#: extensions), measured in the same rounds: a before/after in one run.
BASELINE = "dwebsocket-gevent-baseline"


def baseline_stack(path: Path) -> Stack:
    """dwebsocket · gevent.pywsgi served from the checkout at ``path`` (tests/run_gevent.py
    puts that checkout first on sys.path: its dwebsocket, its extensions, its bench site)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = path.name
    return Stack(
        BASELINE,
        f"dwebsocket · gevent.pywsgi, before ({commit})",
        lambda host, port: [PY, str(path / "tests" / "run_gevent.py"), f"{host}:{port}"],
        {**DJANGO_ENV, "PYTHONPATH": str(path)},
        ours=True,
        unavailable=lambda: (
            None if (path / "tests" / "run_gevent.py").exists() else f"no checkout at {path}"
        ),
    )


# -- the scenarios ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    conns: int
    size: int = 32
    binary: bool = False
    deflate: bool = False
    payload: str | None = None  # a file under OUT, instead of generated bytes

    def loadgen_args(self) -> list[str]:
        args = ["--conns", str(self.conns)]
        if self.payload is not None:
            args += ["--payload-file", str(OUT / self.payload)]
        else:
            args += ["--size", str(self.size)]
        if self.binary:
            args.append("--binary")
        if self.deflate:
            args.append("--deflate")
        return args

    @property
    def path(self) -> str:
        return "/echo/?binary=1" if self.binary else "/echo/"


JSON_1K = "payload-json1k.txt"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("text32-c1", "32-byte text, 1 connection", 1),
        Scenario("text32-c10", "32-byte text, 10 connections", 10),
        Scenario("text32-c100", "32-byte text, 100 connections", 100),
        Scenario("binary64k-c10", "64 KiB binary, 10 connections", 10, size=65536, binary=True),
        Scenario(
            "text32-c100-deflate",
            "32-byte text, 100 connections, deflate offered",
            100,
            deflate=True,
        ),
        Scenario("json1k-c10", "1 KiB JSON text, 10 connections", 10, payload=JSON_1K),
        Scenario(
            "json1k-c10-deflate",
            "1 KiB JSON text, 10 connections, deflate offered",
            10,
            payload=JSON_1K,
            deflate=True,
        ),
    ]
}


def write_payloads() -> None:
    """A dashboard-like JSON update of about 1 KiB: realistic, and compressible."""
    rows, n = [], 0
    while len(json.dumps({"type": "update", "rows": rows})) < 1000:
        rows.append(
            {
                "id": n,
                "sensor": f"sensor-{n:03d}",
                "value": round(20 + (n * 7.3) % 5, 2),
                "status": "ok" if n % 5 else "warn",
            }
        )
        n += 1
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / JSON_1K).write_text(json.dumps({"type": "update", "rows": rows})[:1024])


# -- processes --------------------------------------------------------------------------


def pinning() -> tuple[list[str], list[str]]:
    """taskset prefixes for (server, load generator): separate cores when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[1])], ["taskset", "-c", str(cpus[0])]


def build_loadgen() -> None:
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lz"]
    print("building the load generator:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=120)


class Server:
    """A stack's echo server, running in its own process group."""

    def __init__(self, stack: Stack, log_path: Path, pin: list[str]) -> None:
        self.stack = stack
        self.port = free_port()
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            **stack.env,
        }
        self._log.write(f"\n=== {stack.name} on {HOST}:{self.port} ===\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [*pin, *stack.argv(HOST, self.port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
        self.ps = psutil.Process(self.process.pid)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        """Bytes resident, summed over the server's processes (taskset's exec replaces
        itself, so the tree is the server's)."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def nprocs(self) -> int:
        return len(self.processes())

    def stop(self) -> None:
        stop_group(self.process, STOP_TIMEOUT, self.stack.stop_signal)
        self._log.close()


@contextlib.contextmanager
def running(stack: Stack, log_path: Path, pin: list[str]) -> Iterator[Server]:
    server = Server(stack, log_path, pin)
    try:
        if not server.wait_listening():
            raise RuntimeError(f"{stack.name} did not start; see {log_path}")
        yield server
    finally:
        server.stop()


class LineReader:
    """Read JSON lines from a child's stdout, each wait bounded."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.process = process
        self.stream = process.stdout
        os.set_blocking(self.stream.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.stream, selectors.EVENT_READ)
        self.buffer = b""

    def line(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return None
            chunk = self.stream.read(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.selector.close()


def _stop_child(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


# -- echo scenarios ---------------------------------------------------------------------


def run_echo(
    server: Server,
    scenario: Scenario,
    warmup: float,
    duration: float,
    pin: list[str],
    log: IO[bytes],
) -> dict[str, Any]:
    """One loadgen run; the server's CPU is sampled over the measurement window."""
    argv = [
        *pin,
        str(LOADGEN),
        "--mode",
        "echo",
        "--host",
        HOST,
        "--port",
        str(server.port),
        "--path",
        scenario.path,
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--connect-timeout",
        "30",
        *scenario.loadgen_args(),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, preexec_fn=raise_nofile)
    reader = LineReader(process)
    bound = 30 + warmup + duration + 15
    try:
        started = reader.line(bound)
        if started is None:
            return {"error": "the load generator did not start measuring"}
        if "error" in started and started.get("event") != "measure-start":
            return started
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        ended = reader.line(duration + 15)
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        rss = server.rss()
        result = reader.line(15)
        if result is None:
            return {"error": "no result from the load generator"}
        if ended is None or ended.get("event") != "measure-end":
            result.setdefault("error", "measurement window not reported")
        result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / max(t1 - t0, 1e-6), 1)
        result["client_cpu_pct"] = round(100 * result["client_cpu_s"] / result["seconds"], 1)
        result["server_rss_mb"] = round(rss / 2**20, 1)
        result["server_processes"] = server.nprocs()
        return result
    finally:
        if process.poll() is None:
            _stop_child(process, 10)
        reader.close()


def check_stack(server: Server, pin: list[str], log: IO[bytes], warm: float = 0.0) -> str | None:
    """One connection for half a second: None if the echo works, else why not. Then,
    if ``warm``, 10 connections for that long, not recorded: a fresh process is slower
    for its first seconds (the websockets server took 45 us of CPU per message fresh,
    24 us after 3 s of traffic), and every stack is measured warm."""
    result = run_echo(server, SCENARIOS["text32-c1"], 0.2, 0.5, pin, log)
    if result.get("error") or not result.get("msgs"):
        return result.get("error") or "no echo"
    if warm:
        run_echo(server, SCENARIOS["text32-c10"], 0.1, warm, pin, log)
    return None


# -- idle connections -------------------------------------------------------------------

SOURCES = [f"127.0.0.{i}" for i in range(1, 11)]  # 10 x ~28,000 ephemeral ports


def _idle_plan(steps: list[int]) -> tuple[int, list[int], list[int]]:
    """The open-files limit, the steps one process can hold under it (plus the largest
    round number below it when steps were cut), and the steps it cannot."""
    limit = nofile_hard()
    max_conns = limit - FD_MARGIN
    runnable = [n for n in steps if n <= max_conns]
    skipped = [n for n in steps if n > max_conns]
    if skipped and (not runnable or runnable[-1] < max_conns):
        runnable.append(max_conns // 1000 * 1000 if max_conns >= 2000 else max_conns)
    return limit, runnable, skipped


def _idle_clients(
    server: Server,
    runnable: list[int],
    per_client: int,
    deflate: bool,
    slow: float,
    pin_client: list[str],
    log: IO[bytes],
) -> list[tuple[subprocess.Popen[bytes], LineReader]]:
    """Enough idle-mode load generators for the largest step, each opening its share of
    every step when told ``next``."""
    nclients = math.ceil(runnable[-1] / per_client)
    clients = []
    for k in range(nclients):
        share = [n // nclients + (k < n % nclients) for n in runnable]
        argv = [
            *pin_client,
            str(LOADGEN),
            "--mode",
            "idle",
            "--host",
            HOST,
            "--port",
            str(server.port),
            "--path",
            "/echo/",
            "--steps",
            ",".join(str(n) for n in share),
            "--src",
            ",".join(SOURCES),
            "--connect-concurrency",
            "500",
            "--connect-timeout",
            str(round(300 * slow)),
            "--probe-timeout",
            str(round(120 * slow)),
            *(["--deflate"] if deflate else []),
        ]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=raise_nofile,
        )
        clients.append((process, LineReader(process)))
    return clients


def _tell(clients: list[tuple[subprocess.Popen[bytes], LineReader]], command: bytes) -> None:
    for process, _ in clients:
        assert process.stdin is not None
        process.stdin.write(command)
        process.stdin.flush()


def _idle_step(
    target: int,
    clients: list[tuple[subprocess.Popen[bytes], LineReader]],
    server: Server,
    slow: float,
    baseline: int,
    prev_rss: int,
    prev_open: int,
) -> dict[str, Any] | str:
    """One step: wait until the clients opened their share, RSS idle, probe every
    connection, RSS again. The step's figures, or what went wrong."""
    opened = [reader.line(330 * slow) for _, reader in clients]
    if any(o is None for o in opened):
        return f"no report from the load generator at {target}"
    time.sleep(2)  # let the server settle (greenlets parked, buffers freed)
    rss_idle = server.rss()
    _tell(clients, b"probe\n")
    probed = [reader.line(150 * slow) for _, reader in clients]
    if any(p is None for p in probed):
        return f"no probe report from the load generator at {target}"
    time.sleep(1)
    rss_after = server.rss()
    n_open = sum(o["open"] for o in opened)  # type: ignore[index]
    answered = sum(p["answered"] for p in probed)  # type: ignore[index]
    return {
        "target": target,
        "open": n_open,
        "failed": sum(o["failed"] for o in opened),  # type: ignore[index]
        "deflate_negotiated": sum(o["deflate"] for o in opened),  # type: ignore[index]
        "open_seconds": max(o["seconds"] for o in opened),  # type: ignore[index]
        "answered": answered,
        "still_open": sum(p["open"] for p in probed),  # type: ignore[index]
        "probe_seconds": max(p["seconds"] for p in probed),  # type: ignore[index]
        "probe_p99_ms": round(max(p["p99_us"] for p in probed) / 1000, 1),  # type: ignore[index]
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_after_probe_mb": round(rss_after / 2**20, 1),
        "rss_baseline": baseline,
        "rss_idle": rss_idle,
        "rss_after_probe": rss_after,
        # Marginal: what each connection opened by this step added, idle.
        "kb_per_conn_idle": round((rss_idle - prev_rss) / 1024 / max(n_open - prev_open, 1), 1),
        # All connections open so far, each having exchanged a message.
        "kb_per_conn_after_probe": round((rss_after - baseline) / 1024 / max(n_open, 1), 1),
        "all_answered": n_open == target and answered == target,
        "errors": sorted({o["error"] for o in opened + probed if o["error"]}),  # type: ignore[index]
    }


def run_idle(
    stack: Stack,
    steps: list[int],
    deflate: bool,
    pin_server: list[str],
    pin_client: list[str],
    log_path: Path,
    slow: float = 1.0,
) -> dict[str, Any]:
    """Open connections step by step on one server process; at each step record RSS,
    probe every connection, record RSS again. ``slow`` multiplies every wait (a guest
    under emulation is that many times slower)."""
    limit, runnable, skipped = _idle_plan(steps)
    outcome: dict[str, Any] = {
        "stack": stack.name,
        "deflate": deflate,
        "nofile_limit": limit,
        "steps": [],
        "skipped": [
            {
                "target": n,
                "reason": f"RLIMIT_NOFILE hard limit is {limit} per process "
                "(raising it needs CAP_SYS_RESOURCE, which this machine does not grant)",
            }
            for n in skipped
        ],
    }
    if slow > 1:
        # dwebsocket pings a connection after WEBSOCKET_PING_INTERVAL of silence and drops
        # it WEBSOCKET_PING_TIMEOUT later without a pong: in a guest `slow` times slower,
        # 100,000 connections would cost it `slow` times the keepalive traffic they cost
        # the host (and its late event loop would drop live peers).
        keepalive = {k: DEFAULTS[k] * slow for k in KEEPALIVE}
        outcome["keepalive_s"] = keepalive["WEBSOCKET_PING_INTERVAL"]
        stack = dataclasses.replace(
            stack, env={**stack.env, "DWEBSOCKET_BENCH_SETTINGS": json.dumps(keepalive)}
        )
    with running(stack, log_path, pin_server) as server, open(log_path, "ab") as log:
        problem = check_stack(server, pin_client, log)
        if problem:
            outcome["error"] = problem
            return outcome
        time.sleep(1)
        baseline = server.rss()
        outcome["baseline_rss_mb"] = round(baseline / 2**20, 1)
        # Steps are cumulative: the connections of earlier steps have already exchanged a
        # message when the next step opens more, so the idle figure is the marginal cost
        # of the connections this step added.
        prev_rss, prev_open = baseline, 0
        clients = _idle_clients(
            server, runnable, max(1, limit - 64), deflate, slow, pin_client, log
        )
        try:
            for target in runnable:
                step = _idle_step(target, clients, server, slow, baseline, prev_rss, prev_open)
                if isinstance(step, str):
                    outcome["error"] = step
                    break
                outcome["steps"].append(step)
                prev_rss, prev_open = step["rss_after_probe"], step["open"]
                print(
                    f"    idle {'deflate' if deflate else 'plain  '} {target:>6}: "
                    f"open {step['open']}, answered {step['answered']}, "
                    f"{step['kb_per_conn_idle']} KiB/conn idle, "
                    f"{step['kb_per_conn_after_probe']} KiB/conn after one message",
                    flush=True,
                )
                _tell(clients, b"next\n")
        finally:
            for process, _ in clients:
                with contextlib.suppress(OSError):
                    assert process.stdin is not None
                    process.stdin.write(b"quit\n")
                    process.stdin.close()
            for process, reader in clients:
                _stop_child(process, 30)
                reader.close()
    return outcome


# -- idle connections in a guest ---------------------------------------------------------

VM_RUN = BENCH / "vm" / "run.py"
VM_OUT = OUT / "vm"
#: Per backend of bench/vm/run.py: how many times slower than the host its handshakes
#: are (the idle waits are stretched that much), and the guest's wall-clock bound.
#: (Measured under UML, keepalive stretched as run_idle does: 100,000 connections opened
#: in 290-335 s against about 50 s on the host, probes 5-10 times slower; without the
#: stretch, keepalive pings took the whole vCPU past 50,000. 20 leaves a wide margin.)
GUEST_SLOWNESS = {"kvm": (1.0, 1800), "uml": (20.0, 5 * 3600), "tcg": (30.0, 6 * 3600)}
#: The guest's memory: 100,000 connections with deflate state cost the server ~7 GiB.
GUEST_MEMORY = "18G"
IN_GUEST = os.environ.get("DWEBSOCKET_BENCH_GUEST") == "1"


def idle_needs_guest(steps: list[int], mode: str) -> bool:
    """Whether the idle steps are to run in a guest (``bench/vm/run.py``): ``mode``
    always/never, or auto: when this process's RLIMIT_NOFILE hard limit cannot hold the
    largest step (with FD_MARGIN). Never inside a guest."""
    if IN_GUEST or mode == "never":
        return False
    return mode == "always" or nofile_hard() - FD_MARGIN < max(steps)


def guest_backend(wanted: str = "auto") -> tuple[str | None, str]:
    """(backend bench/vm/run.py would use, ``wanted`` or its own choice, or None; its
    answer). Blocks up to 60 s."""
    check = subprocess.run(
        [PY, str(VM_RUN), "--backend", wanted, "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    answer = check.stdout.strip()
    return (answer if check.returncode == 0 and answer in GUEST_SLOWNESS else None), answer


def _stop_guest(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to bench/vm/run.py (which then stops its guest and puts back what it
    changed on the host), SIGKILL if it is still there after a minute."""
    if process.poll() is None:
        process.terminate()
        _stop_child(process, 60)


def run_idle_in_guest(steps: list[int], no_pin: bool, wanted: str = "auto") -> dict[str, Any]:
    """This script's idle part (``--idle-only``) in a guest whose root can raise
    RLIMIT_NOFILE: returns {"idle": its run_idle outcomes, "guest": what the guest was
    and why it was used}. One guest runs both deflate settings, one after the other (two
    UML guests at once, one per setting, made each so slow that 100,000 connections did
    not open within 20 minutes). Blocks for the guest's run (bounded by GUEST_SLOWNESS;
    it is stopped past it, or on any exception); raises RuntimeError if it produced no
    results. ``wanted``: bench/vm/run.py's backend (auto: its own choice, then tcg if
    that was User-Mode Linux and it could not boot on this CPU)."""
    backend, answer = guest_backend(wanted)
    if backend is None:
        raise RuntimeError(f"no guest can run here: {answer}")
    slow, timeout = GUEST_SLOWNESS[backend]
    results, info = VM_OUT / "results", VM_OUT / "guest.json"
    for stale in (results / "results.json", info):
        stale.unlink(missing_ok=True)
    argv = [
        PY,
        str(VM_RUN),
        "--backend",
        backend,
        "--timeout",
        str(timeout),
        "--memory",
        GUEST_MEMORY,
        "--info",
        str(info),
        "--console-log",
        str(VM_OUT / "console.log"),
        "--rw",
        str(OUT),
        "--",
        PY,
        str(Path(__file__).resolve()),
        "--idle-only",
        "--idle-steps",
        ",".join(map(str, steps)),
        "--idle-slow",
        str(slow),
        "--out",
        str(results),
        *(["--no-pin"] if no_pin else []),
    ]
    print(f"idle connections in a {backend} guest: {' '.join(argv[2:])}", flush=True)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        process.wait(timeout + 600)
    finally:
        _stop_guest(process)
    if not (results / "results.json").exists():
        why = json.loads(info.read_text()).get("why_not", "") if info.exists() else ""
        if wanted == "auto" and backend == "uml" and why == UML_XSTATE_WHY:
            # --check cannot see this without booting it: the steps go to software
            # emulation, the one guest left (under an hour for 100,000 on a 2-core host).
            print(f"{why}: the idle steps in a tcg guest instead", flush=True)
            return run_idle_in_guest(steps, no_pin, "tcg")
        raise RuntimeError(
            f"the guest wrote no {results.name}/results.json (bench/vm/run.py exit "
            f"{process.returncode}; see {VM_OUT.relative_to(REPO)}/){why and ': ' + why}"
        )
    guest_run = json.loads((results / "results.json").read_text())
    about = json.loads(info.read_text()) if info.exists() else {"backend": backend}
    about.update(
        machine=guest_run["machine"],
        host_nofile_hard=nofile_hard(),
        reason=f"the host's RLIMIT_NOFILE hard limit is {nofile_hard():,} per process, "
        "and raising it needs CAP_SYS_RESOURCE, which this machine does not grant",
        slow_factor=slow,
        results=str(results.relative_to(REPO)),
        minutes=guest_run["minutes"],
    )
    return {"idle": guest_run["idle"], "guest": about}


# -- the run ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in [
        "Django",
        "gevent",
        "gunicorn",
        "uWSGI",
        "websockets",
        "channels",
        "daphne",
        "uvicorn",
        "uvloop",
        "picows",
        "gevent-websocket",
        "autobahn",
        "Twisted",
    ]:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "nofile_hard": nofile_hard(),
        "commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, short runs, small idle")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--stacks", default=",".join(STACKS), help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--idle-steps", default=None, help="e.g. 10000,50000,100000")
    parser.add_argument("--no-idle", action="store_true")
    parser.add_argument("--idle-only", action="store_true")
    parser.add_argument(
        "--idle-guest",
        choices=["auto", "always", "never"],
        default="auto",
        help="run the idle steps in a guest (bench/vm/run.py); auto: when this "
        "process's RLIMIT_NOFILE cannot hold the largest step",
    )
    parser.add_argument(
        "--guest-backend",
        choices=["auto", *GUEST_SLOWNESS],
        default="auto",
        help="bench/vm/run.py's backend for the guest; auto: kvm, else uml, and tcg "
        "(software emulation, ~30x slower) where User-Mode Linux cannot boot on the CPU",
    )
    parser.add_argument("--idle-slow", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--baseline",
        default=None,
        help="another checkout (with its C extensions built) to measure side by side, "
        "echo and idle on the host: a before/after in one run",
    )
    parser.add_argument("--out", default=str(RESULTS), help="where results.* and *.png go")
    args = parser.parse_args()

    rounds = args.rounds or (1 if args.quick else 3)
    warmup, duration = (0.5, 1.5) if args.quick else (1.0, 5.0)
    warm = 1.0 if args.quick else 3.0  # per server process, before its first scenario
    idle_steps = [
        int(n)
        for n in (args.idle_steps or ("1000,2000" if args.quick else "10000,50000,100000")).split(
            ","
        )
    ]
    stacks = [STACKS[name] for name in args.stacks.split(",") if name]
    baseline = baseline_stack(Path(args.baseline).resolve()) if args.baseline else None
    if baseline is not None:  # right after ours, so that each round interleaves the two
        at = next((i + 1 for i, s in enumerate(stacks) if s.name == OURS), len(stacks))
        stacks.insert(at, baseline)
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",") if name]
    pin_server, pin_client = ([], []) if args.no_pin else pinning()
    out = Path(args.out)

    build_loadgen()
    write_payloads()
    OUT.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    run: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "quick": args.quick,
        "rounds": rounds,
        "warmup_s": warmup,
        "server_warm_s": warm,
        "duration_s": duration,
        "pinning": {
            "server": " ".join(pin_server) or "none",
            "loadgen": " ".join(pin_client) or "none",
        },
        "load_before": os.getloadavg(),
        "machine": machine(),
        "versions": versions(),
        "stacks": {s.name: {"label": s.label, "ours": s.ours} for s in stacks},
        "scenarios": {s.name: dataclasses.asdict(s) | {"path": s.path} for s in scenarios},
        "echo": [],
        "unavailable": {},
        "idle": [],
    }
    print(
        f"load average before: {run['load_before']}; pinning server={run['pinning']['server']} "
        f"loadgen={run['pinning']['loadgen']}",
        flush=True,
    )

    if not args.idle_only:
        for round_no in range(1, rounds + 1):
            for stack in stacks:
                why = stack.unavailable()
                if why:
                    run["unavailable"][stack.name] = why
                    continue
                log_path = OUT / f"{stack.name}.log"
                print(f"round {round_no}/{rounds}: {stack.name}", flush=True)
                try:
                    with (
                        running(stack, log_path, pin_server) as server,
                        open(OUT / "loadgen.log", "ab") as log,
                    ):
                        problem = check_stack(server, pin_client, log, warm=warm)
                        if problem:
                            run["unavailable"][stack.name] = problem
                            print(f"  unavailable: {problem}", flush=True)
                            continue
                        for scenario in scenarios:
                            result = run_echo(server, scenario, warmup, duration, pin_client, log)
                            result.update(
                                round=round_no,
                                stack=stack.name,
                                scenario=scenario.name,
                                load=os.getloadavg()[0],
                            )
                            run["echo"].append(result)
                            print(
                                f"  {scenario.name:22} "
                                f"{result.get('msgs_per_s', 0):>10.0f} msg/s "
                                f"{result.get('mb_per_s', 0):>8.1f} MB/s "
                                f"p99 {result.get('p99_us', 0) / 1000:>7.2f} ms "
                                f"server {result.get('server_cpu_pct', 0):>5.1f}% "
                                f"client {result.get('client_cpu_pct', 0):>5.1f}% "
                                f"deflate {result.get('deflate', 0)} {result.get('error', '')}",
                                flush=True,
                            )
                except RuntimeError as exc:
                    run["unavailable"][stack.name] = str(exc)
                    print(f"  {exc}", flush=True)

    idle_in_guest = False
    if (
        not args.no_idle
        and STACKS[OURS] in stacks
        and idle_needs_guest(idle_steps, args.idle_guest)
    ):
        try:
            guest = run_idle_in_guest(idle_steps, args.no_pin, args.guest_backend)
            run["idle"], run["idle_guest"] = guest["idle"], guest["guest"]
            idle_in_guest = True
        except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
            # The host's own run, as far as its limit goes.
            run["idle_guest"] = {"error": str(exc)}
            print(f"idle connections: no guest ({exc}); on the host", flush=True)
    idle_stacks = [STACKS[OURS]] if not idle_in_guest else []
    if baseline is not None:  # on the host, interleaved with ours
        idle_stacks.append(baseline)
    if not args.no_idle and STACKS[OURS] in stacks:
        for deflate in (False, True):
            for stack in idle_stacks:
                print(
                    f"idle connections, {stack.name}, "
                    f"deflate {'offered' if deflate else 'not offered'}",
                    flush=True,
                )
                try:
                    run["idle"].append(
                        run_idle(
                            stack,
                            idle_steps,
                            deflate,
                            pin_server,
                            pin_client,
                            OUT / f"{stack.name}-idle.log",
                            slow=args.idle_slow,
                        )
                    )
                except RuntimeError as exc:
                    run["idle"].append({"stack": stack.name, "deflate": deflate, "error": str(exc)})

    run["load_after"] = os.getloadavg()
    run["minutes"] = round((time.time() - started) / 60, 1)
    (out / "results.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"done in {run['minutes']} min; load average after: {run['load_after']}", flush=True)

    sys.path.insert(0, str(BENCH))
    import report

    report.write(run, out)


if __name__ == "__main__":
    main()
