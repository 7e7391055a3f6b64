"""The browser client (``dwebsocket/static/dwebsocket/``) in headless Chromium against real
gevent servers, a real private ``redis-server`` and the proxy standing for a load
balancer. The page is ``tests/groups/views.py``'s ``PAGE``: it records group messages in
``window.got`` (``[data, position]``) and events in ``window.events``."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.test import override_settings

import dwebsocket
from dwebsocket.client import ReconnectingClient
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from tests.browser import WAIT_MS
from tests.groups.conftest import FEED_HISTORY
from tests.groups.proxy import Proxy
from tests.groups.redis_server import RedisServer
from tests.servers import HOST, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.server  # real servers and Chromium: not the unit layer

STATIC = Path(dwebsocket.__file__).parent / "static" / "dwebsocket"


def test_the_client_is_under_5_kb_gzipped() -> None:
    """The contract: < 5 KB gzipped, the plain script and the ES module entry together."""
    size = sum(len(gzip.compress(path.read_bytes(), 9)) for path in STATIC.glob("*.js"))
    assert size < 5 * 1024, size


@pytest.fixture
def start(
    redis_server: RedisServer, make_server: Callable[..., ServerProcess]
) -> Callable[[], ServerProcess]:
    settings = {"WEBSOCKET_GROUPS_URL": redis_server.url, "WEBSOCKET_GROUPS_HISTORY": FEED_HISTORY}
    return lambda: make_server("gevent", settings=settings)


@pytest.fixture
def balancer() -> Iterator[Callable[[ServerProcess], Proxy]]:
    made: list[Proxy] = []

    def make(server: ServerProcess) -> Proxy:
        made.append(Proxy(server.port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[str], Page]]:
    contexts = []

    def open_(url: str) -> Page:
        context = browser.new_context()
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("window.events && window.events.some(e => e[0] === 'joined')")
        return page

    yield open_
    for context in contexts:
        context.close()


def events(page: Page, kind: str) -> list[Any]:
    found: list[Any] = page.evaluate(f"events.filter(e => e[0] === '{kind}').map(e => e[1])")
    return found


def wait_for_messages(page: Page, count: int) -> list[Any]:
    page.wait_for_function(f"window.got.length >= {count}")
    got: list[Any] = page.evaluate("window.got")
    return got


def test_the_page_recovers_what_it_missed_while_the_server_was_down(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    worker: RedisLayer,
    open_page: Callable[[str], Page],
) -> None:
    """Kill the server (SIGKILL), publish while it is down, start it again: the page
    reconnects by itself and gets the missed messages, then the live ones, in order."""
    server = start()
    proxy = balancer(server)
    page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
    sent = [worker.send("feed", f"before {i}") for i in range(5)]
    assert [m[0] for m in wait_for_messages(page, 5)] == [f"before {i}" for i in range(5)]

    server.stop(signal.SIGKILL)
    page.wait_for_function("window.events.some(e => e[0] === 'close')")
    sent += [worker.send("feed", f"missed {i}") for i in range(20)]
    restarted = start()
    proxy.target(restarted.port)
    page.wait_for_function("window.events.some(e => e[0] === 'recovered')")
    sent += [worker.send("feed", f"after {i}") for i in range(5)]

    got = wait_for_messages(page, 30)
    assert [m[0] for m in got] == (
        [f"before {i}" for i in range(5)]
        + [f"missed {i}" for i in range(20)]
        + [f"after {i}" for i in range(5)]
    )
    assert [m[1] for m in got] == sent
    (recovered,) = events(page, "recovered")
    assert recovered["missed"] == 20 and recovered["since"] == sent[4]
    assert not events(page, "recoveryfailed")
    closes = events(page, "close")
    assert all(c["willRetry"] for c in closes) and closes[0]["code"] == 1006
    assert events(page, "open")[-1]["reconnect"] is True


def test_a_resume_redis_could_not_serve_is_not_made_again_later(
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    worker: RedisLayer,
    open_page: Callable[[str], Page],
) -> None:
    """The page comes back while its server cannot reach Redis: "recoveryfailed" with no
    position, and the view sends the full state, which has what the page missed. Its next
    reconnection, Redis back, resumed from the old position all the same: the missed
    message came again on top of that full state, told "recovered". It is now a first
    visit, told "recoveryfailed" again (as ``test_history_servers.py``'s client)."""
    link = Proxy(redis_server.port)  # the server's way to Redis, which the test cuts
    try:
        server = make_server(
            "gevent",
            settings={
                "WEBSOCKET_GROUPS_URL": f"redis://{HOST}:{link.port}/0?socket_timeout=1",
                "WEBSOCKET_GROUPS_HISTORY": FEED_HISTORY,
            },
        )
        proxy = balancer(server)
        page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
        seen = worker.send("feed", "seen")
        wait_for_messages(page, 1)
        proxy.cut()
        page.wait_for_function("window.events.some(e => e[0] === 'close')")
        worker.send("feed", "missed")  # kept; in the full state the view sends next
        link.cut()
        proxy.restore()
        page.wait_for_function("window.events.some(e => e[0] === 'recoveryfailed')")
        assert page.evaluate("'feed' in sock.positions") is False  # given up
        link.restore()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not _reaches_redis(server):
            assert time.monotonic() < deadline, "the server never reached Redis again"
            time.sleep(0.2)
        page.evaluate("sock.ws.close()")
        page.wait_for_function("window.events.filter(e => e[0] === 'joined').length >= 3")
    finally:
        link.close()
    assert [m[0] for m in page.evaluate("window.got")] == ["seen"]
    assert not events(page, "recovered")
    assert [e["since"] for e in events(page, "recoveryfailed")] == [seen, seen]


def _reaches_redis(server: ServerProcess) -> bool:
    """True if a join on ``server`` gets a position: it can read Redis."""
    with ReconnectingClient(server.url("/group/feed/follow/")) as probe:
        report = json.loads(probe.recv(WAIT_MS / 1000).data)["recovery"]
    return report["position"] is not None


def test_a_page_that_followed_many_groups_still_reconnects(
    start: Callable[[], ServerProcess], worker: RedisLayer, open_page: Callable[[str], Page]
) -> None:
    """Positions of 300 groups make a ``dws_since`` of ~19 KB: the server refused every
    attempt (414) and the page retried for ever. The client now sends those that fit in
    ``sinceLimit``, the most recent first; a group left out and joined again gets
    "recoveryfailed" with its ``since``, one kept is recovered."""
    server = start()
    page = open_page(server.url("/group/page/?group=feed", scheme="http"))
    first = worker.send("feed", "m0")
    worker.send("feed", "missed")
    wait_for_messages(page, 2)
    outcomes = page.evaluate(
        """(feed) => Promise.all([true, false].map((feedFirst) => new Promise((done) => {
            const positions = feedFirst ? {feed} : {};
            for (let i = 0; i < 300; i++) positions["room-" + i] = "1733312345678901:" + i;
            if (!feedFirst) positions.feed = feed;
            const s = new dwebsocket.Socket("/group/feed/follow/", {positions, minDelay: 100});
            const end = (e) => { s.close(); done(e); };
            let closes = 0;
            s.on("close", (e) => { if (++closes === 3) end(["close", e.code]); });
            s.on("recovered", (e) => end(["recovered", e.since, e.missed]));
            s.on("recoveryfailed", (e) => end(["recoveryfailed", e.since]));
        })))""",
        first,
    )
    assert outcomes == [["recoveryfailed", first], ["recovered", first, 1]]


def test_the_es_module_and_binary_messages(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    worker: RedisLayer,
    open_page: Callable[[str], Page],
) -> None:
    proxy = balancer(start())
    page = open_page(proxy.url("/group/page/?group=feed&module=1", scheme="http"))
    position = worker.send("feed", b"\x00\x01\xfe\xff")
    assert wait_for_messages(page, 1) == [[[0, 1, 254, 255], position]]
    assert page.evaluate("sock.positions") == {"feed": position}
    assert page.evaluate("sock.send('from the page')") is True
    page.wait_for_function("window.got.length >= 2")
    assert page.evaluate("window.got[1][0]") == "from the page"


def test_a_binary_group_message_arrives_as_binary_type_says(
    start: Callable[[], ServerProcess], worker: RedisLayer, open_page: Callable[[str], Page]
) -> None:
    """With ``binaryType: "blob"`` a binary group message (base64 in its envelope) arrives
    as a ``Blob``, as any other binary message does; it came as an ``ArrayBuffer``
    whatever the option."""
    page = open_page(start().url("/group/page/?group=feed", scheme="http"))
    page.evaluate(
        """() => new Promise((joined) => {
            window.blobs = [];
            const s = window.blobby = new dwebsocket.Socket("/group/feed/follow/",
                {binaryType: "blob"});
            s.on("joined", joined);
            s.on("message", (data, meta) => {
                if (!meta.group) return;
                const isBlob = data instanceof Blob;
                new Response(data).arrayBuffer().then(
                    (b) => blobs.push([isBlob, [...new Uint8Array(b)]]));
            });
        })"""
    )
    worker.send("feed", b"\x00\x01\xfe\xff")
    page.wait_for_function("window.blobs.length >= 1")
    page.evaluate("blobby.close()")
    assert page.evaluate("blobs") == [[True, [0, 1, 254, 255]]]


def test_the_heartbeat_finds_a_silent_connection_and_recovers(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    worker: RedisLayer,
    open_page: Callable[[str], Page],
) -> None:
    """The connection goes silent without closing (the proxy forwards nothing more): the
    client pings after 300 ms of silence, gives up 300 ms later (4002), reconnects and
    recovers what was sent meanwhile. Before that, the library answers its pings."""
    proxy = balancer(start())
    page = open_page(proxy.url("/group/page/?group=feed&ping=300&pingTimeout=2000", scheme="http"))
    page.wait_for_function("window.events.some(e => e[0] === 'dws' && e[1].dws === 'pong')")
    assert page.evaluate("window.plain.filter(m => m.includes('dws')).length") == 0
    page.evaluate("sock.options.pingTimeout = 300")
    proxy.freeze()
    missed = [worker.send("feed", f"m{i}") for i in range(3)]
    page.wait_for_function("window.events.some(e => e[0] === 'recovered')")
    got = wait_for_messages(page, 3)
    assert [m[1] for m in got] == missed
    (close,) = events(page, "close")
    assert close["code"] == 4002 and close["willRetry"] is True


@pytest.mark.parametrize("code", [1008, 4001])
def test_no_reconnection_after_policy_or_revoked_session_closes(
    code: int,
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    open_page: Callable[[str], Page],
) -> None:
    proxy = balancer(start())
    page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
    page.evaluate(
        """(code) => new Promise((done) => {
            window.opens = 0;
            const s = new dwebsocket.Socket(`/close/?code=${code}`, {minDelay: 10});
            s.on("open", () => { window.opens++; s.send("close now, please"); });
            s.on("close", (e) => { window.lastClose = e; setTimeout(done, 500); });
        })""",
        code,
    )
    closed = page.evaluate("window.lastClose")
    assert closed["code"] == code and closed["willRetry"] is False
    assert page.evaluate("window.opens") == 1  # a retry would have come by now (10 ms)


def test_retry_now_in_a_close_handler_opens_one_socket_only(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    open_page: Callable[[str], Page],
) -> None:
    """A "close" handler that calls ``retryNow()`` (say, when the browser is online)
    reconnects at once; the retry the close had scheduled must not open a second socket,
    which would stay open after ``close()`` and keep delivering. The page counts the
    sockets the client makes (``window.WebSocket`` wrapped; the sockets are real)."""
    proxy = balancer(start())
    page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
    page.evaluate(
        """() => new Promise((done) => {
            const Real = window.WebSocket;
            window.made = [];
            window.WebSocket = function (url, protocols) {
                const ws = new Real(url, protocols);
                if (url.includes("/close/")) made.push(ws);
                return ws;
            };
            const s = window.closer = new dwebsocket.Socket("/close/?code=1001",
                {minDelay: 50, maxDelay: 50});
            s.on("open", () => { if (made.length === 1) s.send("close now, please"); });
            s.on("close", (e) => {
                if (!e.willRetry || window.retried) return;
                window.retried = true;
                s.retryNow();
                setTimeout(done, e.delay + 500);  // the scheduled retry would be due by now
            });
        })"""
    )
    assert page.evaluate("made.length") == 2
    assert page.evaluate("made.filter(ws => ws.readyState < 2).length") == 1
    page.evaluate("closer.close()")
    page.wait_for_function("made.every(ws => ws.readyState === 3)")


def test_an_attempt_without_an_answer_times_out_and_is_retried(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    open_page: Callable[[str], Page],
) -> None:
    """A backend that accepts the TCP connection but never answers the handshake (wedged,
    or a half-dead load balancer): the client gives the attempt up after
    ``connectTimeout`` (1006, "connect timeout") and tries again; without that it would wait
    for Chromium's own timeout (minutes). The backend is a listening socket that nobody
    accepts from: the kernel completes the TCP handshake, nothing more ever comes."""
    proxy = balancer(start())
    page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
    with socket.create_server((HOST, 0)) as wedged:
        page.evaluate(
            """(port) => {
                window.wedgedCloses = [];
                window.wedged = new dwebsocket.Socket(`ws://127.0.0.1:${port}/x/`,
                    {connectTimeout: 300, minDelay: 50, maxDelay: 100});
                wedged.on("close", (e) => wedgedCloses.push(e));
            }""",
            wedged.getsockname()[1],
        )
        page.wait_for_function("wedgedCloses.length >= 2")
        closes = page.evaluate("wedgedCloses.slice(0, 2)")  # close() below adds its own
        page.evaluate("wedged.close()")
    assert all(c["code"] == 1006 and c["willRetry"] for c in closes), closes
    assert closes[0]["reason"] == "connect timeout"


def test_a_heartbeat_death_after_a_stable_connection_restarts_the_backoff(
    start: Callable[[], ServerProcess],
    balancer: Callable[[ServerProcess], Proxy],
    open_page: Callable[[str], Page],
) -> None:
    """Attempts fail while the load balancer refuses (the backoff grows), then a
    connection stays open longer than ``stable`` and goes silent: the heartbeat gives up
    on it, and the next wait starts from ``minDelay`` again, as after any other drop of a
    stable connection."""
    server = start()
    proxy = balancer(server)
    page = open_page(proxy.url("/group/page/?group=feed", scheme="http"))
    refusing = balancer(server)
    refusing.cut()
    page.evaluate(
        """(port) => {
            window.beats = [];
            const s = window.beating = new dwebsocket.Socket(
                `ws://127.0.0.1:${port}/group/feed/follow/`,
                {minDelay: 20, maxDelay: 60000, stable: 300, pingInterval: 300, pingTimeout: 300});
            s.on("open", () => { window.openedAt = Date.now(); });
            s.on("close", (e) => beats.push([e.code, e.delay, s.attempts]));
        }""",
        refusing.port,
    )
    page.wait_for_function("beating.attempts >= 4")
    refusing.restore()
    page.evaluate("beating.retryNow()")
    page.wait_for_function("window.openedAt && Date.now() - openedAt > 600")  # > stable
    refusing.freeze()
    page.wait_for_function("beats.some(b => b[0] === 4002)")
    page.evaluate("beating.close()")
    _code, delay, attempts = page.evaluate("beats.find(b => b[0] === 4002)")
    assert attempts == 1 and delay < 20


@pytest.fixture
def gevent(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server("gevent")


@pytest.fixture
def bare_page(browser: Browser, gevent: ServerProcess) -> Iterator[Page]:
    """A page of ``gevent``'s origin with nothing but the client, loaded after
    ``setTimeout`` is counted: ``window.pending`` holds the timers set and not yet run or
    cleared."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(gevent.url("/group/static/dwebsocket/dwebsocket.module.js", scheme="http"))
    page.evaluate(
        """() => {
            const set = window.setTimeout, clear = window.clearTimeout;
            window.pending = new Set();
            window.setTimeout = (fn, ms) => {
                const id = set(() => { pending.delete(id); fn(); }, ms);
                pending.add(id);
                return id;
            };
            window.clearTimeout = (id) => { pending.delete(id); clear(id); };
        }"""
    )
    page.add_script_tag(content=(STATIC / "dwebsocket.js").read_text())
    yield page
    context.close()


def test_close_leaves_no_timer_running(bare_page: Page) -> None:
    """Once the page closed the client and heard its "close", nothing of the client is
    left waiting: before, each attempt's connect timeout stayed set for ``connectTimeout``
    (10 s) after the connection opened, close() or not."""
    closed = bare_page.evaluate(
        """(url) => new Promise((done) => {
            const s = new dwebsocket.Socket(url);
            s.on("open", () => s.close());
            s.on("close", (e) => setTimeout(() => done(e), 0));
        })""",
        "/echo/",
    )
    assert closed["willRetry"] is False
    assert bare_page.evaluate("pending.size") == 0


def test_close_with_a_code_the_browser_refuses_still_closes(bare_page: Page) -> None:
    """``close(1001)`` (a browser may send only 1000 and 3000-4999): the browser's error is
    raised, and the client is closed all the same; before, it counted as closed for good
    but its socket stayed open, delivering messages and never reconnecting."""
    outcome = bare_page.evaluate(
        """(url) => new Promise((done) => {
            const s = window.leaving = new dwebsocket.Socket(url);
            s.on("close", (e) => { window.ended = e; });
            s.on("open", () => {
                let error = null;
                try { s.close(1001, "going away"); } catch (err) { error = err.name; }
                done({error, open: s.isOpen()});
            });
        })""",
        "/echo/",
    )
    assert outcome == {"error": "InvalidAccessError", "open": False}
    bare_page.wait_for_function("window.ended")
    assert bare_page.evaluate("ended.willRetry") is False


def test_a_url_that_can_never_connect_is_reported_to_the_page(bare_page: Page) -> None:
    """A URL the browser refuses outright (``ftp:``): the client stops and says so with a
    "close" event (1006, no retry). It was emitted inside the constructor, before the page
    could listen: nobody heard it."""
    bare_page.evaluate(
        """() => {
            const s = window.bad = new dwebsocket.Socket("ftp://127.0.0.1/x/");
            s.on("close", (e) => { window.badClose = e; });
        }"""
    )
    bare_page.wait_for_function("window.badClose")
    close = bare_page.evaluate("badClose")
    assert close["code"] == 1006 and close["willRetry"] is False
    assert bare_page.evaluate("bad.closed") is True


def test_a_url_with_a_fragment_connects(bare_page: Page) -> None:
    """The page's own URL (``@accept_websocket`` serves the page and the socket at one
    address, as ``/echo/`` does) may carry a fragment, ``#latest``: the client drops it, as
    ``ReconnectingClient`` does. The browser refuses a WebSocket URL with a fragment: the
    client stopped for good (1006, no retry) and never connected."""
    echoed = bare_page.evaluate(
        """(url) => new Promise((done) => {
            const s = window.fragment = new dwebsocket.Socket(url);
            s.on("open", () => s.send("hello"));
            s.on("message", (data) => done(data));
            s.on("close", (e) => done(e));
        })""",
        "/echo/?x=1#latest",
    )
    bare_page.evaluate("fragment.close()")
    assert echoed == "hello"


def test_a_heartbeat_interval_past_what_timers_take_sends_no_ping(bare_page: Page) -> None:
    """``pingInterval: Infinity`` (or anything past 2**31 - 1 ms, 24.8 days: "never"):
    no ping goes out while messages come and go. ``setTimeout`` takes its delay as a
    32-bit integer, so the timer fired at once: a ping after every message received, a
    flood at the speed of the round trip. The server's pongs show each ping; one was
    answered before the second echo, which the page asked for after the first. The
    same for ``connectTimeout: Infinity``: each attempt was given up at once."""
    pongs = bare_page.evaluate(
        """(url) => new Promise((done) => {
            let pongs = 0;
            const s = new dwebsocket.Socket(url,
                {pingInterval: Infinity, connectTimeout: Infinity});
            s.on("close", (e) => done(e));
            s.on("dws", (m) => { if (m.dws === "pong") pongs++; });
            s.on("open", () => s.send("a"));
            s.on("message", (data) => {
                if (data === "a") s.send("b");
                else { s.close(); done(pongs); }
            });
        })""",
        "/echo/",
    )
    assert pongs == 0


def test_a_large_message_over_a_slow_link_is_not_taken_for_a_dead_connection(
    bare_page: Page, gevent: ServerProcess
) -> None:
    """A browser sees a message only once all of it has come, so a message that takes
    longer than ``pingTimeout`` to arrive after a ping looks like a dead connection: here
    1 MiB of random bytes (``/big/``, sent as the connection opens; compression does not
    shrink it) over a link carrying 16 KiB every 10 ms, about 0.7 s, with a ping after
    200 ms of silence and 300 ms for an answer. The first connection is given up (4002);
    each connection given up by the heartbeat waits twice as long on the next, so a later
    one gets the message; one ping answered in time puts ``pingTimeout`` back. Before,
    each reconnection started the message again and was given up again: it never came,
    and the page reconnected for ever."""
    link = Proxy(gevent.port)
    link.throttle(16384, 0.01, to_clients=True)
    try:
        outcome = bare_page.evaluate(
            """(url) => new Promise((done) => {
                const closes = [];
                const s = new dwebsocket.Socket(url,
                    {pingInterval: 200, pingTimeout: 300, minDelay: 50, maxDelay: 50});
                s.on("close", (e) => closes.push(e.code));
                s.on("message", (data) => {
                    const size = data.byteLength;
                    const check = setInterval(() => {
                        if (s._patience !== 1) return;  // a ping answered in time
                        clearInterval(check);
                        s.close();
                        done({size, closes});
                    }, 20);
                });
                setTimeout(() => { s.close(); done({size: 0, closes}); }, 6000);
            })""",
            link.url("/big/?random=1"),
        )
    finally:
        link.close()
    assert outcome["size"] == 2**20, outcome
    assert outcome["closes"] and set(outcome["closes"]) == {4002}, outcome


#: The upload tests' heartbeat (ms): a ping after ``PING`` of silence, ``PATIENCE`` for the
#: answer. Chromium's bufferedAmount leaves out what it handed to the system (here about
#: 1.5 MB: its pipe to the network process, the socket's buffer), so the link is fast
#: enough to carry that well within ``PATIENCE`` (0.5 s): the end of an upload is checked
#: by nothing but the answer.
PING, PATIENCE = 300, 1500
#: 16 MiB of random bytes (nothing for permessage-deflate to shrink) over a link taking
#: 64 KiB every 20 ms, about 3 MB/s: some 6 s, four times ``PATIENCE``; in chunks of
#: ``CHUNK``, the page keeps up to ``AHEAD`` in the browser's buffer.
UPLOAD, CHUNK, AHEAD = 16 << 20, 1 << 20, 8 << 20


@pytest.fixture
def uplink(make_server: Callable[..., ServerProcess]) -> Iterator[Proxy]:
    """A slow uplink (what the page sends: 64 KiB every 20 ms; what it gets at full
    speed) to a server taking messages of ``UPLOAD`` bytes."""
    server = make_server("gevent", settings={"WEBSOCKET_MAX_MESSAGE_SIZE": UPLOAD})
    link = Proxy(server.port, real_link=True)
    link.throttle(1 << 16, 0.02)
    try:
        yield link
    finally:
        link.close()


def upload(page: Page, link: Proxy, chunk: int) -> None:
    """Start sending ``UPLOAD`` bytes to ``/tally/`` with a client of quick heartbeat, in
    one message (``chunk`` 0) or in messages of ``chunk`` bytes, each sent while the
    browser's buffer holds less than ``AHEAD``. It ends at the first "close" or the view's
    answer (its count), or after 20 s: ``window.outcome`` (``ms`` since the upload began)."""
    page.evaluate(
        """([url, size, chunk, ahead, ping, patience]) => {
            const s = new dwebsocket.Socket(url,
                {pingInterval: ping, pingTimeout: patience, minDelay: 50, maxDelay: 50});
            let sent = 0, feed;
            const end = (answer, close) => {
                clearInterval(feed);
                s.close();
                window.outcome = window.outcome
                    || {answer, close, ms: Date.now() - window.uploading};
            };
            s.on("open", () => {
                const data = new Uint8Array(size);
                for (let i = 0; i < size; i += 65536) {
                    crypto.getRandomValues(data.subarray(i, i + 65536));
                }
                window.uploading = Date.now();
                feed = setInterval(() => {
                    while (sent < size && s.ws.bufferedAmount < ahead) {
                        s.send(data.subarray(sent, chunk ? sent + chunk : size));
                        sent += chunk || size;
                    }
                }, 20);
            });
            s.on("message", (answer) => end(answer, null));
            s.on("close", (e) => end(null, e.code));
            setTimeout(() => end(null, null), 20000);
        }""",
        [link.url(f"/tally/?size={UPLOAD}"), UPLOAD, chunk, AHEAD, PING, PATIENCE],
    )


def outcome(page: Page) -> dict[str, Any]:
    page.wait_for_function("window.outcome", timeout=30_000)
    found: dict[str, Any] = page.evaluate("window.outcome")
    return found


@pytest.mark.parametrize("chunk", [0, CHUNK], ids=["one-message", "chunks"])
def test_an_upload_over_a_slow_link_is_not_taken_for_a_dead_connection(
    bare_page: Page, uplink: Proxy, chunk: int
) -> None:
    """The page uploads 16 MiB over a link carrying about 3 MB/s, some 6 s, and the view
    says nothing until all of it came. The ping goes out behind the upload, so its answer
    cannot come before the upload has gone: while what the browser holds to send
    (``bufferedAmount``, what the page added since counted out) goes down, the client
    waits on. The upload arrives, on the one connection. Before, the client gave up
    after ``PATIENCE`` (4002), the upload lost, and the next connection would start it
    again. In chunks, the page tops the buffer up as it drains: its own sends must not
    hide the draining."""
    upload(bare_page, uplink, chunk)
    done = outcome(bare_page)
    assert (done["answer"], done["close"]) == (str(UPLOAD), None), done
    assert done["ms"] > 3 * PATIENCE, done  # the heartbeat had its chances


def test_an_upload_over_a_link_that_stopped_is_given_up(bare_page: Page, uplink: Proxy) -> None:
    """The same upload; in the middle of the client's third wait (it waited on twice)
    the link stops carrying anything. The buffer stops draining, and the first whole
    ``PATIENCE`` in which none of it drained ends the connection (4002), as an idle
    one's: at most three after the stop (the one it stopped in, one in which the
    browser's last bytes may still move into the system's full buffer, one without)."""
    upload(bare_page, uplink, 0)
    bare_page.wait_for_function(f"Date.now() - window.uploading > {PING + 2.5 * PATIENCE}")
    uplink.pause(clients=True)
    paused = bare_page.evaluate("Date.now() - window.uploading")
    done = outcome(bare_page)
    assert (done["answer"], done["close"]) == (None, 4002), done
    assert paused < done["ms"] <= paused + 3 * PATIENCE, (paused, done)


def test_the_first_connection_is_not_a_reconnection(bare_page: Page, gevent: ServerProcess) -> None:
    """The server is unreachable when the page loads (the load balancer refuses), then
    comes: the first connection's "open" says ``reconnect: false``, as the Python
    client's does, and the one after a drop says true. Before, any failed attempt made
    the first "open" a reconnection: a page that set itself up on ``!reconnect`` never
    did."""
    link = Proxy(gevent.port)
    link.cut()
    try:
        bare_page.evaluate(
            """(url) => {
                window.opens = [];
                window.refused = 0;
                const s = window.late = new dwebsocket.Socket(url, {minDelay: 20, maxDelay: 50});
                s.on("open", (e) => opens.push(e.reconnect));
                s.on("close", () => refused++);
            }""",
            link.url("/echo/"),
        )
        bare_page.wait_for_function("window.refused >= 2")
        link.restore()
        bare_page.wait_for_function("window.opens.length >= 1")
        link.cut()
        link.restore()
        bare_page.wait_for_function("window.opens.length >= 2")
        bare_page.evaluate("late.close()")
    finally:
        link.close()
    assert bare_page.evaluate("opens") == [False, True]


def test_close_while_waiting_to_reconnect_says_so(bare_page: Page, gevent: ServerProcess) -> None:
    """The page closes the client while it waits for its next attempt (the server
    unreachable; here from the "close" handler announcing that attempt): a "close" event
    without a retry says it is over, as ``close()`` on a connection does. Before, nothing
    came: the last word the page had was the previous "close" announcing a retry (a
    "retrying in 16 s" countdown stayed on screen)."""
    link = Proxy(gevent.port)
    link.cut()
    try:
        bare_page.evaluate(
            """(url) => {
                window.waiting = [];
                const s = new dwebsocket.Socket(url);
                s.on("close", (e) => {
                    waiting.push(e);
                    if (waiting.length === 1) s.close();  // giving up: no wait for the retry
                });
            }""",
            link.url("/echo/"),
        )
        bare_page.wait_for_function("waiting.length === 2")
    finally:
        link.close()
    first, last = bare_page.evaluate("waiting")
    assert first["willRetry"] is True
    assert last["willRetry"] is False and last["code"] == 1000


#: History for groups named as what every plain object inherits (a chat room the user named).
PROTO_HISTORY = {"__proto__": {"size": 100, "ttl": 600}, "constructor": {"size": 100, "ttl": 600}}


@pytest.mark.parametrize("group", ["__proto__", "constructor"])
def test_a_group_named_like_an_object_property_resumes(
    group: str,
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    open_page: Callable[[str], Page],
) -> None:
    """Group names come from the application, often from its users: a room called
    ``__proto__``. The client kept positions in a plain object, where
    ``positions["__proto__"] = p`` sets the object's prototype (a string: ignored), so that
    group's position was never kept: no ``dws_since`` for it, and after a reconnection the
    messages it missed were lost without a "recoveryfailed" to say so. The page's
    connection drops (``ws.close()`` under the client); the next one recovers."""
    history = {"WEBSOCKET_GROUPS_URL": redis_server.url, "WEBSOCKET_GROUPS_HISTORY": PROTO_HISTORY}
    server = make_server("gevent", settings=history)
    page = open_page(server.url(f"/group/page/?group={group}", scheme="http"))
    with override_settings(WEBSOCKET_GROUPS_HISTORY=PROTO_HISTORY):
        layer = RedisLayer(redis_server.url, Registry())
        try:
            position = layer.send(group, "m0")
            wait_for_messages(page, 1)
            assert page.evaluate("Object.entries(sock.positions)") == [[group, position]]
            page.evaluate("sock.ws.close()")
            page.wait_for_function("window.events.filter(e => e[0] === 'joined').length >= 2")
            missed = page.evaluate(
                "events.filter(e => e[0] === 'recovered').map(e => [e[1].group, e[1].since])"
            )
        finally:
            layer.close()
    assert missed == [[group, position]]


def test_positions_given_for_a_group_named_proto_are_sent(bare_page: Page) -> None:
    """The ``positions`` option, as the page saved them (``JSON.parse`` makes
    ``__proto__`` an own key): the first connection's ``dws_since`` has it. Copied into a
    plain object, it was lost."""
    since = bare_page.evaluate(
        """() => {
            const positions = JSON.parse('{"__proto__": "1:0", "toString": "2:0"}');
            const s = new dwebsocket.Socket("/echo/", {positions});
            const url = new URL(s.ws.url);
            s.close();
            return url.searchParams.get("dws_since");  // as text: a returned object loses __proto__
        }"""
    )
    assert json.loads(since) == {"__proto__": "1:0", "toString": "2:0"}


def test_a_handler_removed_by_an_earlier_one_is_not_called(bare_page: Page) -> None:
    """A handler may ``off()`` another of the same event (a component torn down on a
    message): the removed one is not called for that event either, as a DOM event
    listener removed during dispatch is not. Before, it was called once more, after its
    owner had let it go (a component unmounted, its elements gone)."""
    calls = bare_page.evaluate(
        """(url) => new Promise((done) => {
            const calls = [];
            const s = new dwebsocket.Socket(url);
            const second = (data) => calls.push("second " + data);
            s.on("message", (data) => { calls.push("first " + data); s.off("message", second); });
            s.on("message", second);
            s.on("message", (data) => { if (data === "b") { s.close(); done(calls); } });
            s.on("open", () => { s.send("a"); s.send("b"); });
        })""",
        "/echo/",
    )
    assert calls == ["first a", "first b"]


def test_close_before_the_connection_opened_says_what_the_page_asked(bare_page: Page) -> None:
    """``close(4000, "bye")`` while the attempt is still connecting (a page leaving a view
    right after it mounted): one "close" event, with that code and reason, and no
    "open". Before, the browser's close of a socket that never opened came through:
    1006, the code of a lost connection, so a page telling the two apart showed an
    error for its own close."""
    outcome = bare_page.evaluate(
        """(url) => new Promise((done) => {
            const seen = [];
            const s = new dwebsocket.Socket(url);
            s.on("open", () => seen.push("open"));
            s.on("close", (e) => seen.push(e));
            s.close(4000, "bye");
            setTimeout(() => done(seen), 500);
        })""",
        "/echo/",
    )
    assert outcome == [{"code": 4000, "reason": "bye", "willRetry": False}]
    assert bare_page.evaluate("pending.size") == 0


def test_a_handler_for_an_event_named_like_an_object_property(bare_page: Page) -> None:
    """Handlers were kept in a plain object: ``on("constructor", h)`` found Object's own
    ``constructor`` there and threw (it has no ``push``), and ``off("toString", h)`` did
    too. Event names are the page's to choose (an app's own emits reuse the table)."""
    outcome = bare_page.evaluate(
        """() => {
            const s = new dwebsocket.Socket("/echo/");
            const seen = [];
            try {
                s.on("constructor", (a) => seen.push(a)).off("toString", () => {});
                s._emit("constructor", 1);
            } catch (err) {
                seen.push(String(err));
            }
            s.close();
            return seen;
        }"""
    )
    assert outcome == [1]


def test_one_sockets_options_are_not_every_sockets(bare_page: Page) -> None:
    """``options.noRetry`` was the defaults' own array: a page adding a code to one
    socket's list (``s.options.noRetry.push(4003)``) changed it for every socket made
    after, and ``dwebsocket.DEFAULTS`` too."""
    lists = bare_page.evaluate(
        """() => {
            const first = new dwebsocket.Socket("/echo/");
            first.options.noRetry.push(4003);
            const second = new dwebsocket.Socket("/echo/");
            first.close();
            second.close();
            return [second.options.noRetry, dwebsocket.DEFAULTS.noRetry];
        }"""
    )
    assert lists == [[1008, 4001], [1008, 4001]]
