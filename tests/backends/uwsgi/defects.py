"""uWSGI defects that make shared server tests impossible, as marks on those tests.

Every server-parametrized test runs against the uWSGI servers of ``tests/servers.py``
too. Where uWSGI's own C code makes a test impossible, the test is marked here with the
defect, as a *strict* xfail: a uWSGI that fixed it would make the test pass, which
fails the run and shows up. Each defect is a row of the capability table in
``docs/backends.rst`` and is asserted on its own in ``tests/backends/uwsgi/test_defects.py``.

One defect is not deterministic: ``--async --ugreen`` on Python 3.11 corrupts memory
when concurrent requests end out of order, which crashes the worker sooner or later.
Tests that keep several connections open at once on ``uwsgi-async`` are skipped with
that reason (a strict xfail could pass by luck); ``test_defects.py`` asserts the crash.

Loaded from ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest

__all__ = ["DEFECTS", "pytest_collection_modifyitems"]

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
    "ugreen-crash": (
        "uWSGI defect: --async --ugreen corrupts Python 3.11's frame chain when "
        "concurrent requests end out of order (worker segfault)"
    ),
}

# (test function, parameter id or None for all) -> defect, for the uwsgi backend.
_BACKEND: dict[tuple[str, str | None], str] = {
    ("test_echo", None): "empty-message",
    ("test_fragmented_messages", None): "opcode-lost",
    ("test_compression_negotiated_unless_the_client_declines", "deflate"): "no-deflate",
    ("test_compression_negotiated_unless_the_client_declines", "None"): "empty-message",
    ("test_ping_pong", None): "empty-pong",
    ("test_client_closes_with_code_and_reason", None): "close-reply",
    ("test_nothing_after_the_close_frame_when_the_client_closes", None): "close-reply",
    ("test_protocol_error_closes_1002_and_eof", None): "no-validation",
    ("test_many_clients_at_once", None): "close-reply",
    ("test_leaving_is_announced", None): "close-reply",
}
_TAKEOVER: dict[tuple[str, str | None], str] = {
    ("test_handshake_and_first_frame_in_one_segment", None): "pipelined",
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


def _lookup(table: dict[tuple[str, str | None], str], item: pytest.Item) -> str | None:
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
        defect = _lookup(table, item)
        if defect is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=DEFECTS[defect]))
