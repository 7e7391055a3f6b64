"""WebSocketMiddleware, through Django's handler (the test Client) and a socketpair."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from prometheus_client import REGISTRY

from dwebsocket import accept_websocket, require_websocket
from dwebsocket.middleware import WebSocketMiddleware
from dwebsocket.testing import WebSocketClient
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


def marked_raises(request: HttpRequest) -> None:
    request.websocket.send("up")
    raise RuntimeError("marked_raises")


marked_raises.accept_websocket = True  # type: ignore[attr-defined]


@accept_websocket
def decorated_raises(request: HttpRequest) -> None:
    request.websocket.send("up")
    raise RuntimeError("decorated_raises")


class ExceptionHook:
    """A middleware with a ``process_exception`` hook, as error reporters have: it notes
    what it sees in ``seen``."""

    seen: ClassVar[list[str]] = []

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        self.seen.append(str(exception))


class DecoratedGet(View):
    """A class-based view whose handler is decorated, as Django's docs decorate them."""

    @method_decorator(accept_websocket)
    def get(self, request: HttpRequest) -> HttpResponse | None:
        if not request.is_websocket():
            return HttpResponse("decorated get, plain")
        request.websocket.send("decorated get")
        return None


def greet(request: HttpRequest, greeting: str) -> HttpResponse | None:
    """A view for ``functools.partial`` to give its ``greeting``."""
    if not request.is_websocket():
        return HttpResponse(f"{greeting}, plain")
    request.websocket.send(greeting)
    return None


async def agreet(request: HttpRequest, greeting: str) -> HttpResponse | None:
    """:func:`greet` as an ``async def`` view."""
    if not request.is_websocket():
        return HttpResponse(f"{greeting}, plain")
    await request.websocket.send(greeting)
    return None


# Views routed as a functools.partial: of a decorated view (the partial carries none of
# the decorator's attributes; Django calls it, and it calls the decorated view), nested,
# under a decorator of its own, and a partial that is decorated (which does carry them).
PARTIALS: dict[str, Callable[..., Any]] = {
    "required": partial(require_websocket(greet), greeting="required"),
    "accepted": partial(accept_websocket(greet), greeting="accepted"),
    "under-never-cache": never_cache(
        partial(require_websocket(greet), greeting="under-never-cache")
    ),
    "nested": partial(never_cache(partial(require_websocket(greet))), greeting="nested"),
    "decorated": require_websocket(partial(greet, greeting="decorated")),
    "async-required": partial(require_websocket(agreet), greeting="async-required"),
    "async-accepted": partial(accept_websocket(agreet), greeting="async-accepted"),
}

urlpatterns = [
    path("plain/", plain),
    path("marked/", marked),
    path("required/", required),
    path("decorated/", decorated),
    path("decorated-get/", DecoratedGet.as_view()),
    path("marked-raises/", marked_raises),
    path("decorated-raises/", decorated_raises),
    *(path(f"partial/{name}/", view) for name, view in PARTIALS.items()),
    # The 0.x attributes, and a class-based view's decorated handler, through a partial.
    path("partial/marked/", partial(marked)),
    path("partial/required-attribute/", partial(required)),
    path("partial/decorated-get/", partial(DecoratedGet.as_view())),
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


@override_settings(MIDDLEWARE=MIDDLEWARE)
@pytest.mark.parametrize("name", [*PARTIALS, "marked", "decorated-get"])
def test_views_routed_as_partials(name: str) -> None:
    """A ``functools.partial`` of a decorated view (``path("x/", partial(view, ...))``)
    carries none of the decorator's attributes: without the middleware Django called it
    and the decorator ran the session, but with it (for other views) every WebSocket
    request was refused, 400 "This URL does not accept WebSocket connections." (and a
    partial of a view marked with the 0.x ``accept_websocket`` attribute, too). A
    decorated partial (``"decorated"``) carries them, and was served. The ``async def``
    ones go through the middleware's async ``process_view`` (ASGI)."""
    expected = {"marked": "marked", "decorated-get": "decorated get"}.get(name, name)
    with WebSocketClient(f"/partial/{name}/") as ws:
        assert ws.receive() == expected
        assert ws.wait_closed() == 1000


@pytest.mark.parametrize("name", ["required", "under-never-cache", "nested", "async-required"])
def test_plain_http_to_a_partial_of_a_required_view(name: str) -> None:
    """With the middleware, plain HTTP to a partial of a ``require_websocket`` view gets
    the answer it gets without it: the decorator's 400 (it did before the fix too, the
    middleware leaving plain HTTP to the view: this keeps it so)."""
    without = Client().get(f"/partial/{name}/")
    with override_settings(MIDDLEWARE=MIDDLEWARE):
        answer = Client().get(f"/partial/{name}/")
    assert without.status_code == 400
    assert (answer.status_code, answer.content) == (without.status_code, without.content)


@override_settings(MIDDLEWARE=MIDDLEWARE)
def test_plain_http_to_a_partial_of_a_view_with_the_require_attribute() -> None:
    """As ``/required/`` (the 0.x ``require_websocket`` attribute): 400, where the view
    was called with ``request.websocket`` None."""
    answer = Client().get("/partial/required-attribute/")
    assert (answer.status_code, answer.content) == (
        400,
        Client().get("/required/").content,
    )


@override_settings(MIDDLEWARE=[f"{__name__}.ExceptionHook", *MIDDLEWARE])
@pytest.mark.parametrize(("url", "hooked"), [("marked-raises", False), ("decorated-raises", True)])
def test_process_exception_sees_a_decorated_view_s_error_only(
    pair: tuple[socket.socket, RawClient], url: str, hooked: bool
) -> None:
    """As the middleware's docstring and docs/migration.rst say: a view the middleware
    runs itself (the 0.x attribute, ``WEBSOCKET_ACCEPT_ALL``) raises from its
    ``process_view``, where Django calls no ``process_exception`` hook; a decorated view
    raises from the view, where Django does. Either way the client gets 1011."""
    sock, raw = pair
    ExceptionHook.seen.clear()
    response = Client(raise_request_exception=False).get(
        f"/{url}/", headers=upgrade_headers(KEY), **{"dwebsocket.socket": sock}
    )
    assert response.status_code == 500
    _, frames, _ = wire(raw)
    assert frames == [(0x81, b"up"), (0x88, b"\x03\xf3")]
    assert ExceptionHook.seen == ([url.replace("-", "_")] if hooked else [])
