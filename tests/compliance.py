"""Run the kosoku protocol-compliance suite (Autobahn's cases) against real servers.

    python -m tests.compliance             # CI (make compliance)
    python -m tests.compliance --full      # every case on every server (make compliance-full)
    python -m tests.compliance --server gevent [--cases '1.*' --cases 9.1.1] [--exclude ...]

Without ``--server``, runs the matrix of servers (:data:`MATRIX`, uWSGI's included):
by default the whole suite on gevent and the fast categories (1-7, 10) on the others,
which keeps CI well inside its budget; with ``--full``, the whole suite on each.

Each run starts the echo view under the server (``tests/servers.py``) with
``WEBSOCKET_MAX_MESSAGE_SIZE`` raised to 64 MiB for the suite's 16 MiB messages (the
library default stays 1 MiB), runs ``kosoku`` in fuzzing-client mode, and prints every
case that is not OK / NON-STRICT / INFORMATIONAL with its reason; at the end one table,
a row per server. Exits non-zero if any case failed, or if a server printed a traceback.

A case passes as kosoku itself judges it: both its ``behavior`` (the messages exchanged)
and its ``behaviorClose`` (the closing handshake) are OK, NON-STRICT or INFORMATIONAL.
A report that cannot be read, a case the index lacks a verdict for, or a kosoku exit
status that disagrees with the verdicts read here is an error, never a pass.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.backends.uwsgi import compliance as uwsgi_compliance
from tests.servers import OTHER_SERVERS, SERVERS, running_server

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
ECHO_PATH = "/echo-wait/"
SETTINGS = {"WEBSOCKET_MAX_MESSAGE_SIZE": 64 * 1024 * 1024}
SUITE_TIMEOUT = 1800  # seconds for the whole suite on one server

#: The servers, in the order the matrix runs them: the default backend's, then uWSGI
#: (the default backend taking the connection over, and the uwsgi backend, whose failing
#: cases must each be explained by a uWSGI defect: tests/backends/uwsgi/compliance.py).
MATRIX = [
    "gevent",
    "gunicorn-gevent",
    "gunicorn-gthread",
    "eventlet",
    "runserver",
    "uwsgi-takeover",
    "uwsgi-gevent",
]
#: The server CI runs the whole suite on; the others get :data:`FAST_CASES`.
FULL_IN_CI = "gevent"
#: Framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing, misc: every
#: category but the slow ones (9: large messages, 12-13: compression).
FAST_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]


@dataclass
class Result:
    """The outcome of the suite (or a selection) against one server."""

    server: str
    selection: str
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    failing: dict[str, str] = field(default_factory=dict)
    traceback: bool = False
    seconds: float = 0.0
    error: str = ""
    #: Failing cases a uWSGI defect explains (uwsgi backend only): case -> defect.
    explained: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        ran = sum(self.counts.values()) > 0
        return ran and not self.failing and not self.traceback and not self.error


def _kosoku() -> str:
    exe = Path(sys.executable).with_name("kosoku")
    return str(exe) if exe.exists() else "kosoku"


def passed(entry: dict[str, object]) -> bool:
    """kosoku's verdict for one case of its index: messages *and* closing handshake."""
    return entry.get("behavior") in PASSING and entry.get("behaviorClose") in PASSING


def outcome(entry: dict[str, object]) -> str:
    """The column a case is counted in: its ``behavior``, or ``close <behaviorClose>``
    when the messages passed but the closing handshake did not."""
    behavior = str(entry.get("behavior"))
    if behavior in PASSING and entry.get("behaviorClose") not in PASSING:
        return f"close {entry.get('behaviorClose')}"
    return behavior


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


def _case_key(case: str) -> list[int]:
    return [int(p) for p in case.split(".") if p.isdigit()]


def judge(result: Result, outdir: Path, returncode: int | None, output: str = "") -> None:
    """Fill ``result`` from kosoku's reports in ``outdir`` (``returncode``: kosoku's exit
    status, None if it did not finish). Anything unreadable is an error, never a pass."""
    name = result.server
    index_path = outdir / "index.json"
    if not index_path.exists():
        print(output)
        result.error = result.error or "kosoku wrote no report"
        print(f"[{name}] {result.error}", file=sys.stderr)
        return
    try:
        index = json.loads(index_path.read_text())
        results = {case: entry for agent in index.values() for case, entry in agent.items()}
    except (OSError, ValueError, AttributeError) as exc:
        result.error = f"kosoku's index is unreadable: {exc}"
        print(f"[{name}] {result.error}", file=sys.stderr)
        return
    result.counts.update(outcome(entry) for entry in results.values())
    result.failing = {
        case: _reason(outdir, entry) for case, entry in results.items() if not passed(entry)
    }
    if returncode is not None and (returncode != 0) != bool(result.failing):
        # kosoku exits 1 exactly when a case failed by its own verdict: a disagreement
        # means this script misread the report.
        result.error = f"kosoku exited {returncode} but {len(result.failing)} cases failed"
        print(output)
    if name in uwsgi_compliance.UWSGI_BACKEND:
        for case in list(result.failing):
            defect = uwsgi_compliance.explain(case, outdir / str(results[case].get("reportfile")))
            if defect is not None:
                result.explained[case] = defect
                del result.failing[case]


