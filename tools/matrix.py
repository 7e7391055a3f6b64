"""``make matrix``: noxfile.py's ``tests`` sessions and ``lowest``, two at a time (then
``nox -s build``).

Run one after the other, the seven pairs took ~17 min of CI's hour: each spends half its
time waiting on sockets and subprocesses, so two at a time fit the machine's two cores.
The sessions are split into two lanes by Python, so that no two sessions of one Python
run together (``pip install -e .`` builds that Python's extension modules into the
checkout). Each session's pytest gets a temporary root of its own
(``PYTEST_DEBUG_TEMPROOT``): pytest removes all but the newest of the numbered directories
under its root when a run ends, and with one root for two sessions it removed the other's,
in use ("Directory not empty" at the end of a session that had passed). Each session's
output is printed whole when it ends, so the two do not interleave; the exit status is 1
if any session failed or ran out of time.

    python tools/matrix.py             # every pair (make matrix)
    python tools/matrix.py --lanes 1   # one after the other
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOX = Path(sys.executable).parent / "nox"
#: One session: a venv to build, the unit layer and the shared suite (~2.5 min alone).
SESSION_TIMEOUT = 20 * 60


def sessions() -> list[tuple[str, str]]:
    """(session name, Python) of every ``tests`` session nox would run."""
    listed = subprocess.run(
        [str(NOX), "-l", "--json", "-s", "tests", "lowest"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found = json.loads(listed.stdout)
    return [(s["session"], s["python"]) for s in found if s["name"] in ("tests", "lowest")]


def lanes(found: list[tuple[str, str]], count: int) -> list[list[str]]:
    """``count`` lanes, each Python's sessions in one lane, the biggest groups first."""
    by_python: dict[str, list[str]] = {}
    for name, python in found:
        by_python.setdefault(python, []).append(name)
    result: list[list[str]] = [[] for _ in range(count)]
    for group in sorted(by_python.values(), key=len, reverse=True):
        min(result, key=len).extend(group)
    return [lane for lane in result if lane]


def run_lane(names: list[str], failed: list[str], printing: threading.Lock) -> None:
    for name in names:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="matrix-", ignore_cleanup_errors=True) as root:
            # Its own process group, so that a session out of time is stopped with
            # everything it started (pytest, its workers, the servers).
            process = subprocess.Popen(
                [str(NOX), "-s", name],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                env={**os.environ, "PYTEST_DEBUG_TEMPROOT": root},
            )
            try:
                output, _ = process.communicate(timeout=SESSION_TIMEOUT)
                ok = process.returncode == 0
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate(timeout=60)
                output += f"\n{name}: no end after {SESSION_TIMEOUT} s, stopped\n"
                ok = False
        with printing:
            verdict = "passed" if ok else "FAILED"
            print(f"==== {name}: {verdict} in {time.monotonic() - start:.0f} s ====", flush=True)
            print(output, end="" if output.endswith("\n") else "\n", flush=True)
            if not ok:
                failed.append(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=2)
    args = parser.parse_args()
    failed: list[str] = []
    printing = threading.Lock()
    threads = [
        threading.Thread(target=run_lane, args=(lane, failed, printing))
        for lane in lanes(sessions(), args.lanes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        print("matrix: failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
