"""A client that leaves before its 101 is written: the session still gives the connection
back to the server.

The default backend begins the takeover before it writes the 101; when the write fails,
``accept()`` raises ``ConnectionClosed`` with the websocket closed but never accepted, and
the session used to end without ``end_session`` (which only ran for accepted
connections): the transport was never released. eventlet then wrote Django's response on
the dead socket and logged a traceback for every such client, and under uWSGI the fd the
backend made at takeover stayed open. Both for a view that returns and one that raises.

A client that leaves right after its 101, while ``websocket_opened``'s receivers run:
``websocket_closed`` follows them, once (it used to be sent in their middle, so that a
receiver of both, such as the registry or the open-connections gauge, could see the
close before the open and keep a dead connection).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest

from tests.servers import ServerProcess
from tests.wire import TIMEOUT, read_http_response, read_until_eof, upgrade_request

pytestmark = pytest.mark.server

ROUNDS = 20
PATHS = ["/echo-wait/", "/raise-error/"]


def vanish(server: ServerProcess, path: str) -> None:
    """Send an upgrade request and reset the connection at once (RST, not FIN)."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def socket_fds(pid: int) -> int:
    """The sockets open in process ``pid`` and its children (uWSGI's master and worker)."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(child) for child in f.read().split()]
    count = 0
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                count += os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:")
            except OSError:
                continue  # closed meanwhile
    return count


def eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("path", PATHS)
def test_eventlet_writes_nothing_on_a_connection_left_during_the_handshake(
    make_server: Callable[..., ServerProcess], path: str
) -> None:
    server = make_server("eventlet")
    for _ in range(ROUNDS):
        vanish(server, path)
    # eventlet logs each request once it has written (or failed to write) the response.
    assert eventually(lambda: server.log().count(f'"GET {path} HTTP/1.1"') >= ROUNDS)
    log = server.log()
    assert "went away during the handshake" in log  # the case under test happened
    assert "Traceback" not in log, log


@pytest.mark.parametrize("path", PATHS)
def test_uwsgi_takeover_closes_its_fd_of_a_connection_left_during_the_handshake(
    make_server: Callable[..., ServerProcess], path: str
) -> None:
    server = make_server("uwsgi-takeover")
    # One whole session first: the worker has imported and set up everything.
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/nothing/"))
        assert read_http_response(sock)[0] == 101
        read_until_eof(sock)
    assert eventually(lambda: "WebSocket closed" in server.log())
    before = socket_fds(server.process.pid)
    since = server.mark()
    for _ in range(ROUNDS):
        vanish(server, path)
    assert eventually(lambda: "went away during the handshake" in server.log(since))
    assert eventually(lambda: socket_fds(server.process.pid) <= before), (
        f"{socket_fds(server.process.pid)} sockets open, {before} before"
    )


def get_json(server: ServerProcess, path: str) -> dict[str, object]:
    with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def open_gauge(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.url("/metrics", "http"), timeout=TIMEOUT) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("django_websocket_connections_open "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("name", ["runserver", "gevent"])
def test_a_client_gone_while_websocket_opened_runs_is_closed_after_it(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    # tests.views.opened_while_gone: a helper thread's send() accepts, and its
    # websocket_opened receiver returns once the connection is closed; the view's wait()
    # reads the EOF of the client, which leaves right after the 101.
    server = make_server(name)
    key = uuid.uuid4().hex
    path = f"/opened-while-gone/?id={key}"
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        assert read_http_response(sock)[0] == 101
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert eventually(lambda: any("closed" in s for s in get_json(server, path)["signals"]))  # type: ignore[attr-defined]
    assert eventually(lambda: "WebSocket closed" in server.log())
    seen = get_json(server, path)
    assert seen["signals"] == ["opened", "opened returned", "closed 1006"], server.log()
    assert seen["open"] == 0  # the registry let it go
    assert eventually(lambda: open_gauge(server) == 0.0)
