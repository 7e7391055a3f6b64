"""The takeover functions (``backends/default/takeovers.py``): each server's socket and
buffered bytes found, the registry's order, and the refusal on servers without a socket,
over real socket pairs (no server needed). The servers themselves: tests/test_servers.py
and tests/backends/."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from dwebsocket.backends.default.takeovers import (
    TAKEOVERS,
    UWSGI_START_RESPONSE,
    UWSGI_TAKEN_OVER,
    find_transport,
    gevent_pywsgi,
    runserver,
)
from dwebsocket.backends.uwsgi import wsgi as uwsgi_wrapper
from dwebsocket.exceptions import BackendUnavailable
from tests.servers import ServerProcess
from tests.wire import TIMEOUT, read_http_response, upgrade_request


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


class Unreader27:
    """gunicorn >= 27: ``take_buffered()``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def take_buffered(self) -> bytes:
        data, self.data = self.data, b""
        return data


def gunicorn_environ(sock: socket.socket, unreader: object) -> dict[str, object]:
    body = SimpleNamespace(reader=SimpleNamespace(unreader=unreader))
    return {"gunicorn.socket": sock, "wsgi.input": body, "SERVER_SOFTWARE": "gunicorn/27.0.1"}


@pytest.mark.parametrize("old", [False, True], ids=["take_buffered", "buf"])
def test_gunicorn_hands_over_the_buffered_bytes(
    pair: tuple[socket.socket, socket.socket], old: bool
) -> None:
    server, client = pair
    unreader: object = (
        SimpleNamespace(buf=io.BytesIO(b"first frame")) if old else Unreader27(b"first frame")
    )
    transport = find_transport(gunicorn_environ(server, unreader))
    assert transport.server == "gunicorn" and transport.sock is server
    assert transport.take_over(5.0) == b"first frame"
    assert server.gettimeout() == 5.0
    client.sendall(b"next")
    assert transport.wait_readable(5.0) and transport.recv() == b"next"


def test_eventlet_takeover_drains_rfile_and_marks_the_request_handled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    eventlet_wsgi = pytest.importorskip("eventlet.wsgi")
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\nbuffered")
    rfile = server.makefile("rb")
    try:
        assert rfile.readline() == b"GET / HTTP/1.1\r\n"
        assert rfile.readline() == b"\r\n"  # what eventlet's parser consumed; the rest is buffered
        request_input = SimpleNamespace(get_socket=lambda: server, rfile=rfile)
        transport = find_transport({"eventlet.input": request_input, "wsgi.input": request_input})
        assert transport.server == "eventlet"
        assert transport.take_over(5.0) == b"buffered"
        eventlet_wsgi.WSGI_LOCAL.already_handled = False
        transport.release()
        assert eventlet_wsgi.WSGI_LOCAL.already_handled is True
    finally:
        rfile.close()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SERVER_SOFTWARE": "waitress", "wsgi.input": io.BytesIO()}, "waitress"),
        (
            {
                "SERVER_SOFTWARE": "Apache/2.4.62",
                "mod_wsgi.version": (5, 0, 0),
                "wsgi.input": io.BytesIO(),
            },
            "Apache",
        ),
        ({"wsgi.input": io.BytesIO()}, "an unknown server"),
    ],
    ids=["waitress", "mod_wsgi", "unknown"],
)
def test_no_socket_no_takeover(environ: dict[str, object], named: str) -> None:
    with pytest.raises(BackendUnavailable) as info:
        find_transport(environ)
    assert named in str(info.value)


def test_registry_order_and_unknown_server() -> None:
    assert TAKEOVERS[0].__name__ == "explicit"
    with pytest.raises(BackendUnavailable, match="waitress"):
        find_transport({"SERVER_SOFTWARE": "waitress", "wsgi.input": io.BytesIO()})


def test_runserver_takeover(pair: tuple[socket.socket, socket.socket]) -> None:
    from django.core.handlers.wsgi import LimitedStream

    with pair[0].makefile("rb") as rfile:
        transport = runserver({"wsgi.input": LimitedStream(rfile, 0)})
        assert transport is not None and transport.sock is pair[0] and transport.rfile is rfile
    assert runserver({"wsgi.input": io.BytesIO()}) is None


def test_gevent_takeover(pair: tuple[socket.socket, socket.socket]) -> None:
    with pair[0].makefile("rb") as rfile:
        environ = {"SERVER_SOFTWARE": "gevent/26.9 Python/3.11", "wsgi.input": rfile}
        transport = gevent_pywsgi(environ)
        assert transport is not None and transport.sock is pair[0]
        assert gevent_pywsgi({**environ, "SERVER_SOFTWARE": "other"}) is None


def test_uwsgi_environ_keys_are_the_wrappers() -> None:
    # The default backend imports nothing of the uwsgi backend: its copy of the keys.
    assert UWSGI_START_RESPONSE == uwsgi_wrapper.START_RESPONSE
    assert UWSGI_TAKEN_OVER == uwsgi_wrapper.TAKEN_OVER


@pytest.mark.server
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("uwsgi-takeover-async", "cannot serve uWSGI --async cores"),
        ("uwsgi-takeover-async-plain", "cannot serve uWSGI --async cores"),
        ("uwsgi-takeover-unpatched", "needs monkey-patched sockets"),
    ],
)
def test_uwsgi_takeover_refuses_where_it_cannot_work(
    make_server: Callable[..., ServerProcess], name: str, reason: str
) -> None:
    """uWSGI's takeover (``takeovers.uwsgi_connection``) reads the concurrency mode from
    ``uwsgi`` itself: where its sockets would block every core, a 501 naming why."""
    server = make_server(name)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/echo/"))
        status, _headers, body = read_http_response(sock)
    assert status == 501
    assert reason.encode() in body
    assert reason in server.log()
