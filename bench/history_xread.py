"""The XREAD design end to end (issue 19): a kept send that only appends, with the readers
reading the stream, against a plain and today's kept send, readers on.

    .venv/bin/python bench/history_xread.py                  # 5 rounds of 20,000 a design
    .venv/bin/python bench/history_xread.py --json out.json  # the same, written there
    .venv/bin/python bench/history_xread.py --quick          # a smoke run (seconds)

One sender (this process) and a private redis-server on the first core, ``READERS``
reader processes on the second, as ``bench/history.py`` pins them. Round by round (a first
one warms up and is not counted), the sender sends ``COUNT`` messages of each design, each
waiting for its reply as ``groups.send()`` does (raw ``execute_command`` calls, not the
layer: ``bench/history_floor.py``'s sender, with readers on):

* ``publish``: a bare ``PUBLISH`` of header + payload (a group without history); the
  readers are subscribed to the channel and read as the layer's ``Subscriber`` does
  (``can_read`` / ``read_response`` batches on a redis-py connection);
* ``script``: the ``EVALSHA`` of ``dwebsocket.groups.redis.PUBLISH_SCRIPT`` with the
  layer's arguments (``RedisLayer._evalsha``), in the stream's epoch; readers subscribed;
* ``xadd``: ``XADD <stream> NOMKSTREAM MAXLEN ~ <size> <epoch>-* k <kind> d <payload> t
  <ms>`` (``t`` from the sender's clock), no Lua, no ``PUBLISH``; the readers loop on
  ``XREAD BLOCK <ms> COUNT <n> STREAMS <stream> <last id>``;
* ``xadd_expire``: the same, and a ``PEXPIRE`` of the stream every ``EXPIRE_EVERY``-th
  send (the expiry such a design still needs), the same readers;
* ``xadd_paced``: ``xadd`` with readers of their own that wait ``PAUSE`` ms after each
  reply before the next ``XREAD``: bigger batches, fewer ``XREAD`` calls, later messages;
* ``publish_alone``, ``xadd_alone``: the same ``PUBLISH`` to a channel nobody is subscribed
  to, the same ``XADD`` to a stream nobody reads: what delivering to the readers adds to
  Redis's work is ``publish`` and ``xadd`` less these.

Every payload starts with the sender's ``time.monotonic_ns()`` (the same clock in every
process on Linux): the readers take the latency of every ``SAMPLE``-th message, from the
send to its arrival in the reader.

Per design, medians over the rounds (and the extremes): sent/s (the sender's view),
delivered/s (until every reader has the last message), both as ratios to ``publish``;
CPU µs per message of redis-server, the sender and the readers (all their threads, from
``/proc/<pid>/task/*/schedstat``), Redis's own ``INFO commandstats``; the readers' batch
sizes (messages per ``read_response`` batch or per ``XREAD`` reply) and the latencies.
Nothing here is the library's code path but the script: this is evidence for a redesign
(bench/FINDINGS.md, sections 22, 24 and 29)."""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dwebsocket.groups.redis import (  # noqa: E402
    BINARY,
    HEADER,
    PUBLISH_SCRIPT,
    TEXT,
    TEXT_AT,
)

