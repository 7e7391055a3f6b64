"""``WebSocketClient`` itself: what reaches the view, what comes back, how it fails.

pytest-django style; ``test_chat.py`` shows the ``TestCase`` style.
"""

from __future__ import annotations

import json
import logging
import select
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from dwebsocket import ConnectionClosed, InvalidHandshake, InvalidState
from dwebsocket.testing import HandshakeRefused, WebSocketClient
from tests.testing import views
from tests.testing.support import CHAT_SETTINGS, PASSWORD

pytestmark = pytest.mark.urls("tests.testing.urls")


def inspect(ws: WebSocketClient) -> dict[str, Any]:
    seen: dict[str, Any] = ws.receive_json()
    return seen


# -- talking ---------------------------------------------------------------------------


def test_text_and_binary_round_trip() -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send("héllo")
        assert ws.receive() == "héllo"
        ws.send(b"\x00\xff")
        assert ws.receive() == b"\x00\xff"
        ws.send(bytearray(b"ba"))
        assert ws.receive() == b"ba"
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"n": 1}
        assert not ws.closed
    assert ws.closed
    assert ws.close_code == 1000
    assert ws.request is not None
    assert ws.request.websocket.close_code == 1000


@pytest.mark.parametrize("compression", [True, False])
def test_compression_is_negotiated_unless_turned_off(compression: bool) -> None:
    with WebSocketClient("/big/?size=1048576", compression=compression) as ws:
        assert ws.receive() == bytes(range(256)) * 4096
        extensions = [v for k, v in ws.response_headers if k == "sec-websocket-extensions"]
        assert bool(extensions) is compression


def test_the_server_pings_are_answered() -> None:
    with WebSocketClient("/ping/") as ws:
        ws.send("after the ping")
        assert ws.receive() == "after the ping"


def test_subprotocol() -> None:
    with WebSocketClient("/subprotocol/", subprotocols=["v2", "chat"]) as ws:
        assert ws.receive_json() == {"offered": ["v2", "chat"], "chosen": "chat"}
        assert ws.subprotocol == "chat"


def test_several_clients_at_once() -> None:
    clients = [WebSocketClient("/echo/") for _ in range(10)]
    try:
        for ws in clients:
            ws.connect()
        for i, ws in enumerate(clients):
            ws.send(f"message {i}")
        assert [ws.receive() for ws in clients] == [f"message {i}" for i in range(10)]
    finally:
        for ws in clients:
            ws.close()
    assert {ws.close_code for ws in clients} == {1000}


def test_receive_times_out() -> None:
    with WebSocketClient("/echo/") as ws, pytest.raises(TimeoutError, match="/echo/"):
        ws.receive(timeout=0.05)


# -- what the view sees ----------------------------------------------------------------


def test_request_as_the_view_sees_it() -> None:
    with WebSocketClient(
        "/inspect/café/?room=1&x=a%20b",
        headers={"X-Token": "t0k", "X_Spoofed": "dropped, as servers do"},
        cookies={"theme": "dark"},
        secure=True,
        REMOTE_ADDR="10.1.2.3",
        subprotocols=["chat"],
    ) as ws:
        seen = inspect(ws)
    assert seen == {
        "path": "/inspect/café/",
        "query": {"room": "1", "x": "a b"},
        "headers": {"X-Token": "t0k"},
        "cookies": {"theme": "dark"},
        "user": None,
        "secure": True,
        "remote_addr": "10.1.2.3",
        "host": "testserver",
        "origin": None,
        "offered": ["chat"],
    }


def test_host_and_origin_headers() -> None:
    with WebSocketClient(
        "/inspect/", headers={"Host": "localhost", "Origin": "http://localhost:8000"}
    ) as ws:
        seen = inspect(ws)
    assert (seen["host"], seen["origin"]) == ("localhost", "http://localhost:8000")


@pytest.mark.parametrize("path", ["/inspect-async/café/", "/inspect-async/caf%C3%A9/"])
def test_an_async_views_path_written_percent_encoded(path: str) -> None:
    """The path may be written as a browser sends it, percent-encoded, as for
    ``django.test.Client``: the view is found the way Django finds it, on the decoded
    path. The client looked for an ``async def`` view on the path as written, which a
    route matching "café" does not match as "caf%C3%A9": it took the view for a sync one
    and ran it as under WSGI, where an async view is answered 501."""
    with WebSocketClient(path) as ws:
        assert inspect(ws)["path"] == "/inspect-async/café/"


