"""Why the uwsgi backend fails Autobahn cases: a failing case of a ``tests.compliance`` run
against ``uwsgi-gevent`` / ``uwsgi-async`` is excused only when its kosoku report shows
exactly what a uWSGI defect of the capability table (docs/backends.rst) predicts. Anything
else -- a different message, a close code the server sent, a connection the server
dropped, an unreadable report -- is left unexplained and fails the run, so that a
regression of dwebsocket's own shows up even in the categories uWSGI breaks.

How a case is judged (kosoku's verdict needs both parts, ``tests/compliance.py``):

- **Messages.** uWSGI pings once when the view first waits (``opening-ping``): a report
  may begin with that one empty ping, which is taken out. The rest must equal one of the
  case's expected event lists *as the defect changes it*: empty messages missing
  (``empty-message``), ``"\\x00"`` messages missing (``nul-placeholder``), pongs empty
  (``empty-pong``), or nothing changed (``opening-ping``). For the cases where the server
  must fail the connection (1002, 1007) the prediction is the echo of what kosoku sent:
  uWSGI let the frames through (``no-validation``), or took invalid UTF-8 text for binary
  (``opcode-lost``).
- **Closing.** Either kosoku passed it, or it failed the way the defect makes it fail:
  kosoku starts the closing handshake only once the events match the expected ones, so a
  case whose events a defect changed ends on kosoku's kill timer (``FAILED``: closed by
  the wrong endpoint, kosoku dropping the connection); where the server should have
  failed the connection and a defect hid the violation, kosoku drops it
  (``FAILED BY CLIENT``), the server having sent no close code at all.

``close-reply`` (uWSGI answers a close frame with an empty one) fails no case by itself:
kosoku accepts a close reply without a status code. ``test_defects.py`` asserts it.

Run the uwsgi backend with ``-p 1``: a case that crashes the worker (a lone continuation
frame) drops the cases running next to it, which would then fail for no reason of theirs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.backends.uwsgi.defects import DEFECTS, UWSGI_BACKEND

__all__ = ["EXPLANATIONS", "UWSGI_BACKEND", "explain", "explain_report"]

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

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
OPENING_PING = ["ping", ""]
Report = dict[str, Any]
Events = list[Any]


def _events(report: Report) -> Events:
    """The received events, without uWSGI's opening ping (the first empty ping: it comes
    when the backend first finds nothing to read, which may be after a pong)."""
    received: Events = list(report.get("received") or [])
    if OPENING_PING in received:
        received.remove(OPENING_PING)
    return received


def _expected(report: Report) -> list[Events]:
    expected = report.get("expected") or {}
    return [list(events) for events in expected.values()]


def _sent(report: Report) -> list[tuple[int, str]]:
    """(opcode, payload as the report's events show it) of every frame kosoku sent. The
    wirelog writes a payload that is not UTF-8 in hex (``0x...``), events in Latin-1."""
    sent = []
    for entry in report.get("wirelog") or []:
        if entry and entry[0] == "TF":
            payload = entry[1][1]
            if re.fullmatch(r"0x([0-9a-f]{2})*", payload):
                payload = bytes.fromhex(payload[2:]).decode("latin-1")
            sent.append((entry[2], payload))
    return sent


def _close(report: Report) -> dict[str, Any]:
    close: dict[str, Any] = report.get("expectedClose") or {}
    return close


def _killed_waiting(report: Report) -> bool:
    """kosoku's kill timer ended a case whose events never matched: it was to close, never
    did (the events did not match), and dropped the connection itself."""
    return (
        report.get("behaviorClose") == "FAILED"
        and _close(report).get("closedByMe") is True
        and report.get("closedByMe") is False
        and report.get("droppedByMe") is True
        and report.get("remoteCloseCode") is None
    )


def _not_failed_by_server(report: Report) -> bool:
    """The server should have failed the connection and never did: kosoku dropped it, no
    close frame came from the server."""
    return (
        report.get("behaviorClose") in {"FAILED BY CLIENT", *PASSING}
        and _close(report).get("closedByMe") is False
        and report.get("remoteCloseCode") is None
    )


def _closing_ok_or_killed(report: Report) -> bool:
    return report.get("behaviorClose") in PASSING or _killed_waiting(report)


def _drops(predicate: Callable[[Any], bool]) -> Callable[[Report], bool]:
    """The events of an expected list, minus those ``predicate`` says the defect loses."""

    def signature(report: Report) -> bool:
        events = _events(report)
        return _closing_ok_or_killed(report) and any(
            events == [e for e in expected if not predicate(e)] != expected
            for expected in _expected(report)
        )

    return signature


def _empty_pongs(report: Report) -> bool:
    events = _events(report)
    return _closing_ok_or_killed(report) and any(
        events == [["pong", ""] if e[0] == "pong" else e for e in expected] != expected
        for expected in _expected(report)
    )


def _opening_ping(report: Report) -> bool:
    received = report.get("received") or []
    if OPENING_PING not in received:
        return False
    if report.get("expected") == {} and received == [OPENING_PING]:
        # Category 9 (large messages) lists no expected events: kosoku fails the case at
        # the first frame that is not the echo, and with uWSGI that is its opening ping.
        return str(report.get("id", "")).startswith("9.") and (
            report.get("behaviorClose") in PASSING
        )
    return _closing_ok_or_killed(report) and _events(report) in _expected(report)


def _no_validation(report: Report) -> bool:
    """A frame that must fail the connection with 1002 went through: the server echoed
    the data frames kosoku sent, answered the pings (empty: ``empty-pong``), and never
    closed."""
    sent = {payload for opcode, payload in _sent(report) if opcode in {0, 1, 2}}
    return (
        1002 in _close(report).get("closeCode", [])
        and _not_failed_by_server(report)
        and all(
            event == ["pong", ""] or (event[0] == "message" and event[1] in sent)
            for event in _events(report)
        )
    )


def _opcode_lost(report: Report) -> bool:
    """Invalid UTF-8 in a text message (must fail with 1007) came back as a binary message:
    uWSGI's API dropped the opcode, and the backend took the bytes for binary. Without
    those messages, the events are an expected list (the case's timeouts, if any)."""
    events = _events(report)
    messages = [e for e in events if e[0] == "message"]
    return (
        1007 in _close(report).get("closeCode", [])
        and _not_failed_by_server(report)
        and any(opcode == 1 for opcode, _ in _sent(report))
        and bool(messages)
        and all(message[2] is True for message in messages)
        and [e for e in events if e[0] != "message"] in _expected(report)
    )


def _no_deflate(report: Report) -> bool:
    """permessage-deflate offered, not negotiated: kosoku reports the case unimplemented."""
    response = str(report.get("httpResponse") or "").lower()
    return (
        report.get("behavior") == "UNIMPLEMENTED"
        and "permessage-deflate" not in response
        and report.get("behaviorClose") in PASSING
    )


def _lone_continuation(report: Report) -> bool:
    """The worker crashed: the server dropped the connection, no close frame, nothing
    received but the opening ping."""
    return (
        _events(report) == []
        and report.get("remoteCloseCode") is None
        and report.get("droppedByMe") is False
        and report.get("wasClean") is False
    )


#: defect -> (case ids it can apply to, its signature), tried in this order.
SIGNATURES: list[tuple[str, str, Callable[[Report], bool]]] = [
    ("no-deflate", r"1[23]\..*", _no_deflate),
    ("opening-ping", r".*", _opening_ping),
    ("empty-message", r".*", _drops(lambda e: e[0] == "message" and e[1] == "")),
    ("nul-placeholder", r".*", _drops(lambda e: e[0] == "message" and e[1] == "\x00")),
    ("empty-pong", r".*", _empty_pongs),
    ("no-validation", r".*", _no_validation),
    ("opcode-lost", r"6\..*", _opcode_lost),
    ("lone-continuation", r"5\.(9|1[0-7])", _lone_continuation),
]


def explain_report(case: str, report: Report) -> str | None:
    """The defect whose signature failing ``case``'s report shows, or None."""
    for defect, cases, signature in SIGNATURES:
        if re.fullmatch(cases, case) and signature(report):
            return defect
    return None


def explain(case: str, report_path: Path) -> str | None:
    """The defect behind failing ``case`` (its kosoku report at ``report_path``), or None
    if no uWSGI defect explains it. An unreadable report explains nothing."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("id", case) != case:
        return None
    return explain_report(case, report)
