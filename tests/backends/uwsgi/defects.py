"""uWSGI defects that make shared server tests impossible, as marks on those tests.

Every server-parametrized test runs against the uWSGI servers of ``tests/servers.py``
too. Where uWSGI's own C code makes a test impossible, the test is marked here with the
defect, as a *strict* xfail: a uWSGI that fixed it would make the test pass, which
fails the run and shows up. Each defect is a row of the capability table in
``docs/backends.rst`` and is asserted on its own in ``tests/backends/uwsgi/test_defects.py``.

A strict xfail names where it must fail, so that a test failing earlier for another
reason (a regression of ours) does not pass for the defect: every mark has
``raises=DefectShown``, and only the defect's own signature raises it -- in
``test_defects.py``, :func:`check` at the point the defect shows; here, a :class:`Where`
per marked test (the exception, the test's source line, what its frame holds), checked
on the failing traceback. Any other failure of a marked test fails the run.

One defect is not deterministic: ``--async --ugreen`` on Python 3.11 corrupts memory
when concurrent requests end out of order, which crashes the worker sooner or later.
Tests that keep several connections open at once on ``uwsgi-async`` are skipped with
that reason (a strict xfail could pass by luck); ``test_defects.py`` asserts the crash.

Loaded from ``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import linecache
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests import defects
from tests.defects import DefectShown
from tests.wire import defect_waits

__all__ = ["DEFECTS", "DefectShown", "Where", "check", "defect", "pytest_collection_modifyitems"]

#: The servers running the uwsgi backend, and the one running the default backend.
UWSGI_BACKEND = frozenset({"uwsgi-gevent", "uwsgi-async"})
UWSGI_TAKEOVER = frozenset({"uwsgi-takeover"})

DEFECTS = {
    "empty-message": (
        "uWSGI defect: websocket_recv_nb() returns b'' both for 'nothing ready' and for "
        "an empty message, so empty messages are lost"
    ),
    "opcode-lost": (
        "uWSGI defect: websocket_recv*() drop the opcode; a binary message that is valid "
        "UTF-8 arrives as str"
    ),
    "close-reply": (
        "uWSGI defect: websocket_recv*() answer the peer's close frame themselves with "
        "an empty close frame (no status code, RFC 6455 5.5.1) and drop its code"
    ),
    "empty-pong": "uWSGI defect: pings are answered with an empty pong (payload not echoed)",
    "no-validation": (
        "uWSGI defect: reserved opcodes, RSV bits and unmasked frames are not rejected (no 1002)"
    ),
    "no-deflate": "uWSGI defect: no permessage-deflate (RFC 7692) in uWSGI's websocket API",
    "pipelined": (
        "uWSGI defect: bytes a client sends before the 101 stay in uWSGI's HTTP parser "
        "buffer, out of Python's reach, so a raw takeover loses them"
    ),
    "router-half-close": (
        "uWSGI defect: the --http router ends the whole connection when the client shuts "
        "down its write side (TCP FIN): what the app sends after it never arrives"
    ),
    "ugreen-crash": (
        "uWSGI defect: --async --ugreen corrupts Python 3.11's frame chain when "
        "concurrent requests end out of order (worker segfault)"
    ),
}


def defect(name: str) -> pytest.MarkDecorator:
    """The strict xfail of a test that must fail by :func:`check` (or a :class:`Where`)
    finding defect ``name`` (a key of :data:`DEFECTS`, or a description)."""
    return pytest.mark.xfail(strict=True, reason=DEFECTS.get(name, name), raises=DefectShown)


def check(name: str, observed: object, *, correct: object, signature: object) -> None:
    """:func:`tests.defects.check` for uWSGI defect ``name`` (a key of :data:`DEFECTS`, or
    a description)."""
    defects.check(DEFECTS.get(name, name), observed, correct=correct, signature=signature)


@dataclass(frozen=True)
class Where:
    """Where a defect makes a shared test fail: the exception ``raises``, raised at a line
    of the test module containing ``line``, whose frame's locals satisfy ``shows``."""

    raises: type[BaseException]
    line: str
    shows: Callable[[dict[str, Any]], bool] = lambda _locals: True

    def matches(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.raises):
            return False
        tb = exc.__traceback__
        while tb is not None:
            source = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
            if self.line in source and self.shows(tb.tb_frame.f_locals):
                return True
            tb = tb.tb_next
        return False