@override_settings(
    USE_I18N=True,
    LANGUAGE_CODE="en",
    LANGUAGES=[("en", "English"), ("fr", "French")],
    MIDDLEWARE=["django.middleware.locale.LocaleMiddleware"],
)
@pytest.mark.urls("tests.testing.i18n_urls")
@pytest.mark.parametrize("path", ["/en/inspect-async/", "/fr/inspect-async/"])
def test_an_async_view_under_a_language_prefix(path: str) -> None:
    """``i18n_patterns``: the view is found in the language its path names, as
    ``LocaleMiddleware`` has Django find it. The client looked for an ``async def`` view
    in the test's own language, found none under ``/fr/``, took it for a sync view and
    ran it as under WSGI, where an async view is answered 501."""
    language = path[1:3]
    with WebSocketClient(path) as ws:
        assert inspect(ws)["path"] == path
    assert getattr(ws.request, "LANGUAGE_CODE", None) == language


@override_settings(FORCE_SCRIPT_NAME="/app")
@pytest.mark.parametrize("path", ["/script-prefix/", "/script-prefix-async/"])
def test_the_urls_a_view_makes_have_the_script_prefix(path: str) -> None:
    """A site served under a prefix (``FORCE_SCRIPT_NAME``): ``reverse()`` in the view
    gives ``/app/...``, as under a server, which sets the prefix for each request in the
    thread that runs it (Django's ``WSGIHandler``). A sync view's thread had none set:
    ``/``, so the URLs it sent lacked the prefix they have in production."""
    with WebSocketClient(path) as ws:
        assert ws.receive() == "/app/"


@override_settings(ALLOWED_HOSTS=["testserver", "example.com"])
@pytest.mark.parametrize("path", ["/inspect/", "/inspect-async/"])
def test_extra_headers_replace_the_requests_own(path: str) -> None:
    """``**extra`` keys are WSGI environ keys, as for ``RequestFactory``:
    ``HTTP_HOST="example.com"`` replaces the Host the client sends, for an ``async def``
    view as for a sync one. For the async view they were added to the request's headers,
    a second Host header that the handshake answered with 400 ("more than one Host
    header": Django joins the two)."""
    with WebSocketClient(
        path,
        headers={"X-Token": "given"},
        HTTP_HOST="example.com",
        HTTP_X_TOKEN="extra",
        HTTP_COOKIE="theme=dark",
    ) as ws:
        seen = inspect(ws)
    assert seen["host"] == "example.com"
    assert seen["headers"] == {"X-Token": "extra"}
    assert seen["cookies"] == {"theme": "dark"}


@pytest.mark.django_db
@override_settings(**CHAT_SETTINGS)
def test_user_is_logged_in() -> None:
    alice = User.objects.create_user("alice")
    with WebSocketClient("/inspect/", user=alice) as ws:
        assert inspect(ws)["user"] == "alice"
    assert ws.request is not None and ws.request.user == alice


@pytest.mark.django_db(transaction=True)
@override_settings(**CHAT_SETTINGS)
def test_user_is_logged_in_outside_a_transaction() -> None:
    carol = User.objects.create_user("carol")
    with WebSocketClient("/inspect/", user=carol) as ws:
        assert inspect(ws)["user"] == "carol"


@pytest.mark.django_db
@override_settings(**CHAT_SETTINGS)
def test_cookies_of_a_django_test_client() -> None:
    User.objects.create_user("bob", password=PASSWORD)
    client = Client()
    assert client.login(username="bob", password=PASSWORD)
    client.cookies["theme"] = "light"
    with WebSocketClient("/inspect/", client=client, cookies={"lang": "fr"}) as ws:
        seen = inspect(ws)
    assert seen["user"] == "bob"
    assert {k: seen["cookies"][k] for k in ("theme", "lang")} == {"theme": "light", "lang": "fr"}


