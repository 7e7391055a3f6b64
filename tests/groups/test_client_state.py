"""The full state a view sends after a failed recovery, with both clients (the browser's in
headless Chromium, the Python one) against a real gevent server (``memory://`` history)
and a proxy that drops the connection right after the ``joined`` envelope: before the
view's full state came. The next connection must get the full state again, however
often that happens, until the application says it has it (``stateLoaded`` /
``state_loaded``); after that the client resumes as usual. The view is
``tests/groups/views.py``'s ``follower``: its report of the join stands for the full
state (it sends it after every join)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import dwebsocket
from dwebsocket.client import Event, Received, ReconnectingClient
from tests.browser import WAIT_MS
from tests.groups.conftest import FEED_HISTORY
from tests.groups.proxy import Proxy
from tests.servers import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.server

STATIC = Path(dwebsocket.__file__).parent / "static" / "dwebsocket"
WAIT = WAIT_MS / 1000
# A position of an epoch the server never had: resuming from it fails.
FOREIGN = "1733312345678901:3"


class DropAfterJoined(Proxy):
    """A proxy that, once :meth:`arm` ed, forwards a connection's ``joined`` envelope
    saying ``"recovered":false`` and drops that connection at once: what came after it
    (the view's full state) never reaches the client. Frames are found in the clear:
    the server must not compress (``WEBSOCKET_COMPRESSION`` off)."""

    def __init__(self, target: int) -> None:
        self._armed = 0
        super().__init__(target)

    def arm(self, times: int = 1) -> None:
        with self._lock:
            self._armed = times

    def dropped(self) -> int:
        with self._lock:
            return self._armed

    def _keep(self, source: socket.socket, sink: socket.socket, data: bytes) -> bool:
        start = data.find(b'{"dws":"joined"')
        end = 0
        if start >= 2 and data[start - 2] == 0x81 and data[start - 1] < 126:
            end = start + data[start - 1]
        elif start >= 4 and data[start - 4 : start - 2] == b"\x81\x7e":  # a 16-bit length
            end = start + int.from_bytes(data[start - 2 : start], "big")
        with self._lock:
            drop = (
                self._armed > 0
                and source in self._upstreams
                and b'"recovered":false' in data[start:end]
            )
            if drop:
                self._armed -= 1
        if not drop:
            return super()._keep(source, sink, data)
        with contextlib.suppress(OSError):
            sink.sendall(data[:end])
        for sock in (sink, source):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return True


@pytest.fixture
def dropping(make_server: Callable[..., ServerProcess]) -> Iterator[DropAfterJoined]:
    server = make_server(
        "gevent",
        settings={"WEBSOCKET_GROUPS_HISTORY": FEED_HISTORY, "WEBSOCKET_COMPRESSION": False},
    )
    proxy = DropAfterJoined(server.port)
    yield proxy
    proxy.close()


def test_the_python_client_gets_the_full_state_after_a_drop(dropping: DropAfterJoined) -> None:
    """Twice the connection drops after "recovery failed", before the full state: each
    next connection gets the full state again (a join without ``since``), told
    ``recovery_failed`` with the position the application was at. Before, the client
    resumed from the failed join's position at once: the server said "recovered" and the
    full state never came. Once the application said it has the state, it resumes."""
    events: list[Event] = []
    dropping.arm(2)
    client = ReconnectingClient(
        dropping.url("/group/feed/follow/"),
        positions={"feed": FOREIGN},
        compression=False,
        min_delay=0.05,
        max_delay=0.2,
        on_event=events.append,
    )
    with client:
        state = client.recv(WAIT)
        assert state.group is None
        report = json.loads(state.data)["recovery"]
        assert report["recovered"] is False, report  # the full state came
        assert dropping.dropped() == 0
        assert "feed" not in client.positions  # not until the state is loaded
        client.state_loaded("feed")
        client.send("live")
        live = client.recv(WAIT)
        assert live.data == "live" and client.positions["feed"] == live.position
        dropping.cut()
        dropping.restore()
        report = json.loads(client.recv(WAIT).data)["recovery"]
    assert report["recovered"] is True and report["since"] == live.position
    failed = [e for e in events if e.type == "recovery_failed"]
    assert [e.since for e in failed] == [FOREIGN] * 3
    assert [e.type for e in events if e.type in ("recovered", "recovery_failed")][-1] == (
        "recovered"
    )
    assert [e.code for e in events if e.type == "close"][:2] == [1006, 1006]


def test_the_python_client_without_state_loaded_keeps_getting_the_full_state(
    dropping: DropAfterJoined,
) -> None:
    """An application that never says it has the state is sent it at every connection,
    each time told ``recovery_failed``: never "recovered" without it."""
    events: list[Event] = []
    url = dropping.url("/group/feed/follow/")
    with ReconnectingClient(url, positions={"feed": FOREIGN}, on_event=events.append) as client:
        assert json.loads(client.recv(WAIT).data)["recovery"]["since"] == FOREIGN
        client.send("live")
        assert isinstance(client.recv(WAIT), Received)
        for _ in range(2):
            dropping.cut()
            dropping.restore()
            report = json.loads(client.recv(WAIT).data)["recovery"]
            assert report["recovered"] is False and report["since"] is None
    assert [e.since for e in events if e.type == "recovery_failed"] == [FOREIGN] * 3
    assert not [e for e in events if e.type == "recovered"]


PAGE_SCRIPT = """(foreign) => {
    window.log = [];
    window.sock = new dwebsocket.Socket("/group/feed/follow/",
        {positions: {feed: foreign}, minDelay: 100, maxDelay: 200});
    for (const type of ["open", "close", "joined", "recovered", "recoveryfailed"]) {
        sock.on(type, (e) => log.push([type, e]));
    }
    sock.on("message", (data, meta) => {
        log.push(meta.group ? ["msg", data, meta.position] : ["state", JSON.parse(data).recovery]);
    });
}"""


def test_the_browser_client_gets_the_full_state_after_a_drop(
    browser: Browser, dropping: DropAfterJoined
) -> None:
    """As the Python client's test: ``stateLoaded(group)`` says the page has the state."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        page.goto(dropping.url("/group/static/dwebsocket/dwebsocket.module.js", scheme="http"))
        page.add_script_tag(content=(STATIC / "dwebsocket.js").read_text())
        dropping.arm(2)
        page.evaluate(PAGE_SCRIPT, FOREIGN)
        page.wait_for_function("log.some(e => e[0] === 'state')")
        (state,) = page.evaluate("log.filter(e => e[0] === 'state').map(e => e[1])")
        assert state["recovered"] is False, state  # the full state came
        assert dropping.dropped() == 0
        assert page.evaluate("'feed' in sock.positions") is False
        page.evaluate("sock.stateLoaded('feed'); sock.send('live')")
        page.wait_for_function("log.some(e => e[0] === 'msg')")
        (live,) = page.evaluate("log.filter(e => e[0] === 'msg').map(e => e[2])")
        assert page.evaluate("sock.positions.feed") == live
        dropping.cut()
        dropping.restore()
        page.wait_for_function("log.filter(e => e[0] === 'state').length >= 2")
        log: list[Any] = page.evaluate("log")
        page.evaluate("sock.close()")
    finally:
        context.close()
    states = [e[1] for e in log if e[0] == "state"]
    assert states[1]["recovered"] is True and states[1]["since"] == live
    assert [e[1]["since"] for e in log if e[0] == "recoveryfailed"] == [FOREIGN] * 3
    assert [e[0] for e in log if e[0] in ("recovered", "recoveryfailed")][-1] == "recovered"
