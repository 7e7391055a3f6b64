"""Soak: many WebSockets with traffic for minutes against gevent.pywsgi; every echo checked.

    .venv/bin/python bench/soak.py [--connections 1000] [--duration 300] [--json PATH]

(``make soak``.) Starts the test project under gevent.pywsgi on 127.0.0.1 (the
``tests.servers`` harness), opens the connections (half of them with permessage-deflate),
and has each send a message every 0.5-1.5 s for ``--duration`` seconds: text or binary,
2 B to 4 KiB, carrying its connection and sequence number. Every echo must come back
byte for byte and in order. Meanwhile the server's RSS is sampled every 5 s.

Fails (exit status 1) on any lost, corrupted or out-of-order message, any connection
that ends before the close, a close code other than 1000, a traceback in the server's
log, or RSS growth: after the first minute (warm-up: allocator arenas, zlib buffers,
Django's caches) the server's RSS must not rise by more than ``RSS_TOLERANCE``, nor
trend upward by more than ``SLOPE_TOLERANCE`` per minute (least squares over the samples).
Prints a JSON summary either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.hardening.support import SETTINGS, foreign_tracebacks, rss
from tests.servers import running_server

WARMUP = 60.0  # seconds before the RSS baseline
SAMPLE_EVERY = 5.0
RSS_TOLERANCE = 16 << 20
SLOPE_TOLERANCE = 1 << 20  # bytes per minute
TIMEOUT = 60.0  # for one echo, on a loaded machine


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.echoed = 0
        self.corrupted = 0
        self.failed: list[str] = []
        self.close_codes: dict[int, int] = {}


def payload(conn_id: int, seq: int, rng: random.Random) -> str | bytes:
    """A message that names its connection and sequence number, padded at random."""
    tag = f"{conn_id}:{seq}:"
    size = rng.choice([2, 50, 200, 1000, 4096])
    if seq % 2:
        return tag + "é☃x"[seq % 3] * size
    return tag.encode() + rng.randbytes(size)


async def session(conn_id: int, url: str, stop_at: float, tally: Tally) -> None:
    rng = random.Random(conn_id)
    compression = "deflate" if conn_id % 2 else None
    seq = 0
    try:
        ws: ClientConnection
        async with connect(
            url,
            compression=compression,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
            max_size=None,
            ping_interval=None,
            proxy=None,
        ) as ws:
            await asyncio.sleep(rng.uniform(0, 1.5))  # spread the load
            while time.monotonic() < stop_at:
                message = payload(conn_id, seq, rng)
                await ws.send(message)
                tally.sent += 1
                echo = await asyncio.wait_for(ws.recv(), TIMEOUT)
                if echo != message or type(echo) is not type(message):
                    tally.corrupted += 1
                else:
                    tally.echoed += 1
                seq += 1
                await asyncio.sleep(rng.uniform(0.5, 1.5))
        code = ws.close_code if ws.close_code is not None else -1
        tally.close_codes[code] = tally.close_codes.get(code, 0) + 1
    except (OSError, ConnectionClosed, TimeoutError) as exc:
        tally.failed.append(f"connection {conn_id} after {seq} messages: {exc!r}")


async def sample_rss(server: Any, stop_at: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - started, rss(server)))
        await asyncio.sleep(SAMPLE_EVERY)


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in bytes per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    num = sum((t - mean_t) * (r - mean_r) for t, r in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den * 60 if den else 0.0


async def soak(server: Any, connections: int, duration: float) -> dict[str, Any]:
    url = server.url("/echo/")
    tally = Tally()
    idle_rss = rss(server)
    started = time.monotonic()
    stop_at = started + duration
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(sample_rss(server, stop_at, samples))
    tasks = []
    for conn_id in range(connections):  # open gradually: no SYN flood on the backlog
        tasks.append(asyncio.create_task(session(conn_id, url, stop_at, tally)))
        if conn_id % 50 == 49:
            await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    await sampler
    after = [(t, r) for t, r in samples if t >= WARMUP]
    baseline = after[0][1] if after else samples[0][1]
    end_rss = rss(server)
    return {
        "connections": connections,
        "seconds": round(time.monotonic() - started, 1),
        "messages_sent": tally.sent,
        "messages_echoed": tally.echoed,
        "lost": tally.sent - tally.echoed - tally.corrupted,
        "corrupted": tally.corrupted,
        "failed_connections": tally.failed[:20],
        "failed_count": len(tally.failed),
        "close_codes": tally.close_codes,
        "rss_idle_mb": round(idle_rss / 2**20, 1),
        "rss_after_warmup_mb": round(baseline / 2**20, 1),
        "rss_peak_mb": round(max(r for _, r in samples) / 2**20, 1),
        "rss_end_of_traffic_mb": round(samples[-1][1] / 2**20, 1),
        "rss_after_close_mb": round(end_rss / 2**20, 1),
        "rss_slope_mb_per_min": round(slope(after) / 2**20, 3),
        "rss_growth_mb": round((max(r for _, r in after) - baseline) / 2**20, 1) if after else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections)), hard))

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gevent.log"
        with running_server("gevent", log, settings=SETTINGS) as server:
            summary = asyncio.run(soak(server, args.connections, args.duration))
            time.sleep(2)
            summary["rss_after_close_mb"] = round(rss(server) / 2**20, 1)
        summary["server_tracebacks"] = len(foreign_tracebacks(log.read_text(errors="replace")))

    problems = []
    if summary["lost"] or summary["corrupted"]:
        problems.append("lost or corrupted messages")
    if summary["failed_count"]:
        problems.append("connections failed")
    if set(summary["close_codes"]) != {1000}:
        problems.append(f"close codes {summary['close_codes']}")
    if summary["server_tracebacks"]:
        problems.append("tracebacks in the server's log")
    if summary["rss_growth_mb"] * 2**20 > RSS_TOLERANCE:
        problems.append(f"RSS grew by {summary['rss_growth_mb']} MB after the warm-up")
    if summary["rss_slope_mb_per_min"] * 2**20 > SLOPE_TOLERANCE:
        problems.append(f"RSS trends up by {summary['rss_slope_mb_per_min']} MB/min")
    summary["ok"] = not problems
    summary["problems"] = problems
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