def run(
    server_name: str,
    cases: list[str],
    exclude: list[str],
    parallelism: int,
    keep: Path | None = None,
) -> Result:
    """Run kosoku against ``server_name``; print its failures; return the :class:`Result`.
    With ``keep``, kosoku's reports stay in ``keep/<server_name>``."""
    if server_name in uwsgi_compliance.UWSGI_BACKEND:
        parallelism = 1  # a case that crashes uWSGI's worker must not take others along
    selection = ",".join(cases) if cases else "all"
    if exclude:
        selection += " minus " + ",".join(exclude)
    result = Result(server_name, selection)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dwebsocket-compliance-") as tmp:
        tmpdir = Path(tmp)
        outdir = keep / server_name if keep else tmpdir / "report"
        with running_server(server_name, tmpdir / "server.log", settings=SETTINGS) as server:
            argv = [_kosoku(), "-p", str(parallelism), server.url(ECHO_PATH), "-o", str(outdir)]
            for case in cases:
                argv += ["-i", case]
            for case in exclude:
                argv += ["-x", case]
            print(f"[{server_name}] $", " ".join(argv), flush=True)
            completed: subprocess.CompletedProcess[bytes] | None = None
            try:
                completed = subprocess.run(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=SUITE_TIMEOUT,
                    check=False,
                )
                output = completed.stdout.decode(errors="replace")
            except subprocess.TimeoutExpired:
                output, result.error = "", f"kosoku did not finish within {SUITE_TIMEOUT} s"
        log = server.log()
        result.seconds = time.monotonic() - started
        judge(result, outdir, completed.returncode if completed else None, output)
    for defect, count in collections.Counter(result.explained.values()).most_common():
        print(f"[{server_name}] {count} cases: {uwsgi_compliance.EXPLANATIONS[defect]}")
    for case in sorted(result.failing, key=_case_key):
        print(f"[{server_name}] FAIL {case}: {result.failing[case]}")
    result.traceback = "Traceback" in log
    if result.traceback:
        print(f"[{server_name}] printed a traceback:\n{log}")
    return result


def table(results: list[Result]) -> str:
    """One row per server: cases run, each outcome, seconds, verdict."""
    outcomes = ["OK", "NON-STRICT", "INFORMATIONAL"]
    others = sorted({o for r in results for o in r.counts} - set(outcomes))
    header = ["server", "cases", "run", *outcomes, *others, "seconds", "result"]
    rows = [header]
    for r in results:
        verdict = "PASS" if r.ok else ("ERROR: " + r.error if r.error else "FAIL")
        if r.explained:
            verdict += f" ({len(r.explained)} cases: uWSGI defects, docs/backends.rst)"
        if r.traceback and not r.error:
            verdict += " (traceback in server log)"
        rows.append(
            [
                r.server,
                r.selection,
                str(sum(r.counts.values())),
                *(str(r.counts.get(o, 0)) for o in outcomes + others),
                f"{r.seconds:.0f}",
                verdict,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # `timeout`, CI and Ctrl-C in another terminal send SIGTERM: unwind, so that the
    # server and kosoku are stopped instead of orphaned.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(
        prog="python -m tests.compliance", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        choices=sorted({*SERVERS, *OTHER_SERVERS, "all"}),
        help="server to run against (repeatable; 'all': the matrix); default: the matrix",
    )
    parser.add_argument(
        "--full", action="store_true", help="the whole suite on every server of the matrix"
    )
    parser.add_argument(
        "--cases",
        action="append",
        default=[],
        metavar="CASE",
        help="case id or glob to run (repeatable; default: all)",
    )
    parser.add_argument("--exclude", action="append", default=[], metavar="CASE")
    parser.add_argument("-p", "--parallelism", type=int, default=2)
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep kosoku's reports in DIR/<server>"
    )
    args = parser.parse_args(argv)

    servers = [s for s in args.server if s != "all"]
    if not servers or "all" in args.server:
        plan = [
            (name, args.cases or ([] if args.full or name == FULL_IN_CI else FAST_CASES))
            for name in MATRIX + [s for s in servers if s not in MATRIX]
        ]
    else:
        plan = [(name, args.cases) for name in servers]

    results = [run(name, cases, args.exclude, args.parallelism, args.keep) for name, cases in plan]
    print()
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