@pytest.mark.django_db
@override_settings(**{**CHAT_SETTINGS, "SESSION_ENGINE": "django.contrib.sessions.backends.db"})
def test_the_cookies_of_the_101_go_to_the_django_test_client() -> None:
    """A browser keeps the cookies of a 101; so does ``client=``'s ``Client``. The view
    gave bob's session a new key before accepting (``cycle_key()``, as ``login()`` does):
    the 101's cookie holds it, and the client's next request is bob's with it."""
    bob = User.objects.create_user("bob", password=PASSWORD)
    client = Client()
    assert client.login(username="bob", password=PASSWORD)
    old = client.cookies["sessionid"].value
    with WebSocketClient("/session-written/?write=cycle", client=client) as ws:
        key = ws.receive_json()["session"]
    assert key != old
    assert client.cookies["sessionid"].value == key
    assert client.session["_auth_user_id"] == str(bob.pk)


@pytest.mark.django_db
@override_settings(**CHAT_SETTINGS)
def test_a_cookie_header_joins_the_other_cookies() -> None:
    """A ``Cookie`` in ``headers`` and the client's own cookies (``user=``, ``client=``,
    ``cookies=``) make one ``Cookie`` header, as a browser sends. They went as two, which
    the server joined with a comma: the view saw ``a`` as ``"1,sessionid=..."``, and no
    session (an anonymous user)."""
    carol = User.objects.create_user("carol")
    with WebSocketClient(
        "/inspect/", headers={"Cookie": "a=1"}, cookies={"b": "2"}, user=carol
    ) as ws:
        seen = inspect(ws)
    assert {k: seen["cookies"][k] for k in ("a", "b")} == {"a": "1", "b": "2"}
    assert seen["user"] == "carol"


@pytest.mark.django_db
@override_settings(**CHAT_SETTINGS)
def test_anonymous_without_user() -> None:
    with WebSocketClient("/inspect/") as ws:
        assert inspect(ws)["user"] == ""


# -- closing ---------------------------------------------------------------------------


def test_the_view_closes_with_a_code() -> None:
    with WebSocketClient("/close/?code=4001&reason=done") as ws:
        ws.send("go")
        assert ws.wait_closed() == 4001
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "done")
        with pytest.raises(ConnectionClosed):
            ws.send("too late")
    assert ws.close_reason == "done"


def test_messages_sent_before_the_close_are_still_received() -> None:
    with WebSocketClient("/big/?size=1024") as ws:
        ws.send("done")  # the view returns: close 1000 right after its message
        assert ws.wait_closed() == 1000
        assert ws.receive() == bytes(range(256)) * 4


def test_the_client_closes_with_a_code() -> None:
    with WebSocketClient("/record/?id=testing-close") as ws:
        ws.close(4002, "bye")
        ws.close()  # idempotent
    assert views_closes()["testing-close"] == {"code": 4002, "reason": "bye", "closed": True}


def views_closes() -> dict[str, Any]:
    from tests import views as echo_views

    return echo_views.CLOSES


def test_a_view_that_does_not_return() -> None:
    views.RELEASE.clear()
    ws = WebSocketClient("/stubborn/", timeout=0.2).connect()
    try:
        with pytest.raises(TimeoutError, match="did not return"):
            ws.close()
        assert ws.close_code == 1006  # no close frame came: cut, as a browser does
    finally:
        views.RELEASE.set()
        assert ws._server is not None
        ws._server.join(10)
        assert not ws._server.is_alive()


def test_an_async_view_that_does_not_return_leaves_no_thread_behind() -> None:
    """As for a sync view, close() says the view did not return; an ``async def`` view
    can be stopped, though: it is cancelled, and its thread (the event loop playing the
    ASGI server) ends instead of waiting for ever."""
    ws = WebSocketClient("/stubborn-async/", timeout=0.2).connect()
    with pytest.raises(TimeoutError, match="did not return"):
        ws.close()
    assert ws._server is not None
    ws._server.join(10)
    assert not ws._server.is_alive()
    assert ws._server.error is None


def test_an_async_view_that_never_answers_the_handshake_leaves_no_thread_behind() -> None:
    ws = WebSocketClient("/hesitant-async/", timeout=0.2)
    with pytest.raises(TimeoutError):
        ws.connect()
    assert ws._server is not None
    ws._server.join(10)
    assert not ws._server.is_alive()


# -- refused handshakes ------------------------------------------------------------------


