"""Fixtures for the demo's tests: chat pages in the session's Chromium (``browser``,
``tests/browser.py``), and demo processes that are always stopped.

Without Chromium or Redis the tests that need them are skipped locally and fail on CI
(``CI`` set).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import WAIT_MS
from tests.demo.demo_server import start_demo
from tests.requirements import missing
from tests.servers import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REDIS = ("127.0.0.1", 6379)
#: A Redis database number of its own; pub/sub channels are server-wide, so each test
#: also uses a room name of its own.
REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``open_chat(srv, room, name)``: a chat page, in a browser context of its own (its
    own storage, like another person's browser), connected and welcomed."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    contexts = []

    def open_(srv: ServerProcess, room: str, name: str, **context: Any) -> Page:
        ctx = browser.new_context(
            viewport={"width": 960, "height": 600},
            locale="en-US",
            timezone_id="UTC",
            **context,
        )
        ctx.set_default_timeout(WAIT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(srv.url(f"/r/{room}/?name={name}", scheme="http"))
        expect(page.locator("body")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        expect(page.locator("#members")).to_contain_text(name, timeout=WAIT_MS)
        return page

    yield open_
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``demo(**kwargs)``: a demo process (see ``start_demo``) on a database of this test
    (shared by every process the test starts), stopped after the test."""
    started: list[ServerProcess] = []

    def start(**kwargs: Any) -> ServerProcess:
        kwargs.setdefault("db", tmp_path / "chat.sqlite3")
        srv = start_demo(tmp_path / f"demo-{len(started)}.log", **kwargs)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
    for srv in started:
        log = srv.log()
        assert "Traceback" not in log, f"the demo printed a traceback:\n{log}"


@pytest.fixture
def redis_url() -> str:
    try:
        socket.create_connection(REDIS, timeout=2).close()
    except OSError:
        missing(f"Redis on {REDIS[0]}:{REDIS[1]}")
    return REDIS_URL