PAD = b"x" * 13  # with the 19 digits of the send time: 32 bytes, as bench/history.py's
#: What the layer passes for bench/history.py's ``kept`` group (size 1,000,000, ttl 3600 s:
#: ``RedisLayer._kept_group`` adds a second to the ttl).
SIZE, TTL = b"1000000", b"3601000"
WAIT = 60.0  # seconds: the longest any wait here lasts
SAMPLES = 1 << 16  # each reader's ring of latency samples
BUCKETS = 17  # batch sizes by powers of two: 1, 2-3, 4-7, ..., 65536 and more
SLOTS = 3  # a reader's counters: messages, batches, latency samples taken
DESIGNS = ("publish", "script", "xadd", "xadd_expire", "xadd_paced", "publish_alone", "xadd_alone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` (all its threads) has run, from the scheduler's count."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{tid}/schedstat"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(path) as stat:
            total += int(stat.read().split()[0])  # (a thread that just ended: none)
    return total


def pin(pid: int, cpu: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


# -- the readers (processes of their own, on the second core) -------------------------------


class Reader:
    """One reader process: subscribed to ``channel``, or reading ``stream`` with ``XREAD``;
    its counters (``SLOTS``), batch sizes and latency samples are shared memory."""

    def __init__(
        self,
        port: int,
        how: str,
        name: bytes,
        cpu: int | None,
        count: int,
        sample: int,
        pause: float = 0.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.counters = context.Array("q", SLOTS, lock=False)
        self.batches = context.Array("q", BUCKETS, lock=False)
        self.samples = context.Array("q", SAMPLES, lock=False)
        self.stop = context.Value("b", 0, lock=False)
        ready, told = context.Pipe(duplex=False)
        target = _subscribed if how == "subscribe" else _xread
        self._process = context.Process(
            target=target,
            args=(port, name, cpu, count, sample, self.counters, self.batches, self.samples),
            kwargs={"stop": self.stop, "ready": told}
            | ({"pause": pause} if how == "xread" else {}),
            daemon=True,
        )
        self._process.start()
        if not ready.poll(WAIT):
            self.close()
            raise TimeoutError(f"a reader of {name!r} not ready in {WAIT} s")
        ready.recv()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def snapshot(self) -> tuple[list[int], list[int]]:
        return self.counters[:], self.batches[:]

    def close(self) -> None:
        self.stop.value = 1
        self._process.join(5)  # each reader looks at stop at least every second
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def _bucket(n: int) -> int:
    return min(n.bit_length() - 1, BUCKETS - 1)


def _connect(port: int, cpu: int | None) -> redis.Connection:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    connection = redis.Connection(
        port=port, socket_timeout=WAIT, health_check_interval=0, protocol=2
    )
    connection.connect()
    return connection


def _subscribed(
    port: int,
    channel: bytes,
    cpu: int | None,
    count: int,
    sample: int,
    counters: Any,
    batches: Any,
    samples: Any,
    *,
    stop: Any,
    ready: Any,
) -> None:
    """Subscribe to ``channel``, then count what comes as ``Subscriber._serve`` reads it:
    wait, then every reply already there (up to ``count``) as one batch.

    The wait is redis-py's ``can_read``, not a ``select()`` of the socket as the layer's:
    after a full batch, what redis-py has read from the socket already would not make it
    readable, and the last messages of a burst would wait for the next one."""
    connection = _connect(port, cpu)
    connection.send_command("SUBSCRIBE", channel)
    connection.read_response()
    ready.send(True)
    received = taken = 0
    while not stop.value:
        if not connection.can_read(timeout=0.1):
            continue
        batch: list[bytes] = []
        while len(batch) < count and connection.can_read(timeout=0):
            response = connection.read_response()
            if response[0] == b"message":
                batch.append(response[2])
        if not batch:
            continue
        now = time.monotonic_ns()
        first = received
        received += len(batch)
        for i in range(-first % sample, len(batch), sample):
            data = batch[i]
            # Header (kind, origin, seq), then a kept message's position, then the payload.
            start = HEADER.size if data[0] in (TEXT, BINARY) else HEADER.size + 1 + data[17]
            samples[taken % SAMPLES] = now - int(data[start : start + 19])
            taken += 1
        batches[_bucket(len(batch))] += 1
        counters[1] += 1
        counters[2] = taken
        counters[0] = received  # last: the main process waits on it


def _xread(
    port: int,
    stream: bytes,
    cpu: int | None,
    count: int,
    sample: int,
    counters: Any,
    batches: Any,
    samples: Any,
    *,
    stop: Any,
    ready: Any,
    pause: float,
) -> None:
    """Read ``stream`` from its end with ``XREAD BLOCK 1000 COUNT <count>``, each reply a
    batch; ``pause`` seconds after each reply before the next ``XREAD`` (0: none), so that
    the next batch is bigger."""
    connection = _connect(port, cpu)
    connection.send_command("XINFO", "STREAM", stream)
    info = connection.read_response()
    last = info[info.index(b"last-generated-id") + 1]
    ready.send(True)
    received = taken = 0
    while not stop.value:
        connection.send_command("XREAD", "BLOCK", 1000, "COUNT", count, "STREAMS", stream, last)
        reply = connection.read_response()
        if not reply:
            continue  # a second without entries
        entries = reply[0][1]
        now = time.monotonic_ns()
        first = received
        received += len(entries)
        for i in range(-first % sample, len(entries), sample):
            samples[taken % SAMPLES] = now - int(entries[i][1][3][:19])
            taken += 1
        last = entries[-1][0]
        batches[_bucket(len(entries))] += 1
        counters[1] += 1
        counters[2] = taken
        counters[0] = received
        if pause:
            time.sleep(pause)


# -- the sender (this process, on the first core) --------------------------------------------


def wait_redis(port: int, server: subprocess.Popen[bytes]) -> redis.Redis:
    r = redis.Redis(port=port, socket_timeout=WAIT, protocol=2)  # as the layer's
    deadline = time.monotonic() + WAIT
    while True:
        try:
            r.ping()
            return r
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # µs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="sends per round and design")
    parser.add_argument("--rounds", type=int, default=5, help="counted (one more warms up)")
    parser.add_argument("--readers", type=int, default=2, help="reader processes per design")
    parser.add_argument("--batch", type=int, default=1000, help="XREAD COUNT, pub/sub batch")
    parser.add_argument("--expire-every", type=int, default=100, help="xadd_expire's PEXPIRE")
    parser.add_argument("--pause", type=float, default=1.0, help="xadd_paced's, in ms")
    parser.add_argument("--sample", type=int, default=8, help="latency of every n-th message")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = min(args.count, 500), 1

    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    first_cpu, other_cpu = (cpus[0], cpus[1]) if pinned else (None, None)
    load_before = os.getloadavg()
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="bench-xread-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", workdir.name]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    readers: dict[str, list[Reader]] = {}
    try:
        if first_cpu is not None:
            pin(server.pid, first_cpu)
            os.sched_setaffinity(0, {first_cpu})
        r = wait_redis(port, server)
        origin = os.urandom(8)
        sha = r.script_load(PUBLISH_SCRIPT).encode()
        # The script makes its stream (a new epoch); later sends are in that epoch: the
        # common path. The bare streams are made in the same epoch.
        first = r.execute_command(
            "EVALSHA", sha, b"1", b"kept", SIZE, TTL, b"0", b"ch-kept",
            HEADER.pack(TEXT_AT, origin, 0), b"0" * 19 + PAD, b"PUBLISH",
        )  # fmt: skip
        epoch = first.split(b":")[0]
        for stream in (b"bare", b"paced", b"alone"):
            r.xadd(stream, {"k": "1"}, id=f"{epoch.decode()}-1")

        def subscribed(channel: bytes) -> list[Reader]:
            return [
                Reader(port, "subscribe", channel, other_cpu, args.batch, args.sample)
                for _ in range(args.readers)
            ]

        readers["publish"] = subscribed(b"ch-plain")
        readers["script"] = subscribed(b"ch-kept")
        readers["xadd"] = [
            Reader(port, "xread", b"bare", other_cpu, args.batch, args.sample)
            for _ in range(args.readers)
        ]
        readers["xadd_expire"] = readers["xadd"]
        pause = args.pause / 1000
        readers["xadd_paced"] = [
            Reader(port, "xread", b"paced", other_cpu, args.batch, args.sample, pause)
            for _ in range(args.readers)
        ]
        readers["publish_alone"] = readers["xadd_alone"] = []
        if other_cpu is not None:
            for reader in {id(x): x for group in readers.values() for x in group}.values():
                pin(reader.pid, other_cpu)

        seq = iter(range(1, 1 << 62))
        bare = (b"XADD", b"bare", b"NOMKSTREAM", b"MAXLEN", b"~", SIZE)
        paced = (b"XADD", b"paced", b"NOMKSTREAM", b"MAXLEN", b"~", SIZE)
        alone = (b"XADD", b"alone", b"NOMKSTREAM", b"MAXLEN", b"~", SIZE)
        kind = HEADER.pack(TEXT_AT, origin, 0)[:1]  # what the script writes as k
        run = r.execute_command

        def publisher(channel: bytes) -> Callable[[], None]:
            def send() -> None:
                for _ in range(args.count):
                    header = HEADER.pack(TEXT, origin, next(seq))
                    run(b"PUBLISH", channel, header + b"%019d" % time.monotonic_ns() + PAD)

            return send

        def script() -> None:
            for _ in range(args.count):
                header = HEADER.pack(TEXT_AT, origin, next(seq))
                payload = b"%019d" % time.monotonic_ns() + PAD
                run(
                    b"EVALSHA", sha, b"1", b"kept", SIZE, TTL, epoch, b"ch-kept",
                    header, payload, b"PUBLISH",
                )  # fmt: skip

        def appender(command: tuple[bytes, ...], expire: int) -> Callable[[], None]:
            head = (*command, epoch + b"-*", b"k", kind, b"d")

            def send() -> None:
                for n in range(args.count):
                    payload = b"%019d" % time.monotonic_ns() + PAD
                    run(*head, payload, b"t", b"%d" % (time.time_ns() // 1_000_000))
                    if expire and n % expire == 0:
                        run(b"PEXPIRE", command[1], TTL)

            return send

        sends: dict[str, Callable[[], None]] = {
            "publish": publisher(b"ch-plain"),
            "script": script,
            "xadd": appender(bare, 0),
            "xadd_expire": appender(bare, args.expire_every),
            "xadd_paced": appender(paced, 0),
            "publish_alone": publisher(b"ch-nobody"),
            "xadd_alone": appender(alone, 0),
        }
        pids = {"redis": server.pid, "sender": os.getpid()}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in DESIGNS}
        for n in range(args.rounds + 1):  # the first warms every design up
            for name in DESIGNS:
                result = one_round(r, sends[name], readers[name], args.count, pids)
                if n:
                    runs[name].append(result)
    finally:
        for group in (
            readers.get(name, []) for name in ("publish", "script", "xadd", "xadd_paced")
        ):
            for reader in group:
                reader.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        workdir.cleanup()

    result = report(args, runs, pinned, load_before)
    text = json.dumps(result, indent=2) + "\n"
    print(text)
    print(table(result))
    if args.json:
        args.json.write_text(text)
        print(f"wrote {args.json}")


def one_round(
    r: redis.Redis,
    send: Callable[[], None],
    readers: list[Reader],
    count: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """One design's round: the rates, CPU per message, Redis's commandstats, the readers'
    batch sizes and latency samples."""
    r.config_resetstat()
    base = [reader.snapshot() for reader in readers]
    cpu = {name: cpu_ns(pid) for name, pid in pids.items()}
    cpu["readers"] = sum(cpu_ns(reader.pid) for reader in readers)
    started = time.monotonic()
    send()
    sent = time.monotonic()
    deadline = sent + WAIT
    for reader, (counters, _) in zip(readers, base, strict=True):
        while reader.counters[0] - counters[0] < count:
            if time.monotonic() > deadline:
                got = reader.counters[0] - counters[0]
                raise TimeoutError(f"a reader got {got} of {count} in {WAIT} s")
            time.sleep(0.0002)
    done = time.monotonic()
    after = {name: cpu_ns(pid) for name, pid in pids.items()}
    after["readers"] = sum(cpu_ns(reader.pid) for reader in readers)
    stats = r.info("commandstats")
    result: dict[str, Any] = {
        "sent_per_s": count / (sent - started),
        "delivered_per_s": count / (done - started),
        # µs of CPU per message; the readers': all of them together
        **{f"cpu_{name}": (after[name] - cpu[name]) / count / 1000 for name in after},
        "commandstats": {
            name.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
            for name, v in stats.items()
            if name not in ("cmdstat_config|resetstat", "cmdstat_info") and v["calls"]
        },
        "batches": [0] * BUCKETS,
        "reads": 0,
        "latency_ns": [],
    }
    for reader, (counters, batches) in zip(readers, base, strict=True):
        now, hist = reader.snapshot()
        result["reads"] += now[1] - counters[1]
        for i in range(BUCKETS):
            result["batches"][i] += hist[i] - batches[i]
        taken = now[2] - counters[2]
        result["latency_ns"] += [
            reader.samples[i % SAMPLES]
            for i in range(counters[2] + max(0, taken - SAMPLES), now[2])
        ]
    return result


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    pinned: bool,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    count = args.count
    publish = {
        k: statistics.median(x[k] for x in runs["publish"])
        for k in ("sent_per_s", "delivered_per_s")
    }
    designs: dict[str, Any] = {}
    for name in DESIGNS:
        rounds = runs[name]
        entry: dict[str, Any] = {}
        for key in ("sent_per_s", "delivered_per_s"):
            values = [x[key] for x in rounds]
            entry[key] = summary(values, 0)
            entry[key.replace("_per_s", "_ratio")] = round(
                statistics.median(values) / publish[key], 3
            )
        entry["cpu_us_per_message"] = {
            who: summary([x[f"cpu_{who}"] for x in rounds], 2)
            for who in ("redis", "sender", "readers")
        }
        commands = sorted({c for x in rounds for c in x["commandstats"]})
        entry["redis_commandstats"] = {
            c: {
                "calls_per_message": round(
                    statistics.median(
                        x["commandstats"].get(c, {"calls": 0})["calls"] / count for x in rounds
                    ),
                    3,
                ),
                "usec_per_message": round(
                    statistics.median(
                        x["commandstats"].get(c, {"usec": 0})["usec"] / count for x in rounds
                    ),
                    2,
                ),
            }
            for c in commands
        }
        if rounds[0]["reads"]:
            entry["messages_per_read"] = summary(
                [count * args.readers / x["reads"] for x in rounds], 2
            )
            batches = [sum(x["batches"][i] for x in rounds) for i in range(BUCKETS)]
            entry["reads_by_size"] = {
                (f"{1 << i}" if i == 0 else f"{1 << i}-{(2 << i) - 1}"): n
                for i, n in enumerate(batches)
                if n
            }
            latencies = [v for x in rounds for v in x["latency_ns"]]
            entry["latency_us"] = {
                "samples": len(latencies),
                "p50": round(percentile(latencies, 0.5), 1),
                "p90": round(percentile(latencies, 0.9), 1),
                "p99": round(percentile(latencies, 0.99), 1),
                "max": round(max(latencies) / 1000, 1),
            }
        designs[name] = entry
    return {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "redis": redis_version(),
        "redis_py": redis.__version__,
        "count": count,
        "rounds": args.rounds,
        "readers": args.readers,
        "batch": args.batch,
        "expire_every": args.expire_every,
        "pause_ms": args.pause,
        "latency_sample_every": args.sample,
        "pinned": pinned,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "designs": designs,
        # Round by round: how the rates went with Redis's CPU and the readers' batches.
        "per_round": {
            name: {
                **{
                    key: [round(x[key]) for x in runs[name]]
                    for key in ("sent_per_s", "delivered_per_s")
                },
                "cpu_us_redis": [round(x["cpu_redis"], 2) for x in runs[name]],
                **(
                    {
                        "messages_per_read": [
                            round(count * args.readers / x["reads"], 2) for x in runs[name]
                        ]
                    }
                    if runs[name][0]["reads"]
                    else {}
                ),
            }
            for name in DESIGNS
        },
    }


def table(result: dict[str, Any]) -> str:
    """The medians, one line a design."""
    lines = [
        "                               delivered   CPU µs per message",
        "design        sent/s  ratio       /s  ratio  redis  sender  readers  msg/read",
    ]
    for name, d in result["designs"].items():
        cpu = d["cpu_us_per_message"]
        per_read = d.get("messages_per_read", {}).get("median", "-")
        lines.append(
            f"{name:12} {d['sent_per_s']['median']:7.0f} {d['sent_ratio']:6.3f}"
            f" {d['delivered_per_s']['median']:8.0f} {d['delivered_ratio']:6.3f}"
            f" {cpu['redis']['median']:6.2f} {cpu['sender']['median']:7.2f}"
            f" {cpu['readers']['median']:8.2f}  {per_read:>8}"
        )
    return "\n".join(lines)


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split()[2].removeprefix("v=") if out else "?"


if __name__ == "__main__":
    main()