def _empty(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get(name) in ("", b"")


def _closed_without_code(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: getattr(frame.get(name), "close_code", None) == 1005


def _empty_header(frame: dict[str, Any]) -> bool:
    return frame.get("extensions") is None


_ECHO = "client.recv(timeout=TIMEOUT)"

# (test function, parameter id or None for all) -> (defect, where), for the uwsgi backend.
_BACKEND: dict[tuple[str, str | None], tuple[str, Where]] = {
    ("test_echo", None): ("empty-message", Where(TimeoutError, _ECHO, _empty("message"))),
    ("test_fragmented_messages", None): (
        "opcode-lost",
        Where(AssertionError, 'recv(timeout=TIMEOUT) == b"\\x01\\x02\\x03"'),
    ),
    ("test_compression_negotiated_unless_the_client_declines", "deflate"): (
        "no-deflate",
        Where(AssertionError, '"permessage-deflate" in extensions)', _empty_header),
    ),
    ("test_compression_negotiated_unless_the_client_declines", "None"): (
        "empty-message",
        Where(TimeoutError, _ECHO, _empty("message")),
    ),
    ("test_ping_pong", None): (
        "empty-pong",
        Where(AssertionError, 'client.ping(b"client ping").wait(TIMEOUT)'),
    ),
    ("test_client_closes_with_code_and_reason", None): (
        "close-reply",
        Where(AssertionError, "client.close_code == 4000", _closed_without_code("client")),
    ),
    ("test_nothing_after_the_close_frame_when_the_client_closes", None): (
        "close-reply",
        Where(AssertionError, "assert frames ==", lambda f: f.get("frames") == [(0x88, b"")]),
    ),
    ("test_protocol_error_closes_1002_and_eof", None): (
        "no-validation",
        Where(TimeoutError, "data = read_until_eof(client.sock)"),
    ),
    ("test_many_clients_at_once", None): (
        "close-reply",
        Where(AssertionError, "ws.close_code == 1000", _closed_without_code("ws")),
    ),
    ("test_leaving_is_announced", None): (
        "close-reply",
        Where(AssertionError, "bob.close_code == 1000", _closed_without_code("bob")),
    ),
}
_TAKEOVER: dict[tuple[str, str | None], tuple[str, Where]] = {
    ("test_handshake_and_first_frame_in_one_segment", None): (
        "pipelined",
        Where(TimeoutError, 'client.recv() == "in the same segment"'),
    ),
}
# Tests that hold several connections open at once: skipped on uwsgi-async.
_CONCURRENT = frozenset(
    {
        "test_many_clients_at_once",
        "test_every_server_with_redis",
        "test_messages_reach_everyone_in_the_room",
        "test_rooms_are_separate",
        "test_leaving_is_announced",
        "test_client_closes_with_code_and_reason",
    }
)


def _server_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for key in ("server", "name"):
        value = callspec.params.get(key)
        if isinstance(value, str) and value.startswith("uwsgi-"):
            return value
    return None


def _lookup(
    table: dict[tuple[str, str | None], tuple[str, Where]], item: pytest.Item
) -> tuple[str, Where] | None:
    name = getattr(item, "originalname", item.name)
    params = item.callspec.params  # type: ignore[attr-defined]
    for (test, param), defect in table.items():
        if test != name:
            continue
        if param is None or param in {str(v) for v in params.values()}:
            return defect
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the shared tests that a uWSGI defect makes impossible (see the module doc)."""
    for item in items:
        server = _server_of(item)
        if server is None:
            continue
        name = getattr(item, "originalname", item.name)
        if server == "uwsgi-async" and name in _CONCURRENT:
            item.add_marker(pytest.mark.skip(reason=DEFECTS["ugreen-crash"]))
            continue
        table = _BACKEND if server in UWSGI_BACKEND else _TAKEOVER
        found = _lookup(table, item)
        if found is not None:
            item.add_marker(defect(found[0]))
            _fail_as_defect(item, *found)


def _fail_as_defect(item: pytest.Item, name: str, where: Where) -> None:
    """Make ``item`` raise :class:`DefectShown` when it fails as ``where`` says, and only
    then (the test's own exception otherwise)."""
    test = item.obj  # type: ignore[attr-defined]

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with defect_waits(test):
                return test(*args, **kwargs)
        except BaseException as exc:
            if where.matches(exc):
                raise DefectShown(f"{DEFECTS[name]} (at {where.line!r})") from exc
            raise

    item.obj = run  # type: ignore[attr-defined]
