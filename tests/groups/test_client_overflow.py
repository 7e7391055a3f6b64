"""A member too slow for its group is closed with 1008 "send queue overflow" (past
``WEBSOCKET_SEND_QUEUE_SIZE``): both clients reconnect then, with the backoff, and
recover what they missed; any other 1008 stays final (``tests/test_client.py``,
``test_client_browser.py``). Real gevent servers, a real private ``redis-server`` through
which this process publishes (a task worker), real sockets; the browser client in
headless Chromium."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from secrets import token_hex
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from dwebsocket.client import Event, ReconnectingClient
from dwebsocket.exceptions import ConnectionClosed
from dwebsocket.groups.redis import RedisLayer
from tests.browser import WAIT_MS
from tests.groups.conftest import FEED_HISTORY
from tests.groups.proxy import Proxy
from tests.groups.redis_server import RedisServer
from tests.servers import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.server

WAIT = 20.0
#: The servers' WEBSOCKET_SEND_QUEUE_SIZE: small, so a member that stops reading is
#: dropped after a few MiB (what the kernel's buffers and the proxy's take, then this).
QUEUE = 64 * 1024


@pytest.fixture
def server(redis_server: RedisServer, make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server(
        "gevent",
        settings={
            "WEBSOCKET_GROUPS_URL": redis_server.url,
            "WEBSOCKET_GROUPS_HISTORY": FEED_HISTORY,
            "WEBSOCKET_SEND_QUEUE_SIZE": QUEUE,
            # Only the overflow may end the slow member's connection, and its close
            # frame must wait for the client to read up to it.
            "WEBSOCKET_PING_INTERVAL": None,
            "WEBSOCKET_CLOSE_TIMEOUT": WAIT,
        },
    )


def members(server: ServerProcess) -> int:
    """The server's count of ``feed``'s members (in its one process)."""
    url = server.url("/group/feed/status/", scheme="http")
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        count: int = json.load(response)["members"]
        return count


def flood_until_dropped(server: ServerProcess, worker: RedisLayer) -> list[str | None]:
    """Publish to ``feed`` until the server has no member left in it (the slow one was
    closed for overflow); the positions, in order. At most 64 MiB."""
    sent: list[str | None] = []
    while members(server):
        assert len(sent) < 4096, "the slow member was never dropped"
        # Random each (hex: what deflate cannot shrink much, with or without the window
        # of the messages before): the browser negotiates permessage-deflate.
        sent += [worker.send("feed", f"{len(sent) + i:06d}{token_hex(8000)}") for i in range(32)]
    return sent


def test_a_member_closed_for_overflow_reconnects_and_recovers_everything(
    server: ServerProcess, worker: RedisLayer
) -> None:
    """The client stops calling ``recv()``: the server drops it (1008 "send queue
    overflow") while this process goes on publishing. When it reads again it gets what
    was in flight, the close, reconnects by itself from the last position it read and
    recovers the rest: every message once, in order. Before, 1008 was final: the
    ``recv()`` after the close raised ``ConnectionClosed``."""
    events: list[Event] = []
    client = ReconnectingClient(
        server.url("/group/feed/follow/"), min_delay=0.05, max_delay=0.2, on_event=events.append
    )
    with client:
        assert json.loads(client.recv(WAIT).data)["recovery"]["recovered"] is False
        sent = flood_until_dropped(server, worker)
        sent += [worker.send("feed", f"missed {i}") for i in range(5)]
        got = []
        while len(got) < len(sent):
            received = client.recv(WAIT)
            if received.group is not None:
                got.append(received)
        assert [r.position for r in got] == sent
        assert [r.data[:6] for r in got[:-5]] == [f"{i:06d}" for i in range(len(sent) - 5)]
        assert [r.data for r in got[-5:]] == [f"missed {i}" for i in range(5)]
        live = worker.send("feed", "live")
        while (received := client.recv(WAIT)).group is None:
            pass
        assert (received.data, received.position) == ("live", live)
    closes = [e for e in events if e.type == "close"]
    assert (closes[0].code, closes[0].reason, closes[0].will_retry) == (
        1008,
        "send queue overflow",
        True,
    )
    assert [e.reconnect for e in events if e.type == "open"] == [False, True]
    (recovered,) = [e for e in events if e.type == "recovered"]
    assert recovered.missed > 0 and not [e for e in events if e.type == "recovery_failed"]


def test_overflow_closes_soon_after_opening_back_off(server: ServerProcess) -> None:
    """A client closed with 1008 "send queue overflow" right after each connection opens
    (the view ``/close/`` sends that close: the same frame) reconnects each time, and the
    backoff grows: a connection that did not stay open ``stable`` seconds does not start
    it over, so a persistently slow client backs off instead of looping."""
    closes: list[tuple[Event, int]] = []

    def on_event(event: Event) -> None:
        if event.type == "close":
            closes.append((event, client.attempts))

    client = ReconnectingClient(
        server.url("/close/?code=1008&reason=send+queue+overflow"),
        min_delay=0.01,
        max_delay=60.0,
        stable=60.0,
        on_event=on_event,
    )
    with client:
        for _ in range(4):
            client.connect(WAIT)
            client.send("close, please")
            with pytest.raises(TimeoutError):
                client.recv(0.3)  # reads the close, waits, reconnects: no message
    assert [attempts for _, attempts in closes] == [1, 2, 3, 4]
    assert all(e.will_retry and e.code == 1008 for e, _ in closes)
    assert all((e.delay or 0) <= 0.01 * 2**n for n, (e, _) in enumerate(closes))


# -- the browser client --------------------------------------------------------------------


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[Proxy]:
    balancer = Proxy(server.port)
    try:
        yield balancer
    finally:
        balancer.close()


@pytest.fixture
def page(browser: Browser, proxy: Proxy) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        opened = context.new_page()
        opened.goto(proxy.url("/group/page/?group=feed", scheme="http"))
        opened.wait_for_function("window.events && window.events.some(e => e[0] === 'joined')")
        yield opened
    finally:
        context.close()


def events(page: Page, kind: str) -> list[Any]:
    found: list[Any] = page.evaluate(f"events.filter(e => e[0] === '{kind}').map(e => e[1])")
    return found


def test_the_page_closed_for_overflow_reconnects_and_recovers_everything(
    server: ServerProcess, worker: RedisLayer, proxy: Proxy, page: Page
) -> None:
    """The page stops reading: the proxy between it and the server (its load balancer)
    reads nothing more from the server, whose writes back up until it drops the page (1008
    "send queue overflow") while this process publishes. Then the page gets what was in
    flight, the close, reconnects and recovers the rest: every message once, in order.
    Before, 1008 was final: no reconnection, the rest lost. (The slow reader is the
    network here, not the page: Chromium went on reading 64 MiB for a page whose main
    thread was blocked, the server never saw it fall behind.)"""
    proxy.pause()
    sent = flood_until_dropped(server, worker)
    sent += [worker.send("feed", f"missed {i}") for i in range(5)]
    proxy.resume()
    page.wait_for_function(f"window.got.length >= {len(sent)}")
    got = page.evaluate("window.got.map(m => [m[0].slice(0, 9), m[1]])")
    assert [m[1] for m in got] == sent
    assert [m[0][:6] for m in got[:-5]] == [f"{i:06d}" for i in range(len(sent) - 5)]
    assert [m[0] for m in got[-5:]] == [f"missed {i}" for i in range(5)]
    live = worker.send("feed", "live")
    page.wait_for_function(f"window.got.length >= {len(sent) + 1}")
    assert page.evaluate("window.got[window.got.length - 1]") == ["live", live]
    (close,) = events(page, "close")
    assert (close["code"], close["reason"], close["willRetry"]) == (
        1008,
        "send queue overflow",
        True,
    )
    assert events(page, "open")[-1]["reconnect"] is True
    (recovered,) = events(page, "recovered")
    assert recovered["missed"] > 0 and not events(page, "recoveryfailed")


def test_overflow_closes_soon_after_opening_back_off_in_the_browser(
    server: ServerProcess, page: Page
) -> None:
    """As ``test_overflow_closes_soon_after_opening_back_off``, for ``dwebsocket.js``."""
    closes = page.evaluate(
        """() => new Promise((done) => {
            const closes = [];
            const s = new dwebsocket.Socket(
                "/close/?code=1008&reason=send%20queue%20overflow",
                {minDelay: 10, maxDelay: 60000, stable: 60000});
            s.on("open", () => s.send("close now, please"));
            s.on("close", (e) => {
                closes.push([e.code, e.reason, e.willRetry, e.delay, s.attempts]);
                if (closes.length === 4 || !e.willRetry) { s.close(); done(closes); }
            });
        })"""
    )
    assert [c[4] for c in closes] == [1, 2, 3, 4]
    assert all(c[:3] == [1008, "send queue overflow", True] for c in closes)
    assert all(c[3] <= 10 * 2**n for n, c in enumerate(closes))


@pytest.mark.parametrize("reason", ["not allowed", "send queue overflow!", "Send queue overflow"])
def test_any_other_1008_stays_final(server: ServerProcess, page: Page, reason: str) -> None:
    """A view closing with 1008 itself, with any reason but exactly "send queue overflow":
    both clients stay closed (a retry would have come by now: ``min_delay`` 10 ms)."""
    url = f"/close/?code=1008&reason={quote(reason)}"
    events: list[Event] = []
    client = ReconnectingClient(server.url(url), min_delay=0.01, on_event=events.append)
    client.connect(WAIT)
    client.send("close, please")
    with pytest.raises(ConnectionClosed) as raised:
        client.recv(WAIT)
    assert (raised.value.code, raised.value.reason) == (1008, reason)
    assert [(e.type, e.will_retry) for e in events] == [("open", False), ("close", False)]
    closed = page.evaluate(
        """(url) => new Promise((done) => {
            let opens = 0;
            const s = new dwebsocket.Socket(url, {minDelay: 10});
            s.on("open", () => { opens++; s.send("close now, please"); });
            s.on("close", (e) => setTimeout(
                () => done([e.code, e.reason, e.willRetry, opens]), 500));
        })""",
        url,
    )
    assert closed == [1008, reason, False, 1]
