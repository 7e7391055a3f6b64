"""The uwsgi backend's Autobahn failures are excused by signature, not by category
(``tests/backends/uwsgi/compliance.py``).

``kosoku_reports/`` holds kosoku's reports of real failing cases, from a run of
``python -m tests.compliance --server uwsgi-gevent --keep DIR`` (commit 66475cf, uWSGI
2.0.31): each is explained by its defect. The same reports changed the way a regression
of dwebsocket's would change them (a close code the server sent, a message as text, a
broken compression) are explained by nothing, and neither is an unreadable report: the
old gate excused each of those by the case's category.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.backends.uwsgi.compliance import explain, explain_report

REPORTS = Path(__file__).resolve().parent / "kosoku_reports"

EXPLAINED = {
    "1.1.1": "empty-message",  # the empty message never came back
    "1.1.2": "opening-ping",  # the echo, after uWSGI's ping; kosoku's kill timer closed
    "2.3": "empty-pong",  # an empty pong for a ping with a payload
    "3.5": "no-validation",  # RSV bits set: echoed instead of failed with 1002
    "4.2.3": "no-validation",  # a reserved control opcode went through
    "6.4.1": "opcode-lost",  # invalid UTF-8 text came back as binary
    "6.7.1": "nul-placeholder",  # a message of one NUL byte was dropped
    "7.9.1": "opening-ping",  # an invalid close code answered with an empty close frame
    "9.1.4": "opening-ping",  # category 9 stops at the first frame that is not the echo
    "12.1.1": "no-deflate",  # permessage-deflate offered, not negotiated
}


def report(case: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPORTS / f"{case}.json").read_text())
    return loaded


@pytest.mark.parametrize(("case", "defect"), sorted(EXPLAINED.items()))
def test_a_real_failure_is_explained_by_its_defect(case: str, defect: str) -> None:
    assert explain(case, REPORTS / f"{case}.json") == defect


def _sent_1011(r: dict[str, Any]) -> None:
    r["remoteCloseCode"], r["behaviorClose"] = 1011, "WRONG CODE"


def _server_dropped(r: dict[str, Any]) -> None:
    # kosoku's verdict when the server, not kosoku's kill timer, ends the connection
    r.update(droppedByMe=False, behaviorClose="FAILED", closedByMe=False, wasClean=False)


def _as_text(r: dict[str, Any]) -> None:
    r["received"] = [[*e[:2], False] if e[0] == "message" else e for e in r["received"]]


def _echo_lost(r: dict[str, Any]) -> None:
    r["received"] = [e for e in r["received"] if e[0] != "message"]


def _pong_wrong(r: dict[str, Any]) -> None:
    r["received"] = [["pong", "other"] if e[0] == "pong" else e for e in r["received"]]


def _deflate_broken(r: dict[str, Any]) -> None:
    r["behavior"] = "FAILED"


def _negotiated(r: dict[str, Any]) -> None:
    r["httpResponse"] += "Sec-WebSocket-Extensions: permessage-deflate\r\n"


def _extra_message(r: dict[str, Any]) -> None:
    r["received"].append(["message", "not sent by kosoku", False])


REGRESSIONS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("3.5", _sent_1011),  # we failed the connection with the wrong code
    ("4.2.3", _extra_message),  # we sent something kosoku never sent
    ("6.4.1", _as_text),  # invalid UTF-8 handed on as text
    ("6.4.1", _sent_1011),
    ("1.1.2", _echo_lost),  # the echo itself lost
    ("1.1.2", _server_dropped),  # the server dropped the connection
    ("2.3", _pong_wrong),
    ("7.9.1", _sent_1011),
    ("12.1.1", _deflate_broken),
    ("12.1.1", _negotiated),
]


@pytest.mark.parametrize(
    ("case", "change"), REGRESSIONS, ids=[f"{c}-{f.__name__[1:]}" for c, f in REGRESSIONS]
)
def test_a_regression_of_ours_is_not_explained(
    case: str, change: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    changed = copy.deepcopy(report(case))
    change(changed)
    assert explain_report(case, changed) is None
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(changed))
    assert explain(case, path) is None


@pytest.mark.parametrize("content", [None, "", "{", "[]", '{"id": "3.1"}'])
def test_an_unreadable_report_explains_nothing(content: str | None, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert explain("3.5", path) is None
