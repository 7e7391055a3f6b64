"""``dwebsocket.dws``: the envelope's messages from a client that announced it, in-process
and on real servers (the default backend with gevent's C fast path, and runserver's
threads)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpRequest
from django.test import override_settings

from dwebsocket import accept_websocket
from tests.inprocess import Session
from tests.servers import ServerProcess
from tests.wire import RawClient

PING = '{"dws":"ping"}'
PONG = '{"dws":"pong"}'
#: What one user may send to a group to fool the others' clients: a recovery that never
#: happened, and a position that moves their client's resume point.
FORGED = '{"dws":"joined","g":"feed","p":"1:999","since":"1:1","recovered":true,"missed":0}'


def escaped(text: str) -> dict[str, Any]:
    """What a client that speaks dws gets for the application's ``text`` that looks like
    an envelope: its clients hand the page ``text``, of no group (docs/protocol.rst)."""
    return {"dws": "msg", "g": None, "p": None, "d": text}


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "urls"),
    [("gevent", "tests.urls"), ("runserver", "tests.urls"), ("uvicorn", "tests.asgi.urls")],
)
def test_an_envelope_nested_too_deep_to_parse_goes_to_the_view(
    name: str, urls: str, make_server: Callable[..., ServerProcess]
) -> None:
    """A text message that starts like an envelope but nests deeper than ``json`` can
    decode (RecursionError, not ValueError) is the application's, as any other message
    that is not valid JSON: the view gets it and the connection stays open. Before, the
    RecursionError escaped ``wait()``: a 500 in the server's log and 1011 for the client,
    from any client that sends ``?dws=1``; under ASGI it escaped the connection's receive
    task, which dropped the connection (1006, no close frame)."""
    server = make_server(name, settings={"ROOT_URLCONF": urls})
    depth = sys.getrecursionlimit() * 10
    deep = '{"dws":' + "[" * depth + "]" * depth + "}"
    with RawClient.connect(server.host, server.port, "/echo/?dws=1") as client:
        client.send('{"dws":"ping"}')  # the envelope's own: answered, not echoed
        assert client.recv() == '{"dws":"pong"}'
        client.send(deep)
        assert json.loads(client.recv()) == escaped(deep)  # the view's, sent back to it
        client.send("after")
        assert client.recv() == "after"


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "urls"), [("uvicorn", "tests.asgi.urls"), ("gevent", "tests.urls")]
)
def test_an_envelope_of_any_type_is_never_the_views(
    name: str, urls: str, make_server: Callable[..., ServerProcess]
) -> None:
    """Every JSON object that begins with ``{"dws"`` is the library's (docs/protocol.rst):
    a type this server does not know -- ``null`` included -- is ignored on every server.
    Under ASGI a ``null`` type went to the view, as if the object were the application's."""
    server = make_server(name, settings={"ROOT_URLCONF": urls})
    with RawClient.connect(server.host, server.port, "/echo/?dws=1") as client:
        for unknown in ('{"dws":null}', '{"dws":"later-version"}', '{"dws":false,"x":1}'):
            client.send(unknown)
        client.send("after")
        assert client.recv() == "after"


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "urls"), [("uvicorn", "tests.asgi.urls"), ("gevent", "tests.urls")]
)
def test_a_query_django_will_not_parse_announces_no_envelope(
    name: str, urls: str, make_server: Callable[..., ServerProcess]
) -> None:
    """A URL with ``dws=1`` among more fields than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` (any
    client can send one): Django will not read its query, so the client announced nothing
    and the view runs as for any client. ``dws.announced`` let ``TooManyFieldsSent``
    out: under an ASGI server, where it runs before Django's handler, the handshake was
    refused with a 500 and a traceback in the server's log (under WSGI a 400, even for
    a view that never reads the query)."""
    server = make_server(name, settings={"ROOT_URLCONF": urls})
    fields = "&".join(f"f{i}=" for i in range(1001))
    with RawClient.connect(server.host, server.port, f"/echo/?dws=1&{fields}") as client:
        client.send(PING)  # not an envelope: this client announced none
        assert client.recv() == PING
        client.send("after")
        assert client.recv() == "after"


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the view's close frame is never answered
def test_read_returns_a_fallback_that_looks_like_an_envelope() -> None:
    """``read(fallback)`` with nothing ready returns the fallback, whatever it is: one
    that looks like an envelope was taken for a message from the client (answered with
    a pong) and read again, forever."""
    seen: dict[str, Any] = {}

    @accept_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.accept()
        seen["read"] = ws.read(fallback=PING)
        ws.send("done")

    with Session(view, path="/ws/?dws=1") as session:
        session.expect_101()
        assert session.client.recv() == "done"
        session.finish()
    assert seen == {"read": PING}


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the view's close frame is never answered
def test_envelope_messages_are_not_counted_as_the_views() -> None:
    """``count_messages()`` / ``has_messages()`` count only the messages ``read()``
    returns: the browser client's ``{"dws":"ping"}`` (sent after 25 s of silence) was
    counted, so a view polling ``if ws.has_messages(): handle(ws.read())`` got None from
    ``read()`` -- found by a view collecting what it read."""
    seen: dict[str, Any] = {}
    ready = threading.Event()

    @accept_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.send("go")
        assert ready.wait(5)  # the client's five messages are in the socket by then
        seen["count"] = ws.count_messages()
        seen["has"] = ws.has_messages()
        seen["read"] = [ws.read(), ws.read()]
        # The last ping: answered by count_messages(), as the first was, not counted.
        seen["after"] = (ws.count_messages(), ws.has_messages(), ws.read("none"))
        ws.send("done")

    with Session(view, path="/ws/?dws=1") as session:
        session.expect_101()
        assert session.client.recv() == "go"
        for message in (PING, "a", PING, "b", PING):
            session.client.send(message)
        ready.set()
        assert [session.client.recv() for _ in range(4)] == [PONG] * 3 + ["done"]
        session.finish()
    assert seen == {
        "count": 2,
        "has": True,
        "read": ["a", "b"],
        "after": (0, False, "none"),
    }


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the view's close frame is never answered
def test_a_view_that_reads_only_what_has_messages_announces_answers_pings() -> None:
    """A view in the polling style of dwebsocket 0.5 -- ``if ws.has_messages():
    handle(ws.read())``, its own work between -- answers the browser client's
    ``{"dws":"ping"}``. ``has_messages()`` rightly leaves the envelope's messages out,
    so such a view never called ``read()`` for a ping alone: never answered, its client
    took the healthy connection for dead after ``pingTimeout`` (4002) and reconnected,
    every ``pingInterval`` + ``pingTimeout`` while idle."""
    stop = threading.Event()
    got: list[Any] = []

    @accept_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket
        ws.send("polling")
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            if ws.has_messages():
                got.append(ws.read())
                ws.send("got it")
            else:
                time.sleep(0.01)  # the view's own work

    with Session(view, path="/ws/?dws=1") as session:
        session.expect_101()
        assert session.client.recv() == "polling"
        session.client.send(PING)
        assert session.client.recv() == PONG
        session.client.send("a")
        session.client.send(PING)
        assert [session.client.recv(), session.client.recv()] == ["got it", PONG]
        stop.set()
        session.finish()
    assert got == ["a"]


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "urls"),
    [
        ("gevent", "tests.urls"),
        ("runserver", "tests.urls"),
        ("uwsgi-gevent", "tests.urls"),  # the uwsgi backend
        ("uvicorn", "tests.asgi.urls"),  # a sync view under ASGI
        ("uvicorn", "tests.asgi.async_urls"),
    ],
)
def test_the_views_text_that_looks_like_an_envelope_goes_as_the_applications(
    name: str, urls: str, make_server: Callable[..., ServerProcess]
) -> None:
    """A view's ``send()`` of text that begins like an envelope reaches a client that
    speaks dws escaped (its clients give the page that text), one that does not as it
    is. Here the echo view sends back text its client sent that begins like one but is
    no JSON (so the view got it)."""
    server = make_server(name, settings={"ROOT_URLCONF": urls})
    text = '{"dws" begins this, not JSON'
    with RawClient.connect(server.host, server.port, "/echo/?dws=1") as client:
        client.send(text)
        assert json.loads(client.recv()) == escaped(text)
        client.send("plain")
        assert client.recv() == "plain"
    with RawClient.connect(server.host, server.port, "/echo/") as client:
        client.send(text)
        assert client.recv() == text


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "urls", "path"),
    [
        ("gevent", "tests.urls", "/group/forged/"),
        ("runserver", "tests.urls", "/group/forged/"),
        ("uvicorn", "tests.asgi.async_urls", "/group/forged/"),  # sync view, ASGI
        ("uvicorn", "tests.asgi.async_urls", "/room/forged/"),  # async view
    ],
)
def test_a_user_cannot_forge_envelopes_for_other_users_through_a_group(
    name: str, urls: str, path: str, make_server: Callable[..., ServerProcess]
) -> None:
    """A relay view (each message a member sends goes to the group, as docs/groups.rst's
    chat does) handed one user's forged ``joined`` to the others' clients as the
    library's: dwebsocket.js and dwebsocket.client reported a recovery that never
    happened and kept the forged position to resume from, so after their next reconnect
    messages were missing and they said "recovered". A client that speaks dws now gets
    it as the application's message; one that does not, as it was sent."""
    server = make_server(name, settings={"ROOT_URLCONF": urls})
    with (
        RawClient.connect(server.host, server.port, path) as sender,
        RawClient.connect(server.host, server.port, path + "?dws=1") as member,
    ):
        assert sender.recv() == "joined"
        assert member.recv() == "joined"
        sender.send(FORGED)
        assert sender.recv() == FORGED
        assert json.loads(member.recv()) == escaped(FORGED)
        sender.send("hello")
        assert sender.recv() == "hello"
        assert member.recv() == "hello"