def test_the_view_refuses() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/refuse/").connect()
    exc = refused.value
    assert (exc.status_code, exc.content) == (403, b"not you\n")
    assert ("content-type", "text/plain") in exc.headers
    assert exc.response is not None and exc.response.status_code == 403
    assert exc.response.wsgi_request.path == "/refuse/"  # type: ignore[attr-defined]
    assert isinstance(exc, InvalidHandshake)
    assert str(exc) == "handshake refused with HTTP 403: not you"


@pytest.mark.parametrize("path", ["/refuse-unregistered/", "/refuse-unregistered-async/"])
def test_a_refusal_with_a_status_http_does_not_name(path: str) -> None:
    """A view may refuse with any status (499, 460...), as servers answer it. For an
    ``async def`` view the client's server side looked its reason phrase up in
    ``http.HTTPStatus``, whose ``ValueError`` ended the connection unanswered: the test
    got ``ConnectionError`` instead of the refusal."""
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient(path).connect()
    assert (refused.value.status_code, refused.value.content) == (499, b"gone\n")


def test_a_refused_origin() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/echo/", origin="https://evil.example").connect()
    assert refused.value.status_code == 403
    assert b"is not allowed" in refused.value.content


def test_an_unknown_url() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/nowhere/").connect()
    assert refused.value.status_code == 404


def test_a_malformed_handshake() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/echo/", headers={"Sec-WebSocket-Key": "second key"}).connect()
    assert refused.value.status_code == 400


def test_a_handshake_header_given_replaces_the_clients_own() -> None:
    # The client sent its own Sec-WebSocket-Version: 13 and the one given too, which the
    # server joined ("13,8"): a test of the answer to version 8 tested another request.
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/echo/", headers={"Sec-WebSocket-Version": "8"}).connect()
    assert refused.value.status_code == 426
    request = refused.value.response.wsgi_request  # type: ignore[union-attr]
    assert request.META["HTTP_SEC_WEBSOCKET_VERSION"] == "8"
    # A key of one's own is sent alone, and the 101's Sec-WebSocket-Accept checked for it.
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with WebSocketClient("/echo/", headers={"sec-websocket-key": key}) as ws:
        assert ws.request is not None
        assert ws.request.META["HTTP_SEC_WEBSOCKET_KEY"] == key
        ws.send("own key")
        assert ws.receive() == "own key"


def test_cookies_set_by_a_refusal_are_returned() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/refuse-with-cookie/").connect()
    assert refused.value.status_code == 401
    assert ("set-cookie", "seen=yes; HttpOnly; Path=/") in refused.value.headers


# -- exceptions in the view --------------------------------------------------------------


