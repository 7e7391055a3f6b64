"""What an operator sees, checked through ``dwebsocket.testing``: the ``dwebsocket`` log
(open/close at DEBUG with peer, path, code and duration; a client's mistakes at INFO,
never ERROR) and the opened/closed signals (counting who is online, as
``docs/logging.rst`` shows).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.testing import HandshakeRefused, WebSocketClient
from dwebsocket.websocket import WebSocket

pytestmark = pytest.mark.urls("tests.testing.urls")


class Online:
    """The docs' example: who is connected right now, by path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: dict[WebSocket, str] = {}
        self.codes: list[int] = []

    def opened(self, sender: Any, request: Any, websocket: WebSocket, **kwargs: Any) -> None:
        with self.lock:
            self.paths[websocket] = request.path

    def closed(
        self, sender: Any, request: Any, websocket: WebSocket, code: int, **kwargs: Any
    ) -> None:
        with self.lock:
            self.paths.pop(websocket, None)
            self.codes.append(code)

    def count(self) -> int:
        with self.lock:
            return len(self.paths)


@pytest.fixture
def online() -> Iterator[Online]:
    online = Online()
    websocket_opened.connect(online.opened)
    websocket_closed.connect(online.closed)
    yield online
    websocket_opened.disconnect(online.opened)
    websocket_closed.disconnect(online.closed)


def test_signals_count_who_is_online(online: Online) -> None:
    # The 101 is written before websocket_opened is sent: a first message from the view
    # (an echo here) shows the view got past the handshake, and the signal with it.
    with WebSocketClient("/echo/") as first:
        first.send("hello")
        assert first.receive() == "hello"
        assert online.count() == 1
        with WebSocketClient("/inspect/") as second:
            second.receive()
            assert online.count() == 2
        assert online.count() == 1  # the view has returned: its signal was sent
        first.send("still here")
        assert first.receive() == "still here"
    assert online.count() == 0
    assert online.codes == [1000, 1000]


def test_connect_returns_once_the_opened_signal_was_handled(online: Online) -> None:
    # docs/logging.rst's test: counted as soon as connect() returns, before the view
    # sent anything.
    with WebSocketClient("/echo/"):
        assert online.count() == 1
    assert online.count() == 0


def test_closed_signal_carries_the_code(online: Online) -> None:
    with WebSocketClient("/close/?code=4003") as ws:
        ws.send("go")
        ws.wait_closed()
    assert online.codes == [4003]


def test_a_refused_handshake_opens_nothing(online: Online) -> None:
    with pytest.raises(HandshakeRefused):
        WebSocketClient("/echo/", origin="https://evil.example").connect()
    assert (online.count(), online.codes) == (0, [])


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="dwebsocket")
    return caplog


def dwebsocket_records(log: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in log.records if r.name.split(".")[0] == "dwebsocket"]


def test_open_and_close_are_logged_at_debug(log: pytest.LogCaptureFixture) -> None:
    with WebSocketClient("/close/?code=4000&reason=over", REMOTE_ADDR="10.0.0.7") as ws:
        ws.send("go")
        ws.wait_closed()
    messages = [(r.levelname, r.getMessage()) for r in dwebsocket_records(log)]
    opened = [m for level, m in messages if level == "DEBUG" and "opened" in m]
    closed = [m for level, m in messages if level == "DEBUG" and "closed" in m]
    assert len(opened) == 1 and "10.0.0.7" in opened[0] and "/close/" in opened[0]
    assert len(closed) == 1
    assert re.search(r"10\.0\.0\.7.*/close/.*4000.*over.*after \d+\.\d+s", closed[0]), closed


@pytest.mark.parametrize(
    ("client", "status"),
    [
        (WebSocketClient("/echo/", origin="https://evil.example"), 403),
        (WebSocketClient("/echo/", headers={"Sec-WebSocket-Version": "8"}), 426),
        (WebSocketClient("/echo/", headers={"Sec-WebSocket-Key": "another"}), 400),
        (WebSocketClient("/refuse/"), 403),
    ],
    ids=["origin", "version", "key", "view"],
)
def test_refusals_are_not_errors(
    log: pytest.LogCaptureFixture, client: WebSocketClient, status: int
) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        client.connect()
    assert refused.value.status_code == status
    assert all(r.levelno < logging.WARNING for r in dwebsocket_records(log))


def test_refused_handshakes_say_why_at_info(log: pytest.LogCaptureFixture) -> None:
    with pytest.raises(HandshakeRefused):
        WebSocketClient("/echo/", origin="https://evil.example").connect()
    [record] = dwebsocket_records(log)
    assert record.levelname == "INFO"
    assert "403" in record.getMessage() and "evil.example" in record.getMessage()


def test_a_client_that_vanishes_is_not_an_error(log: pytest.LogCaptureFixture) -> None:
    ws = WebSocketClient("/echo/").connect()
    ws._finish()  # drop the connection without a close frame, as a crashed browser does
    assert ws.request is not None
    assert ws.request.websocket.close_code == 1006
    assert all(r.levelno < logging.WARNING for r in dwebsocket_records(log))
