"""What the backends share, in the abstract ``WebSocket`` (``dwebsocket/websocket.py``)
and the one upgrade test (``dwebsocket.factory.is_upgrade``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.test import RequestFactory

from dwebsocket import dws
from dwebsocket.factory import WebSocketFactory, is_upgrade
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.typing import BytesLike, Message
from dwebsocket.websocket import WebSocket, wait_timeout


class Minimal(WebSocket):
    """A backend that only records what the base class asks of it."""

    def __init__(self, offered: list[str]) -> None:
        self.request = RequestFactory().get("/ws/")
        self.offered_subprotocols = offered
        self.calls: list[tuple[str, Any]] = []

    def accept(self, subprotocol: str | None = None) -> None:
        self._check_subprotocol(subprotocol)
        self.calls.append(("accept", subprotocol))
        self.subprotocol = subprotocol
        self._accepted = True

    def wait(self, timeout: float | None = None) -> Message | None:
        self._ensure_accepted()
        return None

    def read(self, fallback: Any = None) -> Any:
        return fallback

    def count_messages(self) -> int:
        return 0

    def send(self, message: str | BytesLike) -> None:
        self._ensure_accepted()

    def deliver(self, message: Message) -> None: ...

    def ping(self, data: bytes = b"") -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.calls.append(("close", code))

    def is_closed(self) -> bool:
        return False


def test_accepted_and_the_lazy_accept_guard() -> None:
    ws = Minimal(["chat"])
    assert not ws.accepted and ws.protocols == ["chat"]
    ws.send("x")
    ws.wait()
    assert ws.accepted and ws.calls == [("accept", None)]  # once


def test_subprotocol_must_be_offered() -> None:
    ws = Minimal(["chat"])
    with pytest.raises(ValueError, match="'superchat' was not offered"):
        ws.accept("superchat")
    ws.accept("chat")
    assert ws.subprotocol == "chat"


@pytest.mark.parametrize("abort", [False, True])
def test_end_session_closes_by_default(abort: bool) -> None:
    ws = Minimal([])
    ws.end_session(1011, abort=abort)
    assert ws.calls == [("close", 1011)]


def test_signals_carry_the_request_and_the_connection() -> None:
    ws = Minimal([])
    seen: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        seen.append(kwargs)

    def failing(**kwargs: Any) -> None:
        raise RuntimeError("a broken receiver must not break the connection")

    websocket_opened.connect(receiver, dispatch_uid="test_websocket.receiver")
    websocket_opened.connect(failing, dispatch_uid="test_websocket.failing")
    try:
        ws._send_signal(websocket_opened)
    finally:
        websocket_opened.disconnect(dispatch_uid="test_websocket.receiver")
        websocket_opened.disconnect(dispatch_uid="test_websocket.failing")
        # The other receivers counted it open (metrics' gauge, in this process): closed.
        ws._send_signal(websocket_closed)
    [kwargs] = seen
    assert kwargs["sender"] is Minimal
    assert kwargs["websocket"] is ws and kwargs["request"] is ws.request


def test_a_dws_connections_signals_name_the_backends_class() -> None:
    """A client that announced the envelope gets dws's subclass of the backend's class;
    its signals still name the backend's (docs/logging.rst), so receivers connected with
    ``sender=`` (the shutdown registry's) see it (before: sender was the subclass)."""
    ws = Minimal([])
    ws.request = RequestFactory().get("/ws/", {"dws": "1"})
    dws.adopt(ws, ws.request)
    assert type(ws) is not Minimal and dws.speaks(ws)
    seen: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(sender)

    websocket_opened.connect(receiver, sender=Minimal, dispatch_uid="test_websocket.dws")
    try:
        ws._send_signal(websocket_opened)
    finally:
        websocket_opened.disconnect(sender=Minimal, dispatch_uid="test_websocket.dws")
        # The other receivers counted it open (metrics' gauge, in this process): closed.
        ws._send_signal(websocket_closed)
    assert seen == [Minimal]


@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [
        ("websocket", True),
        ("WebSocket", True),
        ("h2c, websocket", True),
        ("h2c", False),
        (None, False),
    ],
)
def test_one_upgrade_test(upgrade: str | None, expected: bool) -> None:
    headers = {} if upgrade is None else {"HTTP_UPGRADE": upgrade}
    request = RequestFactory().get("/ws/", **headers)
    assert is_upgrade(request) is expected

    class Factory(WebSocketFactory):
        def create_websocket(self) -> None:
            return None

    assert Factory(request).is_websocket() is expected


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, None),
        (-1, None),
        (0, 0),
        (2.5, 2.5),
        (7 * 24 * 3600, 7 * 24 * 3600),
        (7 * 24 * 3600 + 1, None),
        (1e10, None),
        (math.inf, None),
        (math.nan, None),
    ],
)
def test_wait_timeout(timeout: float | None, expected: float | None) -> None:
    """What every backend's ``wait()`` makes of its timeout: None is a wait without end,
    and so is what no platform wait can take (poll(): about 24.8 days at most)."""
    assert wait_timeout(timeout) == expected