@pytest.fixture
def quiet_django_request() -> Iterator[None]:
    """The views below raise on purpose: Django logs an ERROR, as it should."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_an_exception_after_accepting_is_raised_on_close(quiet_django_request: None) -> None:
    ws = WebSocketClient("/raise-error/").connect()
    ws.send("go")
    assert ws.wait_closed() == 1011
    with pytest.raises(RuntimeError, match="boom"):
        ws.close()
    ws.close()  # once


def test_an_exception_after_accepting_can_be_kept(quiet_django_request: None) -> None:
    with WebSocketClient("/raise-error/", raise_request_exception=False) as ws:
        ws.send("go")
        assert ws.wait_closed() == 1011


def test_an_exception_before_accepting_is_raised_by_connect(quiet_django_request: None) -> None:
    with pytest.raises(RuntimeError, match="before accepting"):
        WebSocketClient("/fail-before-accepting/").connect()


def test_an_exception_before_accepting_can_be_a_500(quiet_django_request: None) -> None:
    client = WebSocketClient("/fail-before-accepting/", raise_request_exception=False)
    with pytest.raises(HandshakeRefused) as refused:
        client.connect()
    assert refused.value.status_code == 500


# -- misuse --------------------------------------------------------------------------------


def test_use_before_connect() -> None:
    ws = WebSocketClient("/echo/")
    assert repr(ws) == "<WebSocketClient new /echo/>"
    with pytest.raises(InvalidState):
        ws.send("x")
    with pytest.raises(InvalidState):
        ws.receive()
    ws.close()  # nothing to do


def test_connect_twice() -> None:
    with WebSocketClient("/echo/") as ws:
        assert repr(ws) == "<WebSocketClient open /echo/>"
        with pytest.raises(InvalidState):
            ws.connect()
    assert repr(ws) == "<WebSocketClient closed /echo/>"


def test_send_rejects_other_types() -> None:
    with WebSocketClient("/echo/") as ws, pytest.raises(TypeError):
        ws.send(42)  # type: ignore[arg-type]


@override_settings(
    WEBSOCKET_FACTORY_CLASS="dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory"
)
def test_only_the_default_backend() -> None:
    with pytest.raises(ImproperlyConfigured, match="drives the default backend"):
        WebSocketClient("/echo/").connect()


def test_receive_json_of_binary() -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send(json.dumps([1]).encode())
        assert ws.receive_json() == [1]


# -- edges -----------------------------------------------------------------------------


@pytest.fixture
def release() -> Iterator[None]:
    """For views that wait for ``views.RELEASE``: set it after the test."""
    views.RELEASE.clear()
    yield
    views.RELEASE.set()


def join_view(ws: WebSocketClient) -> None:
    assert ws._server is not None
    ws._server.join(10)
    assert not ws._server.is_alive()


def test_a_view_that_neither_accepts_nor_refuses(release: None) -> None:
    ws = WebSocketClient("/hesitant/", timeout=0.2)
    with pytest.raises(TimeoutError, match="neither accepted nor refused"):
        ws.connect()
    views.RELEASE.set()
    join_view(ws)


def test_a_long_refusal_is_read_whole() -> None:
    with pytest.raises(HandshakeRefused) as refused:
        WebSocketClient("/refuse-at-length/").connect()
    assert refused.value.content == b"no" * 100_000


def test_an_oversized_request_head() -> None:
    with pytest.raises(ValueError, match="request head over 65536 bytes") as raised:
        WebSocketClient("/echo/", headers={"X-Big": "x" * 200_000}).connect()
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_content_type_is_not_an_http_header() -> None:
    with WebSocketClient("/echo/", headers={"Content-Type": "text/plain"}) as ws:
        assert ws.request is not None
        assert ws.request.META["CONTENT_TYPE"] == "text/plain"
        assert "HTTP_CONTENT_TYPE" not in ws.request.META


def test_wait_closed_times_out() -> None:
    with WebSocketClient("/echo/") as ws, pytest.raises(TimeoutError, match="did not close"):
        ws.wait_closed(timeout=0.05)


def test_receive_with_no_time_left() -> None:
    with WebSocketClient("/echo/") as ws, pytest.raises(TimeoutError):
        ws.receive(timeout=0)


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the view's close frame is never answered
def test_receive_with_no_time_left_takes_what_has_arrived() -> None:
    """timeout=0 polls, as in websockets' recv(timeout=0): before, TimeoutError ("no
    message") for a message, or a close, already in the client's socket."""
    with WebSocketClient("/echo/") as ws:
        ws.send("hi")
        assert ws._sock is not None
        assert select.select([ws._sock], [], [], 10)[0], "no echo"
        assert ws.receive(timeout=0) == "hi"
    ws = WebSocketClient("/nothing/").connect()
    join_view(ws)  # its close frame waits in our buffer
    with pytest.raises(ConnectionClosed):
        ws.receive(timeout=0)
    ws.close()


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the view's close frame is never answered
def test_sending_after_the_view_is_gone() -> None:
    ws = WebSocketClient("/nothing/").connect()
    join_view(ws)  # the view returned: its close frame waits in our buffer, unread
    with pytest.raises(ConnectionClosed) as closed:
        ws.send("anyone?")
    assert closed.value.code == 1000
    ws.close()


def test_a_view_that_reads_nothing(release: None) -> None:
    ws = WebSocketClient("/stubborn/", timeout=0.2, compression=False).connect()
    with pytest.raises(TimeoutError, match="read nothing"):
        ws.send(b"x" * (16 << 20))  # more than the socket buffers hold
    views.RELEASE.set()
    ws.close()  # half a frame went out: the connection ends one way or the other
    assert ws.closed


def test_one_views_exception_is_not_blamed_on_another(quiet_django_request: None) -> None:
    with WebSocketClient("/echo/") as calm:
        failing = WebSocketClient("/raise-error/").connect()
        failing.send("go")
        assert failing.wait_closed() == 1011
        with pytest.raises(RuntimeError):
            failing.close()
        calm.send("still fine")
        assert calm.receive() == "still fine"
    assert calm.close_code == 1000
