"""``manage.py websocket_send`` and ``websocket_status`` given bad input: a ``CommandError``
that says what is wrong (exit status 1, one line), never a traceback. (Their normal use:
``tests/groups/test_servers.py``, ``tests/metrics/``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.groups.redis_server import RedisServer
from tests.requirements import REDIS_SETUP, executable
from tests.servers import REPO

TIMEOUT = 60


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    executable("redis-server", REDIS_SETUP)
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def manage(
    *args: str | bytes, groups_url: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python tests/manage.py ARGS`` in a process of its own (what a user sees)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "manage.py"), *args],
        input=stdin,
        capture_output=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DWEBSOCKET_TEST_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": groups_url}),
            **(env or {}),
        },
        cwd=REPO,
        timeout=TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def assert_command_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("CommandError: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# -- websocket_send ---------------------------------------------------------------------


def test_send_an_empty_group_name(redis_url: str) -> None:
    assert_command_error(manage("websocket_send", "", "hi", groups_url=redis_url), "GROUP")


def test_send_text_that_is_not_utf8(redis_url: str) -> None:
    # An argument that is not UTF-8 reaches Python as lone surrogates.
    result = manage("websocket_send", "room", b"caf\xe9", groups_url=redis_url)
    assert_command_error(result, "UTF-8", "--binary-file")


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_send_lines_that_are_not_utf8(redis_url: str, locale: str) -> None:
    """Standard input in Latin-1: the lines before the bad one are sent, and counted."""
    result = manage(
        "websocket_send",
        "room",
        "-",
        groups_url=redis_url,
        stdin=b"one\ntwo\ncaf\xe9\nfour\n",
        env={"LC_ALL": locale, "PYTHONIOENCODING": ""},
    )
    assert_command_error(result, "line 3", "UTF-8", "2 message(s) sent before")


def test_send_with_a_groups_url_that_cannot_work() -> None:
    result = manage("websocket_send", "room", "hi", groups_url="redis://127.0.0.1:notaport/0")
    assert_command_error(result, "WEBSOCKET_GROUPS_URL", "notaport")
