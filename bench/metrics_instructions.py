"""What dwebsocket.metrics costs, in instructions (callgrind): repeatable on a busy machine,
where the echo's messages per second (``metrics_cost.py``) are not.

    .venv/bin/python bench/metrics_instructions.py --before main --after HEAD   # ~10 min

For each configuration (before: a revision without the metrics; off:
``WEBSOCKET_METRICS = False``; on) the gevent echo server of ``bench/compare.py``
(``tests/run_gevent.py``, the bench project) runs under ``valgrind --tool=callgrind``
twice per measure, and the difference of the two totals is the cost: per message, one
connection echoing 2,500 messages minus one echoing 500 (32-byte text); per session, 120
connections of one message minus 20. Startup cancels out. ``PYTHONHASHSEED=0``. Writes
``bench/out/metrics_instructions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics_cost import REPO, build_in_place

OUT = REPO / "bench" / "out"
MESSAGE = "x" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def instructions(checkout: Path, settings: dict[str, object], sessions: int, each: int) -> int:
    """Total instructions of one server process serving ``sessions`` connections that
    echo ``each`` messages, one after the other."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {
            **os.environ,
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": str(checkout),
            "DJANGO_SETTINGS_MODULE": "bench.stacks.djsite.settings",
            "DWEBSOCKET_BENCH_SETTINGS": json.dumps(settings),
        }
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(checkout / "tests" / "run_gevent.py"),
                f"127.0.0.1:{port}",
            ],
            cwd=checkout,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the server did not start under valgrind") from None
                    time.sleep(0.5)
            for _ in range(sessions):
                with connect(
                    f"ws://127.0.0.1:{port}/echo/",
                    compression=None,
                    open_timeout=120,
                    close_timeout=120,
                    proxy=None,
                ) as ws:
                    for _ in range(each):
                        ws.send(MESSAGE)
                        assert ws.recv(timeout=120) == MESSAGE
            server.send_signal(signal.SIGTERM)
            server.wait(300)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
        text = out.read_text(errors="replace")
    totals = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if totals is None:
        raise RuntimeError("callgrind wrote no totals")
    return int(totals.group(1))


MEASURES = {
    # name: ((sessions, messages each) small, large, what the difference is divided by)
    "per message": ((1, 500), (1, 2500), 2000),
    "per session": ((20, 1), (120, 1), 100),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="a revision without the metrics")
    parser.add_argument("--after", default="HEAD", help="a revision with them")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dwebsocket-metrics-instructions-"))
    checkouts = {"before": work / "before", "after": work / "after"}
    results: dict[str, dict[str, float]] = {}
    try:
        for name, checkout in checkouts.items():
            revision = args.before if name == "before" else args.after
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), revision],
                check=True,
                timeout=120,
            )
            build_in_place(checkout, work / f"wheel-{name}")
        configs = {
            "before": (checkouts["before"], {}),
            "off": (checkouts["after"], {"WEBSOCKET_METRICS": False}),
            "on": (checkouts["after"], {}),
        }
        for measure, (small, large, per) in MEASURES.items():
            for name, (checkout, settings) in configs.items():
                a = instructions(checkout, settings, *small)
                b = instructions(checkout, settings, *large)
                results.setdefault(measure, {})[name] = (b - a) / per
                print(f"{measure:<12} {name:<7} {(b - a) / per:>12,.0f} instructions", flush=True)
    finally:
        for checkout in checkouts.values():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                check=False,
                timeout=120,
            )
        shutil.rmtree(work, ignore_errors=True)
    for measure, by in results.items():
        print(
            f"{measure}: on/before {by['on'] / by['before']:.4f}, on/off {by['on'] / by['off']:.4f}"
        )
    (OUT / "metrics_instructions.json").write_text(
        json.dumps({"before": args.before, "after": args.after, **results}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
