"""What group history costs, and how fast a client recovers (issue 19).

    .venv/bin/python bench/history.py            # the published run (under a minute)
    .venv/bin/python bench/history.py --quick    # a smoke run (seconds), printed only

One private redis-server, one gevent server of the test project (``tests/``) with
``WEBSOCKET_GROUPS_URL`` on it, ``MEMBERS`` members of two groups that differ only in
keeping history (``plain``, ``kept``: ``WEBSOCKET_GROUPS_HISTORY``), raw sockets read by
a process of their own. A task worker (this process, the Redis layer) publishes.

The processes are pinned: the sender and redis-server share the first core, the server
and the members' reader the second (on a machine with at least two). Unpinned, on two
cores, which processes the scheduler put together decided a round's rate more than
history did: the ratio below moved between 0.66 and 1.45 from one run to the next
(bench/FINDINGS.md, section 16); pinned, by a percent or two.

- **publish**: ``COUNT`` messages of 32 bytes sent one after the other as fast as
  ``groups.send`` returns, to ``plain`` then to ``kept``, alternating for ``ROUNDS``
  rounds; messages per second sent (the sender's view) and delivered (until every member
  has the last one). The goal: with history at most 15 % slower.
- **Redis's CPU** per message, off and on, from ``INFO commandstats``: the part of the
  cost that the machine's load does not change.
- **CPU per message of each process** (the server, redis-server, the sender, the members'
  reader), off and on, from their CPU times over each round: where the difference goes.
  On a machine with fewer cores than busy processes, a process that costs more per message
  slows the others too, and a server that gets messages more slowly gets smaller batches.
- **recovery**: a ``dwebsocket.client.ReconnectingClient`` goes away, 1,000 messages are
  published, it connects again with its last position: the time from ``connect()`` to
  its 1,000th message (handshake, join, history read, replay), ``ROUNDS`` times.

Medians (and the extremes) go to ``docs/benchmarks/history.json``, which
``docs/recovery.rst`` quotes (``tests/docs/test_recovery_numbers.py`` checks it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from django.test import override_settings  # noqa: E402

from dwebsocket.client import ReconnectingClient  # noqa: E402
from dwebsocket.groups.memory import Registry  # noqa: E402
from dwebsocket.groups.redis import RedisLayer  # noqa: E402
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response  # noqa: E402
from tests.groups.redis_server import REDIS_SERVER, RedisServer  # noqa: E402
from tests.servers import ServerProcess, start_server  # noqa: E402

HISTORY = {"kept": {"size": 1_000_000, "ttl": 3600}, "recover": {"size": 10_000, "ttl": 3600}}
PAYLOAD = "x" * 32
FRAME = 2 + len(PAYLOAD)  # what a member receives per message (text frame, short)
WAIT = 120.0
MISSED = 1000


class Members:
    """``count`` members of ``group`` on raw sockets, read by a process of their own (not a
    thread of this one: the sender's loop would share its GIL with the reads, and measure
    them too); its counts of the bytes each member received are shared memory."""

    def __init__(self, server: ServerProcess, group: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.received = context.Array("q", count, lock=False)
        self._base = [0] * count
        ready, told = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_drain,
            args=(server.host, server.port, f"/group/{group}/", self.received, told),
            daemon=True,
        )
        self._process.start()
        if not ready.poll(WAIT):
            self.close()
            raise TimeoutError(f"{count} members of {group!r} not joined in {WAIT} s")
        ready.recv()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def wait_all(self, messages: int, deadline: float) -> None:
        """Until every member has received ``messages`` more (since :meth:`reset`)."""
        while True:
            now = self.received[:]
            least = min(now[n] - self._base[n] for n in range(len(now)))
            if least >= messages * FRAME:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"a member got {least // FRAME} of {messages}")
            time.sleep(0.0005)

    def reset(self) -> None:
        self._base = list(self.received[:])

    def close(self) -> None:
        self._process.terminate()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def _drain(host: str, port: int, path: str, received: Any, ready: Any) -> None:
    """The members' process: join them all, say so, then count what each receives until
    the server closes them (or the process is stopped)."""
    sockets = [_member(host, port, path) for _ in range(len(received))]
    selector = selectors.DefaultSelector()
    for n, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, n)
    ready.send(True)
    while selector.get_map():
        for key, _ in selector.select(0.05):
            try:
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                selector.unregister(key.fileobj)
            received[key.data] += len(data)


def _member(host: str, port: int, path: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=WAIT)
    key = generate_key()
    sock.sendall(build_request(f"{host}:{port}", path, key=key))
    data = b""
    while (parsed := parse_response(data, key)) is None:
        data += sock.recv(4096)
    data = data[parsed[2] :]
    while len(data) < 8:  # "joined"
        data += sock.recv(4096)
    return sock


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pids: list[int], cpu: int) -> None:
    """Every thread of each of ``pids`` onto CPU ``cpu`` (threads they start later inherit
    it)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), {cpu})


def publish_round(
    layer: RedisLayer, members: Members, group: str, count: int, pids: dict[str, int]
) -> dict[str, float]:
    """Rates, and the CPU µs per message of each of ``pids`` over the round."""
    members.reset()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    for _ in range(count):
        layer.send(group, PAYLOAD, fail_silently=False)
    sent = time.monotonic()
    members.wait_all(count, sent + WAIT)
    done = time.monotonic()
    result = {"sent_per_s": count / (sent - started), "delivered_per_s": count / (done - started)}
    for name, pid in pids.items():
        result[f"cpu_us_{name}"] = (cpu_seconds(pid) - before[name]) / count * 1e6
    return result


