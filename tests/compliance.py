"""Run the kosoku protocol-compliance suite (Autobahn's cases) against a real server.

    python -m tests.compliance [--server gevent] [--cases '1.*' --cases 9.1.1] [--exclude ...]

Starts the echo view under the chosen server (``tests/servers.py``) with
``WEBSOCKET_MAX_MESSAGE_SIZE`` raised to 64 MiB for the suite's 16 MiB messages (the
library default stays 1 MiB), runs ``kosoku`` in fuzzing-client mode, prints the count of
each outcome and every case that is not OK / NON-STRICT / INFORMATIONAL with its reason,
and exits non-zero if there is any such case, or if the server printed a traceback.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.servers import SERVERS, running_server

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
ECHO_PATH = "/echo-wait/"
SETTINGS = {"WEBSOCKET_MAX_MESSAGE_SIZE": 64 * 1024 * 1024}
SUITE_TIMEOUT = 1800  # seconds for the whole suite


def _kosoku() -> str:
    exe = Path(sys.executable).with_name("kosoku")
    return str(exe) if exe.exists() else "kosoku"


def _reason(outdir: Path, entry: dict[str, object]) -> str:
    """A one-line reason for a failing case, from its report file."""
    try:
        case = json.loads((outdir / str(entry["reportfile"])).read_text())
    except (OSError, ValueError, KeyError):
        return "no report"
    parts = [f"behavior={case.get('behavior')}", f"close={case.get('behaviorClose')}"]
    for key in ("result", "resultClose"):
        if case.get(key):
            parts.append(str(case[key]))
    return "; ".join(parts)


def run(server_name: str, cases: list[str], exclude: list[str], parallelism: int) -> int:
    with tempfile.TemporaryDirectory(prefix="dwebsocket-compliance-") as tmp:
        tmpdir = Path(tmp)
        outdir = tmpdir / "report"
        with running_server(server_name, tmpdir / "server.log", settings=SETTINGS) as server:
            argv = [_kosoku(), "-p", str(parallelism), server.url(ECHO_PATH), "-o", str(outdir)]
            for case in cases:
                argv += ["-i", case]
            for case in exclude:
                argv += ["-x", case]
            print("$", " ".join(argv), flush=True)
            completed = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT, check=False
            )
            log = server.log()
        index_path = outdir / "index.json"
        if not index_path.exists():
            print(completed.stdout.decode(errors="replace"))
            print(f"kosoku wrote no report (exit {completed.returncode})", file=sys.stderr)
            return 2
        index = json.loads(index_path.read_text())
        results = {case: entry for agent in index.values() for case, entry in agent.items()}
        counts = collections.Counter(str(entry["behavior"]) for entry in results.values())
        failing = {c: e for c, e in results.items() if e["behavior"] not in PASSING}

        print(f"{server_name}: {len(results)} cases")
        for outcome, count in sorted(counts.items()):
            print(f"  {outcome:<14} {count}")
        for case in sorted(failing, key=lambda c: [int(p) for p in c.split(".")]):
            print(f"  FAIL {case}: {_reason(outdir, failing[case])}")
        traceback = "Traceback" in log
        if traceback:
            print(f"{server_name} printed a traceback:\n{log}")
        return 1 if failing or traceback else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compliance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="gevent", choices=sorted(SERVERS))
    parser.add_argument("--cases", action="append", default=[], metavar="CASE",
                        help="case id or glob to run (repeatable; default: all)")
    parser.add_argument("--exclude", action="append", default=[], metavar="CASE")
    parser.add_argument("-p", "--parallelism", type=int, default=1)
    args = parser.parse_args(argv)
    return run(args.server, args.cases, args.exclude, args.parallelism)


if __name__ == "__main__":
    sys.exit(main())
