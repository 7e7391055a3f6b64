"""The dwebsocket 0.x README, run for real: its examples and every name it shows, on
each kind of server, with and without ``WebSocketMiddleware`` (tests/integration/readme.py).
What docs/migration.rst documents as changed is tested as changed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import assert_no_traceback
from tests.integration.test_default_backend import http_get
from tests.servers import LOGGING, ServerProcess, start_server
from tests.wire import TIMEOUT

pytestmark = pytest.mark.server

#: uwsgi-readme: the 0.x README's uWSGI command line (its HTTP router, --async --ugreen).
SERVERS = ["runserver", "gevent", "gunicorn-gevent", "uwsgi-gevent", "uwsgi-async", "uwsgi-readme"]
MIDDLEWARE = ["dwebsocket.middleware.WebSocketMiddleware"]
#: The servers' log, and Django's errors ("Internal Server Error", with the traceback of a
#: view that raised) on stderr too, which DEBUG = False otherwise sends to ADMINS only.
LOGGING_WITH_ERRORS = {
    **LOGGING,
    "loggers": {
        **LOGGING["loggers"],  # type: ignore[dict-item]
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}


def readme_settings(middleware: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ROOT_URLCONF": "tests.integration.readme",
        "LOGGING": LOGGING_WITH_ERRORS,
    }
    if middleware:
        settings["MIDDLEWARE"] = MIDDLEWARE
    return settings


@pytest.fixture(
    scope="module",
    params=[(name, mw) for name in SERVERS for mw in (False, True)],
    ids=lambda p: f"{p[0]}{'-middleware' if p[1] else ''}",
)
def readme_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    name, middleware = request.param
    settings = readme_settings(middleware)
    srv = start_server(name, tmp_path_factory.mktemp(name) / "server.log", settings=settings)
    srv.middleware = middleware  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()
    assert_no_traceback(srv)


def ws(server: ServerProcess, path: str, **kwargs: Any) -> ClientConnection:
    return connect(
        server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None, **kwargs
    )


def ended_normally(server: ServerProcess, client: ClientConnection) -> bool:
    """The connection ended normally: 1000 from whichever side closed first (uWSGI answers
    a client's close with an empty close frame: tests/backends/uwsgi/defects.py)."""
    return client.close_code == 1000 or (
        server.name.startswith("uwsgi") and client.close_code == 1005
    )


def report(path: Path) -> Any:
    """What the view wrote to ``path`` (it writes once the client has closed)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"the view wrote no report to {path}")


def test_echo_once(readme_server: ServerProcess) -> None:
    with ws(readme_server, "/echo_once/") as client:
        client.send("Hello")
        assert client.recv(timeout=TIMEOUT) == "Hello"
    assert ended_normally(readme_server, client)


@pytest.mark.parametrize(
    ("name", "path"),
    [(name, "/echo_once/") for name in [*SERVERS, "uvicorn"]] + [("uvicorn", "/echo_once_async/")],
)
def test_echo_once_client_gone_without_a_message(name: str, path: str, tmp_path: Path) -> None:
    """wait() returns None when the client closes; the README's send(message) then
    sends None on the closed connection, which is a normal end like any send on a closed
    connection (docs/migration.rst), not a TypeError: Django logged "Internal Server
    Error" with its traceback for every client that left without a message. (Its own
    server, stopped before its log is read: the error is logged after the close.)"""
    srv = start_server(name, tmp_path / "server.log", settings=readme_settings(False))
    try:
        with ws(srv, path) as client:
            pass
        assert ended_normally(srv, client)
        with ws(srv, path) as client:  # the server is still fine
            client.send("x")
            assert client.recv(timeout=TIMEOUT) == "x"
    finally:
        srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


def test_echo_once_plain_http_is_400(readme_server: ServerProcess) -> None:
    status, _ = http_get(readme_server, "/echo_once/")
    assert status == 400


def test_lower_case(readme_server: ServerProcess) -> None:
    status, body = http_get(readme_server, "/lower_case/?message=HeLLo")
    assert (status, body) == (200, b"hello")
    with ws(readme_server, "/lower_case/") as client:
        for message in ["ABC", "Déjà Vu"]:
            client.send(message)
            assert client.recv(timeout=TIMEOUT) == message.lower()
    assert ended_normally(readme_server, client)


def test_read_has_count_and_after_close(readme_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with ws(readme_server, f"/polling/?out={out}") as client:
        assert client.recv(timeout=TIMEOUT) == "ready"
        for message in ["a", "b", "c", "stop"]:
            client.send(message)
        assert client.recv(timeout=TIMEOUT) == "bye"
    facts = report(out)
    assert facts == {
        "read": None,
        "has": False,
        "count": 0,
        "closed": False,
        "got": ["a", "b", "c"],
        "after_read": None,
        "after_has": False,
        "after_count": 0,
        "after_wait": None,
        "after_closed": True,
        "after_closed_attr": True,
        "after_list": [],
    }


def test_http_response_after_using_the_websocket(readme_server: ServerProcess) -> None:
    with ws(readme_server, "/answer-after-use/") as client:
        client.send("x")
        assert client.recv(timeout=TIMEOUT) == "x"
    assert ended_normally(readme_server, client)
    assert http_get(readme_server, "/answer-after-use/") == (200, b"done")


def test_close_then_return(readme_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with ws(readme_server, f"/closes-itself/?out={out}") as client:
        client.send("x")
        assert client.recv(timeout=TIMEOUT) == "x"
        with pytest.raises(ClientClosed):  # the view closed
            client.recv(timeout=TIMEOUT)
    assert ended_normally(readme_server, client)
    assert report(out) == {"closed": True, "attr": True, "wait": None}


def test_send_str_and_bytes(readme_server: ServerProcess) -> None:
    """str goes as text, bytes as binary (docs/migration.rst)."""
    with ws(readme_server, "/sends-both/") as client:
        assert client.recv(timeout=TIMEOUT) == "text"
        assert client.recv(timeout=TIMEOUT) == b"bytes"


def test_is_websocket_and_websocket_attribute(readme_server: ServerProcess) -> None:
    assert http_get(readme_server, "/kind/") == (200, b"http None")
    with ws(readme_server, "/kind/") as client:
        assert client.recv(timeout=TIMEOUT) == "websocket"


def test_class_based_views(readme_server: ServerProcess) -> None:
    assert http_get(readme_server, "/cbv-dispatch/") == (200, b"plain")
    with ws(readme_server, "/cbv-dispatch/") as client:
        client.send("a")
        assert client.recv(timeout=TIMEOUT) == "a"
    for path in ["/cbv-require-dispatch/", "/cbv-require-get/"]:
        assert http_get(readme_server, path)[0] == 400
        with ws(readme_server, path) as client:
            client.send("b")
            assert client.recv(timeout=TIMEOUT) == "b"


def test_middleware_views(readme_server: ServerProcess) -> None:
    """The README's middleware: plain views see ``websocket`` None and ``is_websocket()``
    False; a WebSocket request reaches only a view with ``accept_websocket`` set."""
    if not readme_server.middleware:  # type: ignore[attr-defined]
        pytest.skip("the middleware's")
    assert http_get(readme_server, "/undecorated/") == (200, b"plain None")
    with pytest.raises(InvalidStatus) as refused:
        ws(readme_server, "/undecorated/")
    assert refused.value.response.status_code == 400
    assert http_get(readme_server, "/flagged/") == (200, b"plain")
    with ws(readme_server, "/flagged/") as client:
        client.send("f")
        assert client.recv(timeout=TIMEOUT) == "f"


def test_messages_unread_at_the_close_stay_readable(
    readme_server: ServerProcess, tmp_path: Path
) -> None:
    """count_messages(), has_messages() and read() still give what came before the
    client's close, as 0.x's queue did; then None."""
    out = tmp_path / "report.json"
    with ws(readme_server, f"/unread-at-close/?out={out}") as client:
        client.send("go")
        assert client.recv(timeout=TIMEOUT) == "ready"
        client.send("a")
        client.send(b"\xff")  # not UTF-8: uWSGI loses the opcode (tests/backends/uwsgi)
    assert report(out) == {
        "closed": True,
        "count": 2,
        "has": True,
        "messages": ["'a'", repr(b"\xff"), "None"],
        "list": [],
    }