def recovery_round(layer: RedisLayer, server: ServerProcess) -> float:
    """Seconds from ``connect()`` to the last of ``MISSED`` messages recovered."""
    url = server.url("/group/recover/follow/")
    client = ReconnectingClient(url).connect(WAIT)
    client.recv(WAIT)  # the view's report: its join is done
    layer.send("recover", "seen", fail_silently=False)
    while client.recv(WAIT).group is None:
        pass
    positions = dict(client.positions)
    client.close()
    for i in range(MISSED):
        layer.send("recover", f"{PAYLOAD}{i}", fail_silently=False)
    started = time.monotonic()
    again = ReconnectingClient(url, positions=positions).connect(WAIT)
    got = 0
    while got < MISSED:
        if again.recv(WAIT).group is not None:
            got += 1
    elapsed = time.monotonic() - started
    again.close()
    return elapsed


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "history.json")
    args = parser.parse_args()
    if args.quick:
        args.members, args.count, args.rounds = min(args.members, 5), min(args.count, 200), 2

    redis = RedisServer()
    redis.start()
    workdir = tempfile.TemporaryDirectory(prefix="bench-history-")
    server = start_server(
        "gevent",
        Path(workdir.name) / "server.log",
        settings={
            "WEBSOCKET_GROUPS_URL": redis.url,
            "WEBSOCKET_GROUPS_HISTORY": HISTORY,
            # One process reads every member: one that falls behind a burst must not be
            # closed (1008) and so stop counting.
            "WEBSOCKET_SEND_QUEUE_SIZE": 256 * 1024 * 1024,
            "WEBSOCKET_PING_INTERVAL": None,  # the raw members do not answer pings
            "LOGGING": {"version": 1},
        },
    )
    try:
        with override_settings(WEBSOCKET_GROUPS_HISTORY=HISTORY):
            layer = RedisLayer(redis.url, Registry())
            plain = Members(server, "plain", args.members)
            kept = Members(server, "kept", args.members)
            assert redis.process is not None
            pids = {
                "server": server.process.pid,
                "redis": redis.process.pid,
                "sender": os.getpid(),
            }
            readers = {"plain": plain.pid, "kept": kept.pid}
            cpus = sorted(os.sched_getaffinity(0))
            pinned = len(cpus) >= 2
            if pinned:
                pin([redis.process.pid, os.getpid()], cpus[0])
                pin([server.process.pid, plain.pid, kept.pid], cpus[1])
            try:
                runs: dict[str, list[dict[str, float]]] = {"plain": [], "kept": []}
                for n in range(args.rounds + 1):  # the first warms both up
                    for group, members in (("plain", plain), ("kept", kept)):
                        both = {**pids, "members": readers[group]}
                        run = publish_round(layer, members, group, args.count, both)
                        if n:
                            runs[group].append(run)
                recovery = [recovery_round(layer, server) for _ in range(args.rounds)]
                redis_cost = redis_usec_per_message(redis.url)
            finally:
                plain.close()
                kept.close()
                layer.close()
    finally:
        server.stop()
        redis.close()
        workdir.cleanup()

    result: dict[str, Any] = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "redis": redis_version(),
        "members": args.members,
        "count": args.count,
        "rounds": args.rounds,
        "missed": MISSED,
        "pinned": pinned,
    }
    for name in ("sent_per_s", "delivered_per_s"):
        off = [r[name] for r in runs["plain"]]
        on = [r[name] for r in runs["kept"]]
        result[name] = {
            "off": summary(off),
            "on": summary(on),
            "ratio": round(statistics.median(on) / statistics.median(off), 3),
        }
    result["cpu_us_per_message"] = {
        name: {
            "off": round(statistics.median(r[f"cpu_us_{name}"] for r in runs["plain"]), 1),
            "on": round(statistics.median(r[f"cpu_us_{name}"] for r in runs["kept"]), 1),
        }
        for name in ("server", "redis", "sender", "members")
    }
    for side, group in (("off", "plain"), ("on", "kept")):
        total = statistics.median(
            sum(r[f"cpu_us_{name}"] for name in ("server", "redis", "sender", "members"))
            for r in runs[group]
        )
        result["cpu_us_per_message"].setdefault("all", {})[side] = round(total, 1)
    result["recovery_s"] = summary(recovery)
    result["redis_usec_per_message"] = redis_cost
    text = json.dumps(result, indent=2) + "\n"
    print(text)
    if not args.quick:
        args.out.write_text(text)
        print(f"wrote {args.out}")


def redis_usec_per_message(url: str) -> dict[str, float]:
    """What one message costs Redis's CPU, from its own accounting (``INFO commandstats``),
    which the machine's load does not skew as it does the rates: a PUBLISH without
    history, the script that keeps and publishes with it (the PUBLISH inside included)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    off = float(stats["cmdstat_publish"]["usec_per_call"])
    on = float(stats["cmdstat_evalsha"]["usec_per_call"])
    return {"off": off, "on": on, "ratio": round(off / on, 3)}


def redis_version() -> str:
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    return out.split()[2].removeprefix("v=") if out else "?"


if __name__ == "__main__":
    main()
