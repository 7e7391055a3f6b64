"""``WebSocketClient`` driving ``async def`` views: the request goes through
``dwebsocket.asgi``'s handler as under an ASGI server (the views of ``tests/asgi``)."""

from __future__ import annotations

import json
import sys

import pytest

from dwebsocket import ConnectionClosed
from dwebsocket.testing import HandshakeRefused, WebSocketClient

pytestmark = pytest.mark.urls("tests.asgi.async_urls")


def test_text_binary_and_iteration() -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send("héllo")
        assert ws.receive() == "héllo"
        ws.send(b"\x00\xff")
        assert ws.receive() == b"\x00\xff"
        ws.send("x" * 100_000)
        assert ws.receive() == "x" * 100_000
    assert ws.close_code == 1000


def test_json_helpers() -> None:
    with WebSocketClient("/json/") as ws:
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"got": {"n": 1}}


def test_refused_before_accepting_with_the_views_response() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/refuse/").connect()
    assert refused.value.status_code == 403
    assert refused.value.content == b"not you\n"


def test_an_async_class_based_view_decorated_on_dispatch() -> None:
    """``method_decorator(accept_websocket, name="dispatch")`` on a class-based view with
    ``async def`` handlers (Django's way to decorate a class-based view): ``dispatch`` is
    a sync method that returns the handler's coroutine. The decorator ran it as a sync
    view's session, on the event loop, and took that coroutine for the view's HTTP
    answer: every handshake got a 500 (and a never-awaited coroutine)."""
    with WebSocketClient("/class-echo/") as ws:
        ws.send("héllo")
        assert ws.receive() == "héllo"
    assert ws.close_code == 1000


def test_subprotocol() -> None:
    with WebSocketClient("/subprotocol/", subprotocols=["nope", "chat"]) as ws:
        assert ws.subprotocol == "chat"


def test_the_view_closes_with_code_and_reason() -> None:
    with WebSocketClient("/close/?code=4001&reason=bye") as ws:
        ws.send("go")
        assert ws.wait_closed() == 4001
    assert ws.close_reason == "bye"


def test_a_view_that_raises_closes_1011_and_the_test_sees_the_error() -> None:
    ws = WebSocketClient("/raise-error/", raise_request_exception=False)
    with ws:
        ws.send("go")
        assert ws.wait_closed() == 1011


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
def test_a_task_group_whose_tasks_found_the_connection_closed_ends_quietly() -> None:
    """A view running its tasks in a ``TaskGroup``: when the client leaves, a task's send
    raises ``ConnectionClosed`` and the group raises it in an ``ExceptionGroup``. That is
    the client leaving, as the same ``ConnectionClosed`` raised by the view itself is: the
    session ends quietly. It was taken for the view failing (a 500 logged with its
    traceback for every client that left, and raised here at the close)."""
    with WebSocketClient("/ticks/") as ws:
        assert ws.receive() == "tick"
    assert ws.close_code == 1000


def test_the_request_is_the_views() -> None:
    with WebSocketClient("/echo/?a=1", headers={"X-Thing": "yes"}) as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
        assert ws.request is not None
        assert ws.request.GET["a"] == "1"
        assert ws.request.headers["X-Thing"] == "yes"


def test_sending_after_the_view_closed_raises() -> None:
    with WebSocketClient("/close/?code=4000") as ws:
        ws.send("go")
        ws.wait_closed()
        with pytest.raises(ConnectionClosed):
            ws.send("late")
    assert json.dumps(ws.close_code) == "4000"


def test_the_views_exception_reaches_the_test() -> None:
    ws = WebSocketClient("/raise-error/")
    with pytest.raises(RuntimeError, match="boom"), ws:  # raised as the client closes
        ws.send("go")
        ws.wait_closed()
    assert ws.close_code == 1011


def test_an_async_view_joins_its_group_before_the_101() -> None:
    """channels.rst's chat: ``await ws.join(room)`` before its loop, like a sync view's
    join, is done before the connection opens: what the group gets once the client is
    connected reaches it (the view then says "joined", in either order)."""
    from dwebsocket import groups

    with WebSocketClient("/room/early/") as ws:
        groups.send("early", "sent as soon as connected")
        assert sorted(ws.receive() for _ in range(2)) == ["joined", "sent as soon as connected"]
