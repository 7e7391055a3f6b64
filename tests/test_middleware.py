"""WebSocketMiddleware, through Django's handler (the test Client) and a socketpair."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from prometheus_client import REGISTRY

from dwebsocket import accept_websocket
from dwebsocket.middleware import WebSocketMiddleware
from tests.inprocess import upgrade_headers
from tests.wire import TIMEOUT, RawClient, read_until_eof, split_frames

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"plain {request.is_websocket()} {request.websocket}")


def marked(request: HttpRequest) -> None:
    request.websocket.send("marked")


marked.accept_websocket = True  # type: ignore[attr-defined]


def required(request: HttpRequest) -> None:
    request.websocket.send("required")


required.require_websocket = True  # type: ignore[attr-defined]


@accept_websocket
def decorated(request: HttpRequest) -> HttpResponse | None:
    if not request.is_websocket():
        return HttpResponse("decorated, plain")
    request.websocket.send("decorated")
    return None


class DecoratedGet(View):
    """A class-based view whose handler is decorated, as Django's docs decorate them."""

    @method_decorator(accept_websocket)
    def get(self, request: HttpRequest) -> HttpResponse | None:
        if not request.is_websocket():
            return HttpResponse("decorated get, plain")
        request.websocket.send("decorated get")
        return None


urlpatterns = [
    path("plain/", plain),
    path("marked/", marked),
    path("required/", required),
    path("decorated/", decorated),
    path("decorated-get/", DecoratedGet.as_view()),
]

pytestmark = pytest.mark.urls(__name__)
MIDDLEWARE = ["dwebsocket.middleware.WebSocketMiddleware"]
# These clients read to EOF without answering the close frame: do not wait long for it.
pytestmark = [pytestmark, pytest.mark.usefixtures("short_close_timeout")]


@pytest.fixture
def short_close_timeout() -> Iterator[None]:
    with override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.05):
        yield


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, RawClient]]:
    server, client = socket.socketpair()
    raw = RawClient(client)
    yield server, raw
    raw.close()
    server.close()


def upgrade(client: Client, url: str, sock: socket.socket) -> HttpResponse:
    return client.get(url, headers=upgrade_headers(KEY), **{"dwebsocket.socket": sock})  # type: ignore[return-value]


def wire(raw: RawClient) -> tuple[bytes, list[tuple[int, bytes]], bytes]:
    raw.sock.settimeout(TIMEOUT)
    data = read_until_eof(raw.sock)
    head, _, frames = data.partition(b"\r\n\r\n")
    parsed, trailing = split_frames(frames)
    return head, parsed, trailing


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_plain_requests_get_the_attributes() -> None:
    assert Client().get("/plain/").content == b"plain False None"


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_websocket_refused_for_views_that_do_not_accept(
    pair: tuple[socket.socket, RawClient],
) -> None:
    counted = REGISTRY.get_sample_value("django_websocket_handshakes_total", {"status": "400"})
    response = upgrade(Client(), "/plain/", pair[0])
    assert response.status_code == 400
    assert response.content == b"This URL does not accept WebSocket connections.\n"
    # Counted like any refused handshake (it was not before).
    assert (
        REGISTRY.get_sample_value("django_websocket_handshakes_total", {"status": "400"})
        == (counted or 0) + 1
    )


@override_settings(MIDDLEWARE=MIDDLEWARE, WEBSOCKET_ACCEPT_ALL=True)
def test_accept_all(pair: tuple[socket.socket, RawClient]) -> None:
    sock, raw = pair
    # The view answers with HTTP without touching the connection: that is its answer.
    response = upgrade(Client(), "/plain/", sock)
    assert response.content.startswith(b"plain True <DefaultWebSocket new /plain/")
    raw.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        raw.sock.recv(1)  # nothing was written on the socket


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_view_with_accept_attribute(pair: tuple[socket.socket, RawClient]) -> None:
    sock, raw = pair
    assert upgrade(Client(), "/marked/", sock).status_code == 101
    head, frames, trailing = wire(raw)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames == [(0x81, b"marked"), (0x88, b"\x03\xe8")]
    assert trailing == b""


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_require_attribute(pair: tuple[socket.socket, RawClient]) -> None:
    assert Client().get("/required/").status_code == 400
    sock, raw = pair
    upgrade(Client(), "/required/", sock)
    _, frames, _ = wire(raw)
    assert frames[0] == (0x81, b"required")


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_decorator_and_middleware_handshake_once(pair: tuple[socket.socket, RawClient]) -> None:
    sock, raw = pair
    upgrade(Client(), "/decorated/", sock)
    head, frames, trailing = wire(raw)
    assert head.count(b"101 Switching Protocols") == 1
    assert frames == [(0x81, b"decorated"), (0x88, b"\x03\xe8")]
    assert b"HTTP/1.1" not in trailing


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_class_based_view_with_a_decorated_handler(pair: tuple[socket.socket, RawClient]) -> None:
    # Without the middleware the decorated get() runs the session; adding the middleware
    # (for other views) answered it 400 "does not accept WebSocket connections": the view
    # Django resolves, as_view()'s function, carries no attribute of get()'s decorator.
    sock, raw = pair
    assert upgrade(Client(), "/decorated-get/", sock).status_code == 101
    head, frames, trailing = wire(raw)
    assert head.count(b"101 Switching Protocols") == 1
    assert frames == [(0x81, b"decorated get"), (0x88, b"\x03\xe8")]
    assert b"HTTP/1.1" not in trailing
    assert Client().get("/decorated-get/").content == b"decorated get, plain"


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_decorated_view_plain_http_through_middleware() -> None:
    assert Client().get("/decorated/").status_code == 200


def test_process_view_leaves_decorated_views_alone() -> None:
    middleware = WebSocketMiddleware(lambda request: HttpResponse())
    assert middleware.process_view(HttpRequest(), decorated, (), {}) is None
