"""Groups over one Redis node vs a 3-master Redis Cluster (sharded pub/sub).

    .venv/bin/python bench/cluster.py                 # everything, ~15 min (make bench-cluster)
    .venv/bin/python bench/cluster.py --quick         # a smoke run

Three measurements, the first two over both topologies (a private redis-server; a private
cluster of 3 masters and 3 replicas from ``tests/groups/redis_cluster.py``):

fan-out latency
    ``bench/fanout.py``'s run, unchanged: one group of 1,000 or 10,000 WebSocket members
    over 4 gevent server processes, held by 4 C client processes; the time from just
    before one ``groups.send()`` in a separate process until the last member has it.
publish throughput, and what each process receives that it does not need
    ``--groups`` groups (spread over the cluster's slots), their 1,000 or 10,000 members
    spread over ``--receivers`` processes so that each group has all its members in one
    process; ``--senders`` processes call ``groups.send()`` round-robin over the groups for
    ``--seconds``. Reported: messages published per second (all senders), member
    deliveries per second, and per receiving process the messages Redis sent it and how
    many of them had a member there. The same run measures the design where every
    process subscribes to one channel for all groups (python-socketio's Redis manager
    works so): the processes receive every message, ``--receivers`` times the published
    rate in all.

failover
    ``--failovers`` times each: a master of a Redis Cluster (the one serving the group),
    or the master Sentinels watch (a master, a replica, 3 Sentinels), is killed with
    SIGKILL under a group whose sender and member are in two layers: the seconds until
    the replica was promoted, and from then until a message reached the member again.

The members of the second measurement are objects in the receiving processes (what the
layer delivers to; the WebSocket writes are the first measurement's). On a machine with
fewer CPUs than Redis processes, a cluster cannot be faster than one node: it is measured
all the same, as it runs here. Writes ``docs/benchmarks/cluster.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

SELF = str(Path(__file__).resolve())
REPO = Path(SELF).parent.parent
RESULTS = REPO / "docs" / "benchmarks" / "cluster.json"
PY = sys.executable
TIMEOUT = 300.0
sys.path.insert(0, str(REPO))


def _groups_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fanout", REPO / "bench" / "fanout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the processes of the throughput run ------------------------------------------------------


def _django(url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(INSTALLED_APPS=["dwebsocket"], USE_TZ=True, WEBSOCKET_GROUPS_URL=url)
    django.setup()


class Counter:
    """A member: counts what it is given."""

    delivered = 0

    def deliver(self, message: object) -> None:
        Counter.delivered += 1

    def is_closed(self) -> bool:
        return False


def receiver(url: str, groups: list[str], members: int) -> None:
    """Members of ``groups`` (``members`` each) in this process; on "stats", print what
    the layer received and delivered."""
    _django(url)
    from dwebsocket import groups as api

    layer: Any = api.get_layer()
    received = needed = 0
    original = layer.receive

    def counting(channel: bytes, data: bytes) -> None:
        nonlocal received, needed
        received += 1
        group = layer.group(channel)
        needed += group is not None and group in layer.registry
        original(channel, data)

    layer.receive = counting
    kept = [Counter() for _ in range(members * len(groups))]
    for n, group in enumerate(groups):
        for member in kept[n * members : (n + 1) * members]:
            api.join(group, member)  # type: ignore[arg-type]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            stats = {"received": received, "needed": needed, "delivered": Counter.delivered}
            print(json.dumps(stats), flush=True)


def broadcast_receiver(url: str) -> None:
    """The one-channel design: subscribe to one channel, receive and decode everything."""
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe("all-groups")
    pubsub.get_message(timeout=5)
    print(json.dumps({"ready": True}), flush=True)
    received = 0
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        message = pubsub.get_message(timeout=0.01)
        while message is not None:
            if message["type"] == "message":
                received += 1
                json.loads(message["data"])  # decode it, as such a layer must
            message = pubsub.get_message()
        if selector.select(0):
            line = sys.stdin.readline()
            if not line:
                return
            if line.strip() == "stats":
                print(json.dumps({"received": received, "needed": 0, "delivered": 0}), flush=True)


def sender(url: str, groups: list[str], seconds: float, broadcast: bool) -> None:
    """``groups.send()`` round-robin over ``groups`` for ``seconds``; print the count."""
    if broadcast:
        import redis

        client = redis.Redis.from_url(url)

        def send(group: str, text: str) -> None:
            client.publish("all-groups", json.dumps({"group": group, "text": text}))
    else:
        _django(url)
        from dwebsocket import groups as api

        api.get_layer()

        def send(group: str, text: str) -> None:
            api.send(group, text, fail_silently=False)

    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        for group in groups:
            send(group, "x" * 32)
        sent += len(groups)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - started}), flush=True)
    sys.stdin.read()  # until told to go: an ended sender would end the reading of the others


# -- the runs ---------------------------------------------------------------------------------


def throughput(
    bench: ModuleType, url: str, design: str, members: int, args: argparse.Namespace
) -> dict[str, Any]:
    processes = bench.Processes()
    names = [f"g{n}" for n in range(args.groups)]
    per_group = max(1, members // args.groups)
    started = []
    try:
        receivers = []
        for r in range(args.receivers):
            mine = names[r :: args.receivers]
            argv = [PY, SELF, "--receiver", url, str(per_group), *mine]
            if design == "one channel":
                argv = [PY, SELF, "--broadcast-receiver", url]
            receivers.append(
                processes.start(
                    argv, bench.OUT / f"cluster-receiver{r}.log", stdin=True, stdout=True
                )
            )
        senders = []
        for s in range(args.senders):
            argv = [PY, SELF, "--sender", url, str(args.seconds), *names[s:] + names[:s]]
            if design == "one channel":
                argv.insert(3, "--one-channel")
            senders.append(
                processes.start(argv, bench.OUT / f"cluster-sender{s}.log", stdin=True, stdout=True)
            )
        started = receivers + senders
        lines = bench.Lines(started)
        ready = 0
        for _process, line in lines.read(TIMEOUT):
            ready += "ready" in line
            if ready == len(started):
                break
        for process in senders:
            process.stdin.write(b"go\n")
            process.stdin.flush()
        results = {}
        for process, line in lines.read(args.seconds + TIMEOUT):
            if "sent" in line:
                results[process.pid] = line
                if len(results) == len(senders):
                    break
        time.sleep(1.0)  # what is in flight arrives
        for process in receivers:
            process.stdin.write(b"stats\n")
            process.stdin.flush()
        stats = {}
        for process, line in lines.read(TIMEOUT):
            if "received" in line:
                stats[process.pid] = line
                if len(stats) == len(receivers):
                    break
        lines.close()
        sent = sum(r["sent"] for r in results.values())
        seconds = max(r["seconds"] for r in results.values())
        per_process = [stats[p.pid] for p in receivers]
        return {
            "design": design,
            "members": per_group * args.groups,
            "groups": args.groups,
            "published": sent,
            "seconds": seconds,
            "published_per_s": sent / seconds,
            "delivered_per_s": sum(s["delivered"] for s in per_process) / seconds,
            "receivers": per_process,
            "received": sum(s["received"] for s in per_process),
            "unneeded": sum(s["received"] - s["needed"] for s in per_process),
        }
    finally:
        for process in reversed(started):
            processes.stop(process)


class Inbox:
    """A member that keeps what it is given, for the failover run."""

    def __init__(self) -> None:
        import queue

        self.messages: queue.Queue[object] = queue.Queue()

    def deliver(self, message: object) -> None:
        self.messages.put(message)

    def is_closed(self) -> bool:
        return False


def failover(kind: str) -> dict[str, float]:
    """Kill the master serving a group (SIGKILL) under two layers (processes, as far as
    the layer knows); how long until the replica was promoted, and until a message sent
    from one layer reached a member in the other again."""
    import queue

    from dwebsocket.groups.memory import Registry
    from dwebsocket.groups.redis import RedisLayer
    from tests.groups.redis_cluster import RedisCluster, RedisSentinels

    setup: Any = RedisCluster() if kind == "cluster" else RedisSentinels()
    setup.start()
    options = "?socket_timeout=1&socket_connect_timeout=1"
    a, b = RedisLayer(setup.url + options, Registry()), RedisLayer(setup.url + options, Registry())
    try:
        member = Inbox()
        b.join("room", member)  # type: ignore[arg-type]
        a.send("room", "before")
        member.messages.get(timeout=10)
        killed = time.monotonic()
        if kind == "cluster":
            setup.kill(setup.owner(setup.keyslot(a.channel("room").decode())))
        else:
            setup.kill_master()
        promoted = time.monotonic()
        while True:
            assert time.monotonic() - killed < 60, "delivery did not resume"
            a.send("room", "probe")
            with contextlib.suppress(queue.Empty):
                member.messages.get(timeout=0.05)
                break
        resumed = time.monotonic()
    finally:
        a.close()
        b.close()
        setup.close()
    return {"promoted_s": promoted - killed, "resumed_after_promotion_s": resumed - promoted}


@contextlib.contextmanager
def topology(name: str, bench: ModuleType, processes: Any, workdir: str) -> Any:
    if name == "node":
        url, _port = bench.start_redis(processes, workdir)
        yield url
        return
    from tests.groups.redis_cluster import RedisCluster

    cluster = RedisCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--receivers", type=int, default=4)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds per size")
    parser.add_argument("--failovers", type=int, default=5, help="failovers per topology")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seconds, args.rounds, args.failovers = "1000", 2.0, 3, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    bench = _groups_bench()
    bench.build_members()
    _soft, hard = bench.resource.getrlimit(bench.resource.RLIMIT_NOFILE)
    bench.resource.setrlimit(bench.resource.RLIMIT_NOFILE, (hard, hard))
    latency_args = argparse.Namespace(
        servers=4, clients=4, rounds=args.rounds, pause=0.3, client="c"
    )
    run: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "receivers": args.receivers,
        "senders": args.senders,
        "latency": [],
        "throughput": [],
        "failover": [],
    }
    processes = bench.Processes()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
        try:
            for name in ("node", "cluster"):
                with topology(name, bench, processes, workdir) as url:
                    print(f"{name}: {url}", flush=True)
                    for size in sizes:
                        times = bench.run_stack("dwebsocket", size, latency_args, url, processes)
                        run["latency"].append({"topology": name, "members": size, "seconds": times})
                        print(
                            f"  latency {size}: median {1000 * statistics.median(times):.1f} ms",
                            flush=True,
                        )
                        designs = ["per group"] + (["one channel"] if name == "node" else [])
                        for design in designs:
                            result = throughput(bench, url, design, size, args)
                            result["topology"] = name
                            run["throughput"].append(result)
                            print(
                                f"  throughput {size} ({design}): "
                                f"{result['published_per_s']:,.0f} published/s, "
                                f"{result['delivered_per_s']:,.0f} deliveries/s, "
                                f"received {result['received']:,}, unneeded {result['unneeded']:,}",
                                flush=True,
                            )
        finally:
            processes.stop_all()
    import django
    from django.conf import settings

    settings.configure(INSTALLED_APPS=["dwebsocket"], USE_TZ=True)
    django.setup()
    for kind in ("cluster", "sentinel"):
        for _ in range(args.failovers):
            result = failover(kind)
            run["failover"].append({"topology": kind, **result})
            print(
                f"failover ({kind}): promoted after {result['promoted_s']:.2f} s, delivery "
                f"resumed {result['resumed_after_promotion_s']:.2f} s later",
                flush=True,
            )
    run["loadavg_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--receiver":
        receiver(sys.argv[2], sys.argv[4:], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--broadcast-receiver":
        broadcast_receiver(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--sender":
        one = sys.argv[2] == "--one-channel"
        rest = sys.argv[3:] if one else sys.argv[2:]
        sender(rest[0], rest[2:], float(rest[1]), one)
    else:
        main()
