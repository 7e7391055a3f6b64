"""Finding the socket and the bytes the server already buffered."""

from __future__ import annotations

import io
import socket

import pytest

from dwebsocket.backends.default import transport as transport_module
from dwebsocket.backends.default.transport import (
    TAKEOVERS,
    Transport,
    find_transport,
    gevent_pywsgi,
    runserver,
)
from dwebsocket.exceptions import BackendUnavailable


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    # wait_readable() gives back the thread's idle database connections before blocking;
    # this thread may hold one from another test, and the database is not the point here.
    monkeypatch.setattr(transport_module, "release_idle_connections", lambda: None)


def test_take_over_drains_what_the_server_buffered(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x05first")
    with server.makefile("rb") as rfile:
        while rfile.readline() not in (b"\r\n", b""):
            pass  # the server parsed the head; the frame sits in its buffer
        transport = Transport(server, server="test", rfile=rfile)
        assert transport.take_over(3.0) == b"\x81\x05first"
        assert server.gettimeout() == 3.0
        assert not transport.wait_readable(0)
        client.sendall(b"more")
        assert transport.wait_readable(1.0)
        assert transport.recv() == b"more"


def test_take_over_with_nothing_buffered(pair) -> None:  # type: ignore[no-untyped-def]
    server, _ = pair
    with server.makefile("rb") as rfile:
        assert Transport(server, server="test", rfile=rfile).take_over(None) == b""
    assert server.gettimeout() is None


def test_shutdown_gives_the_peer_eof_and_is_idempotent(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    transport = Transport(server, server="test")
    transport.shutdown()
    transport.shutdown()
    client.settimeout(1.0)
    assert client.recv(1) == b""
    with pytest.raises(OSError):
        server.sendall(b"the server's late response")


def test_release_hook(pair) -> None:  # type: ignore[no-untyped-def]
    calls = []
    Transport(pair[0], server="test", on_release=lambda: calls.append(1)).release()
    assert calls == [1]


def test_registry_order_and_unknown_server() -> None:
    assert TAKEOVERS[0].__name__ == "explicit"
    with pytest.raises(BackendUnavailable, match="waitress"):
        find_transport({"SERVER_SOFTWARE": "waitress", "wsgi.input": io.BytesIO()})


def test_runserver_takeover(pair) -> None:  # type: ignore[no-untyped-def]
    from django.core.handlers.wsgi import LimitedStream

    with pair[0].makefile("rb") as rfile:
        transport = runserver({"wsgi.input": LimitedStream(rfile, 0)})
        assert transport is not None and transport.sock is pair[0] and transport.rfile is rfile
    assert runserver({"wsgi.input": io.BytesIO()}) is None


def test_gevent_takeover(pair) -> None:  # type: ignore[no-untyped-def]
    with pair[0].makefile("rb") as rfile:
        environ = {"SERVER_SOFTWARE": "gevent/26.9 Python/3.11", "wsgi.input": rfile}
        transport = gevent_pywsgi(environ)
        assert transport is not None and transport.sock is pair[0]
        assert gevent_pywsgi({**environ, "SERVER_SOFTWARE": "other"}) is None
