"""Why the uwsgi backend fails Autobahn cases: every failing case of a ``tests.compliance``
run against ``uwsgi-gevent`` / ``uwsgi-async`` is attributed to a uWSGI defect of the
capability table (docs/backends.rst), or left unexplained -- which fails the run.

Run the uwsgi backend with ``-p 1``: a case that crashes the worker (a lone continuation
frame) drops the cases running next to it, which would then fail for no reason of theirs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.backends.uwsgi.defects import DEFECTS, UWSGI_BACKEND

__all__ = ["EXPLANATIONS", "UWSGI_BACKEND", "explain"]

#: defect -> what the table says; a superset of tests.backends.uwsgi.defects.DEFECTS.
EXPLANATIONS = {
    **DEFECTS,
    "opening-ping": (
        "uWSGI pings once when the view first waits (websocket_recv_nb's first EAGAIN); "
        "the suite counts the unexpected ping: the case is otherwise correct"
    ),
    "nul-placeholder": (
        "uWSGI defect: websocket_recv_nb() returns b'\\x00' for a stored fragment; a "
        "message of that one byte is dropped as the placeholder"
    ),
    "lone-continuation": (
        "uWSGI defect: a continuation frame with no message in progress crashes the worker"
    ),
}

# Case id patterns -> defect, for failures the opening ping alone does not explain.
_RULES: list[tuple[str, str]] = [
    (r"1\.1\.1|1\.2\.1|6\.1\.[1-3]", "empty-message"),
    (r"6\.7\.1", "nul-placeholder"),
    (r"2\.(2|3|4|6|9|10|11)|5\.(6|7|8|19|20)", "empty-pong"),
    (r"2\.5|3\..*|4\..*|5\.(1|2|18)", "no-validation"),
    (r"5\.(9|1[0-7])", "lone-continuation"),
    (r"6\..*", "opcode-lost"),  # invalid UTF-8 is not failed (1007): it arrives as binary
    (r"7\..*", "close-reply"),
    (r"1[23]\..*", "no-deflate"),
]


def _matches_without_opening_ping(report: dict[str, Any]) -> bool:
    received = [event for event in report.get("received", []) if event != ["ping", ""]]
    expected = report.get("expected") or {}
    return len(received) < len(report.get("received", [])) and any(
        received == events for events in expected.values()
    )


def _stopped_at_opening_ping(case: str, report: dict[str, Any]) -> bool:
    # Category 9 (large messages) lists no expected events: kosoku fails the case at the
    # first frame that is not the echo, and with uWSGI that is its opening ping.
    return case.startswith("9.") and report.get("received") == [["ping", ""]]


#: Defects that explain a case even when the opening ping is the only visible difference.
_ALWAYS = {"no-deflate", "lone-continuation", "close-reply"}


def explain(case: str, report_path: Path) -> str | None:
    """The defect behind failing ``case`` (its kosoku report at ``report_path``), or None
    if no uWSGI defect explains it."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        report = {}
    ping_only = _matches_without_opening_ping(report) or _stopped_at_opening_ping(case, report)
    for pattern, defect in _RULES:
        if re.fullmatch(pattern, case):
            return defect if defect in _ALWAYS or not ping_only else "opening-ping"
    return "opening-ping" if ping_only else None
