"""One exception tree: every exception dwebsocket raises is in ``dwebsocket.exceptions``,
drawn in its docstring as it is, and re-exported where it was first defined."""

from __future__ import annotations

import pickle
import re

import pytest

import dwebsocket
from dwebsocket import exceptions


def _drawn_tree() -> dict[str, str]:
    """``{class name: parent name}`` as the module docstring draws the tree."""
    assert exceptions.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in exceptions.__doc__.splitlines():
        match = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?([A-Z]\w+)\s", line + " ")
        if not match:
            continue
        depth = len(match.group(1)) // 4 + (1 if "── " in line else 0)
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_the_docstring_draws_the_tree_as_it_is() -> None:
    drawn = _drawn_tree()
    actual = {
        name: getattr(exceptions, name).__mro__[1].__name__
        for name in exceptions.__all__
        if name != "WebSocketError"
    }
    assert drawn == actual


@pytest.mark.parametrize("name", exceptions.__all__)
def test_each_says_when_it_is_raised(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.WebSocketError)
    doc = cls.__doc__ or ""
    assert name == "WebSocketError" or doc.startswith("Raised when"), doc
    assert getattr(dwebsocket, name) is cls  # ``from dwebsocket import ...`` works for each


def test_reexported_where_first_defined() -> None:
    from dwebsocket import groups, limits, testing

    assert groups.GroupsUnavailable is exceptions.GroupsUnavailable
    assert limits.TooManyConnections is exceptions.TooManyConnections
    assert testing.HandshakeRefused is exceptions.HandshakeRefused


def test_data_as_attributes() -> None:
    refused = exceptions.TooManyConnections("full", retry_after=5)
    assert (refused.status, refused.retry_after) == (503, 5)
    assert refused.headers == [("Retry-After", "5")]
    answer = exceptions.HandshakeRefused(403, [("content-type", "text/plain")], b"no\n")
    assert (answer.status_code, answer.status, answer.reason) == (403, 403, "no")
    assert str(answer) == "handshake refused with HTTP 403: no"


#: One instance of each exception, as dwebsocket raises it.
INSTANCES = [
    exceptions.ConnectionClosed(1001, "going away"),
    exceptions.ProtocolError("bad frame", 1007),
    exceptions.PayloadTooBig("too big"),
    exceptions.InvalidHandshake("no key", [("X-A", "b")]),
    exceptions.UnsupportedVersion(),
    exceptions.ForbiddenOrigin("not allowed"),
    exceptions.TooManyConnections("full", retry_after=5),
    exceptions.HandshakeRefused(403, [("content-type", "text/plain")], b"no\n"),
    exceptions.InvalidState("not accepted"),
    exceptions.BackendUnavailable("no socket"),
    exceptions.GroupsUnavailable("Redis unreachable"),
    exceptions.InvalidSetting("WEBSOCKET_X", 1, "WEBSOCKET_X must be ...", "dwebsocket.E0xx"),
]


def test_every_one_is_here() -> None:
    assert {type(e).__name__ for e in INSTANCES} == set(exceptions.__all__) - {"WebSocketError"}


@pytest.mark.parametrize("error", INSTANCES, ids=lambda e: type(e).__name__)
def test_each_pickles_with_its_data(error: exceptions.WebSocketError) -> None:
    """Django's parallel test runner (``manage.py test --parallel``) pickles a failing
    test's exception: TooManyConnections and HandshakeRefused (which dwebsocket.testing
    raises in users' tests) could not be unpickled (their __init__ wants more than
    Exception.args holds), and the run stopped with a TypeError instead of the failure.
    HandshakeRefused's ``response`` (Django's, with its request) stays behind."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    data = {k: v for k, v in vars(error).items() if k != "response"}
    assert {k: v for k, v in vars(copy).items() if k != "response"} == data
