"""accept_websocket / require_websocket, without a server (RequestFactory, socketpair)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from django.http import FileResponse, HttpRequest, HttpResponse
from django.test import RequestFactory
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from dwebsocket import accept_websocket, require_websocket
from dwebsocket.protocol.connection import Close
from dwebsocket.testing import WebSocketClient
from tests.inprocess import Session, upgrade_headers

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@accept_websocket
def either(request: HttpRequest) -> HttpResponse | None:
    if not request.is_websocket():
        return HttpResponse("plain")
    for message in request.websocket:
        request.websocket.send(message)
    return None


@require_websocket
def only(request: HttpRequest) -> None:
    request.websocket.send("hello")


def test_attributes() -> None:
    assert either.accept_websocket and not either.require_websocket
    assert only.accept_websocket and only.require_websocket
    assert either.__name__ == "either"


def test_stacking_keeps_one_wrapper_and_require_wins() -> None:
    def view(request: HttpRequest) -> None:
        return None

    wrapped = require_websocket(view)
    assert accept_websocket(wrapped) is wrapped
    assert wrapped.require_websocket


def test_require_wins_over_accept_under_another_decorator() -> None:
    """require_websocket over csrf_exempt over accept_websocket: functools.wraps copied
    the attributes to csrf_exempt's wrapper, require was set there, and the inner wrapper,
    which decides, still let plain HTTP through to the view (request.websocket None)."""

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(f"view ran, websocket={request.websocket!r}")

    wrapped = require_websocket(csrf_exempt(accept_websocket(view)))
    response = wrapped(RequestFactory().get("/"))
    assert response.status_code == 400
    assert b"only accepts WebSocket" in response.content


def test_requiring_a_shared_view_leaves_the_original_alone() -> None:
    """``require_websocket`` over a view that ``accept_websocket`` decorated, for a
    second URL (``path("ws/feed/", require_websocket(feed))``): stacking set
    ``require_websocket`` on the shared wrapper itself, so the first URL's plain HTTP
    requests got 400 too."""

    def view(request: HttpRequest) -> HttpResponse | None:
        return HttpResponse("plain") if request.websocket is None else None

    feed = accept_websocket(view)
    only_ws = require_websocket(feed)
    assert only_ws(RequestFactory().get("/")).status_code == 400
    assert only_ws.require_websocket
    assert feed(RequestFactory().get("/")).content == b"plain"
    assert not feed.require_websocket
    with Session(only_ws) as session:  # the outer wrapper runs the one session
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_plain_http() -> None:
    request = RequestFactory().get("/")
    assert either(request).content == b"plain"
    assert request.websocket is None and not request.is_websocket()
    response = only(RequestFactory().get("/"))
    assert response.status_code == 400


def test_echo_session() -> None:
    with Session(either) as session:
        session.expect_101()
        session.client.send("hé")
        assert session.client.recv() == "hé"
        session.client.send(b"\x00")
        assert session.client.recv() == b"\x00"
        session.client.sock.sendall(session.client.conn.send_close(1000))
        assert session.client.recv() == Close(1000, "")
        response = session.finish()
    assert response.status_code == 101  # the access log shows the session as one
    assert session.request.is_websocket()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-WebSocket-Key": "x"}, 400),
        ({"Sec-WebSocket-Version": "7"}, 426),
        ({"Origin": "http://evil.example"}, 403),
    ],
)
def test_refused_handshake_does_not_call_the_view(headers: dict[str, str], status: int) -> None:
    called = []

    @accept_websocket
    def view(request: HttpRequest) -> None:
        called.append(request)

    response = view(RequestFactory().get("/", headers=upgrade_headers(KEY, **headers)))
    assert response.status_code == status
    assert called == []


def test_no_socket_is_501(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dwebsocket.handshake._unavailable_logged", set())  # ERROR once
    called: list[Any] = []

    @accept_websocket
    def view(request: HttpRequest) -> None:
        called.append(request)

    with caplog.at_level(logging.ERROR, logger="dwebsocket"):
        response = view(RequestFactory().get("/", headers=upgrade_headers(KEY)))
    assert response.status_code == 501
    assert b"cannot take the connection over" in response.content
    assert called == []
    assert any("cannot take the connection over" in r.getMessage() for r in caplog.records)


def test_refusing_with_http_before_accepting() -> None:
    @require_websocket
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("no", status=403)

    with Session(view) as session:
        response = session.finish()
    assert response.status_code == 403
    assert response.content == b"no"


def test_returning_none_untouched_accepts_and_closes() -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        return None

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == Close(1000, "")
        session.finish()


def test_view_error_closes_1011_and_propagates() -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        request.websocket.accept()
        raise RuntimeError("boom")

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == Close(1011, "")
        session.finish()
    assert isinstance(session.error, RuntimeError)


class GreenletExit(BaseException):
    """Named like greenlet's: a killed greenlet says "going away" (1001)."""


class Killed(BaseException):
    pass


@pytest.mark.parametrize(("exc", "code"), [(GreenletExit, 1001), (Killed, 1011)])
def test_base_exception_closes_and_propagates(exc: type[BaseException], code: int) -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        request.websocket.send("up")
        raise exc()

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == "up"
        assert session.client.recv() == Close(code, "")
        session.finish()
    assert isinstance(session.error, exc)


def test_error_before_accepting_is_plain_django() -> None:
    @require_websocket
    def view(request: HttpRequest) -> None:
        raise PermissionError("nope")

    with Session(view) as session:
        session.finish()
    assert isinstance(session.error, PermissionError)


def test_a_response_returned_after_accepting_is_closed(tmp_path: Path) -> None:
    """A view that accepts, then returns a response: the response goes nowhere (the
    server gets the session's own), so nobody closed it, nor what it holds: a
    FileResponse's file stayed open until garbage collection (a ResourceWarning)."""
    (tmp_path / "data").write_bytes(b"not for anyone")
    files: list[BinaryIO] = []

    @require_websocket
    def view(request: HttpRequest) -> FileResponse:
        request.websocket.send("up")
        files.append((tmp_path / "data").open("rb"))
        return FileResponse(files[0])

    with Session(view) as session:
        session.expect_101()
        assert session.client.recv() == "up"
        assert session.client.recv() == Close(1000, "")
        response = session.finish()
    assert response.status_code == 101
    assert files[0].closed


async def file_after_accepting(request: HttpRequest) -> FileResponse:
    """The async view of :func:`test_an_async_view_s_response_after_accepting_is_closed`."""
    await request.websocket.send("up")
    ASYNC_FILES.append(open(request.GET["path"], "rb"))  # noqa: SIM115 - closed by the session
    return FileResponse(ASYNC_FILES[-1])


ASYNC_FILES: list[BinaryIO] = []
urlpatterns = [path("file-after-accepting/", require_websocket(file_after_accepting))]


@pytest.mark.urls(__name__)
def test_an_async_view_s_response_after_accepting_is_closed(tmp_path: Path) -> None:
    """:func:`test_a_response_returned_after_accepting_is_closed` for an ``async def``
    view (its session, dwebsocket.backends.asgi.session, dropped the response too)."""
    (tmp_path / "data").write_bytes(b"not for anyone")
    ASYNC_FILES.clear()
    with WebSocketClient(f"/file-after-accepting/?path={tmp_path / 'data'}") as ws:
        assert ws.receive() == "up"
        assert ws.wait_closed() == 1000
    assert len(ASYNC_FILES) == 1
    assert ASYNC_FILES[0].closed
