"""Fixtures shared by every test layer.

``server``: a real server process (parametrized over ``tests.servers.SERVERS``), one per
name for the whole session; tests marked ``server`` use it. ``make_server``: one with
extra settings, stopped after the test. Both check at the end that the server printed no
traceback. ``redis_url``: a private redis-server for a test module.

The shared suite is every test that uses ``server`` and not ``browser``; collection marks
them ``shared``. A browser test stays out: the matrix (``noxfile.py``) runs the shared suite
on the other Python x Django pairs without Playwright, and what a browser test checks (the
page's client against a server) does not change with the pair; ``make coverage`` runs it.
``DWEBSOCKET_TEST_SERVERS=runserver,gevent`` runs it on those servers only (the test
matrix, ``noxfile.py``, does that on the interpreters other than the main one).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.uwsgi.defects import pytest_collection_modifyitems  # noqa: F401 - uWSGI defect marks
from tests.browser import browser  # noqa: F401 - one Chromium for the session's browser tests
from tests.groups.redis_server import RedisServer
from tests.requirements import REDIS_SETUP, executable
from tests.servers import ServerProcess, shared_servers, start_server

# A run started in the background by a shell without job control (``(make test &)``)
# inherits SIGINT ignored (POSIX), and so would every server it starts: the tests that
# stop a server with Ctrl-C would wait for a stop that never comes (a test that saves and
# restores SIGINT would bring the ignoring back, so this is not left to them). A Python
# handler here becomes the default disposition in the processes the tests start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _no_browser_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Playwright's sync API (the session's ``browser``) leaves its event loop set as the
    main thread's running loop for the rest of the session: a later test's
    ``asyncio.run()`` there refuses to start ("cannot be called from a running event
    loop"), although it passes alone. A test without the browser runs without that loop."""
    loop = asyncio.events._get_running_loop()
    if loop is None or "browser" in request.fixturenames:
        yield
        return
    asyncio.events._set_running_loop(None)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(loop)


def assert_no_traceback(server: ServerProcess, since: int = 0) -> None:
    log = server.log(since)
    assert "Traceback" not in log, f"{server.name} printed a traceback:\n{log}"


def pytest_itemcollected(item: pytest.Item) -> None:
    fixtures = getattr(item, "fixturenames", ())
    if "server" in fixtures and "browser" not in fixtures:
        item.add_marker(pytest.mark.shared)


@pytest.fixture(scope="session", params=shared_servers())
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = start_server(request.param, tmp_path_factory.mktemp(request.param) / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
    assert_no_traceback(srv)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(name: str, **kwargs: Any) -> ServerProcess:
        srv = start_server(name, tmp_path / f"{name}-{len(started)}.log", **kwargs)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
    for srv in started:
        assert_no_traceback(srv)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The URL of a private redis-server, one per test module (a skip without
    redis-server locally, a failure on CI)."""
    executable("redis-server", REDIS_SETUP)
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()
