"""What a developer sees with Django's default logging (``DEBUG = True``, no ``LOGGING``):
a refused handshake's reason and a message over the size limit, on the server's console,
not only Django's ``Forbidden: /echo/``."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from dwebsocket.protocol.connection import Close
from tests.servers import running_server
from tests.wire import TIMEOUT, RawClient, masked, read_http_response, upgrade_request

pytestmark = pytest.mark.server


@pytest.mark.parametrize("name", ["runserver", "gevent"])
def test_refusals_and_limits_show_in_development(name: str, tmp_path: Path) -> None:
    settings = {"DEBUG": True, "LOGGING": {}, "WEBSOCKET_MAX_MESSAGE_SIZE": 100}
    with running_server(name, tmp_path / "server.log", settings=settings) as server:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
            sock.sendall(upgrade_request("/echo/", origin="https://evil.example"))
            status, _, _ = read_http_response(sock)
        assert status == 403
        with RawClient.connect(server.host, server.port, "/echo/") as client:
            client.sock.sendall(masked(0x1, b"x" * 200))
            event = client.recv()
            assert isinstance(event, Close) and event.code == 1009
    log = server.log()  # stopped: every line is written
    assert "Origin 'https://evil.example' is not allowed" in log, log
    assert "over the size limit" in log, log


@pytest.mark.parametrize("name", ["gevent", "eventlet", "gunicorn-gevent"])
def test_sessions_are_101_in_the_access_log(name: str, tmp_path: Path) -> None:
    # A session is a 101 (it was logged as "200"); a view that raised stays a 500, as
    # Django answers it, so errors still stand out in the access log.
    env = {"GUNICORN_CMD_ARGS": "--access-logfile -"} if name.startswith("gunicorn") else None
    with running_server(name, tmp_path / "server.log", env=env) as server:
        with RawClient.connect(server.host, server.port, "/echo/") as client:
            client.sock.sendall(masked(0x1, b"hi"))
            client.recv()
            client.close()
        with RawClient.connect(server.host, server.port, "/raise-error/") as client:
            client.sock.sendall(masked(0x1, b"hi"))
            event = client.recv()
            assert isinstance(event, Close) and event.code == 1011
        # A server writes its access line once the request's handler returns, which may
        # be after the client saw the close: wait for both lines (bounded), then stop.
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            lines = server.log().splitlines()
            echo = [line for line in lines if '"GET /echo/ HTTP/1.1"' in line]
            error = [line for line in lines if '"GET /raise-error/ HTTP/1.1"' in line]
            if echo and error:
                break
            time.sleep(0.05)
    assert len(echo) == 1 and len(error) == 1, server.log()
    assert '" 101 ' in echo[0], echo
    if name != "eventlet":  # it logs its default, 200, when it finds the request handled
        assert '" 500 ' in error[0], error


#: A log line of the client's choosing, in a path: ``%0A`` decodes to a newline.
FORGED = "[WARNING dwebsocket] forged"


@pytest.mark.parametrize("name", ["gevent", "uvicorn"])
def test_a_path_cannot_write_lines_of_its_own_in_the_debug_log(name: str, tmp_path: Path) -> None:
    """A session's DEBUG lines (opened, closed) name its path as Django's request log
    does, escaped: a path with ``%0A`` wrote lines of the client's choosing (see
    tests/hardening/test_http_layer.py for the INFO lines)."""
    path = "/group/x%0A" + FORGED.replace(" ", "%20") + "/"
    with running_server(name, tmp_path / "server.log") as server:
        with RawClient.connect(server.host, server.port, path) as client:
            assert client.recv() == "joined"
            client.close()
        deadline = time.monotonic() + TIMEOUT
        while server.log().count("\\n" + FORGED) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    log = server.log()
    assert [line for line in log.splitlines() if line.startswith(FORGED)] == []
    assert "WebSocket opened" in log and log.count("\\n" + FORGED) >= 2, log


@pytest.mark.parametrize("name", ["gevent", "uvicorn"])
def test_a_close_reason_cannot_write_lines_of_its_own_in_the_debug_log(
    name: str, tmp_path: Path
) -> None:
    """The peer's close reason is any UTF-8 text, newlines included: the DEBUG line of
    the session's end names it escaped, as it does the path."""
    reason = ("bye\n" + FORGED).encode()
    with running_server(name, tmp_path / "server.log") as server:
        with RawClient.connect(server.host, server.port, "/echo/") as client:
            client.sock.sendall(masked(0x8, struct.pack("!H", 1000) + reason))
            assert isinstance(client.recv(), Close)
        deadline = time.monotonic() + TIMEOUT
        while "WebSocket closed" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    log = server.log()
    assert [line for line in log.splitlines() if line.startswith(FORGED)] == []
    assert "bye\\n" + FORGED in log, log


def test_a_client_cannot_fill_the_log_with_errors_under_an_asgi_server(tmp_path: Path) -> None:
    """``Upgrade: websocket, foo`` is a valid handshake (RFC 7230 lists), but uvicorn takes
    only ``websocket`` alone for one: the request reaches the view as plain HTTP, where no
    socket can be taken over. Each such request logged an ERROR (501), so any client
    could fill the log with ERRORs, which the levels' rule says a client's requests
    never are (docs/logging.rst); then one per process, still telling the operator a
    working server could not serve WebSockets. It is the client's to change: 400, INFO."""
    request = upgrade_request("/echo/").replace(
        b"Upgrade: websocket\r\n", b"Upgrade: websocket, foo\r\n"
    )
    with running_server("uvicorn", tmp_path / "server.log") as server:
        for _ in range(3):
            with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
                sock.sendall(request)
                status, _, _ = read_http_response(sock)
            assert status == 400
        deadline = time.monotonic() + TIMEOUT
        while server.log().count("refused with 400") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    log = server.log()
    assert log.count("refused with 400") == 3, log
    assert "[ERROR dwebsocket]" not in log, log
