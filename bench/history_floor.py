"""What a kept send could cost at least (issue 19): one sender and a private redis-server on
one core, three kinds of send interleaved round by round, each waiting for its reply as
``groups.send()`` does:

* ``publish``: a bare ``PUBLISH`` of the payload (a group without history);
* ``script``: the ``EVALSHA`` of ``dwebsocket.groups.redis.PUBLISH_SCRIPT`` that the layer
  runs for a group with history (append, expire, publish, in the sender's epoch);
* ``xadd``: a bare ``XADD`` to the stream, no Lua and no ``PUBLISH``: the floor of a design
  in which servers read the streams (``XREAD BLOCK``) instead of a channel.

No server and no members: this is the sender's side only. Prints sends per second (medians
of the rounds), their ratios to ``publish``, and Redis's own µs per call."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dwebsocket.groups.redis import PUBLISH_SCRIPT

PAYLOAD = b"x" * 32
HEADER = bytes([1]) + b"12345678" + (0).to_bytes(8, "big")
NOW_MS = b"1765000000000"  # the time field, as many digits as the script writes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="sends per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    port = free_port()
    workdir = tempfile.mkdtemp()
    # The sender and Redis share the first core, as bench/history.py pins them.
    command = ["taskset", "-c", "0", "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", workdir]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    os.sched_setaffinity(0, {0})
    try:
        r = redis.Redis(port=port, socket_timeout=10)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        sha = r.script_load(PUBLISH_SCRIPT)
        kept = ("EVALSHA", sha, 1, "kept", b"1000", b"60000")
        first = r.execute_command(*kept, b"0", b"ch", HEADER, PAYLOAD, b"PUBLISH")
        epoch = first.split(b":")[0]  # later sends are in the stream's epoch: the common path
        r.xadd("bare", {"k": "1"}, id=f"{epoch.decode()}-1")
        r.config_resetstat()

        bare = ("XADD", "bare", "NOMKSTREAM", "MAXLEN", "~", b"1000")

        def publish() -> None:
            for _ in range(args.count):
                r.execute_command("PUBLISH", "ch", PAYLOAD)

        def script() -> None:
            for _ in range(args.count):
                r.execute_command(*kept, epoch, b"ch", HEADER, PAYLOAD, b"PUBLISH")

        def xadd() -> None:
            for _ in range(args.count):
                r.execute_command(*bare, epoch + b"-*", "k", b"1", "d", PAYLOAD, "t", NOW_MS)

        kinds: dict[str, Callable[[], None]] = {"publish": publish, "script": script, "xadd": xadd}
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            for name, send in kinds.items():
                started = time.perf_counter()
                send()
                rates[name].append(args.count / (time.perf_counter() - started))
        stats = r.info("commandstats")
    finally:
        server.terminate()
        server.wait(10)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "count": args.count,
        "rounds": args.rounds,
        "load_after": os.getloadavg(),
        "sends_per_s": {name: round(value) for name, value in medians.items()},
        "per_round": {name: [round(v) for v in values] for name, values in rates.items()},
        "ratio_to_publish": {
            name: round(value / medians["publish"], 3) for name, value in medians.items()
        },
        "redis_us_per_call": {
            name: stats[f"cmdstat_{name}"]["usec_per_call"]
            for name in ("publish", "evalsha", "xadd")
            if f"cmdstat_{name}" in stats
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
