"""The default backend through real servers (tests/servers.py), where what the tests
check depends on what each server does with a connection the backend gave back."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from typing import Any

import pytest

from dwebsocket.protocol.connection import Close
from tests.servers import ServerProcess
from tests.wire import (
    TIMEOUT,
    RawClient,
    next_answer_alone,
    read_http_response,
    read_until_eof,
    upgrade_request,
)

pytestmark = pytest.mark.server

#: Every server the default backend takes connections over from.
SERVERS = [
    "runserver",
    "gevent",
    "gunicorn-gevent",
    "gunicorn-gthread",
    "eventlet",
    "uwsgi-takeover",
]


@pytest.mark.parametrize("name", SERVERS)
def test_a_failure_between_the_takeover_and_the_accept_ends_the_connection(
    make_server: Any, name: str
) -> None:
    # tests.views.fail_accept: taking the socket over, or setting up the fast path,
    # raises in accept(). The connection is shut down: the client gets EOF, after the
    # 101 if it went out, and nothing else. Before, it was neither accepted nor shut:
    # eventlet's and uWSGI's clients waited forever (uWSGI: our dup of its fd leaked),
    # gevent and gunicorn wrote the view's 500 on the socket taken over (after the 101).
    server = make_server(name)
    for step in ["take_over", "fast_path"]:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
            sock.sendall(upgrade_request(f"/fail-accept/?step={step}"))
            data = read_until_eof(sock)
        head, _, rest = data.partition(b"\r\n\r\n")
        if step == "take_over":
            assert data == b"", data  # before the 101
        else:
            assert head.startswith(b"HTTP/1.1 101 ") and rest == b"", data


def record(server: ServerProcess, key: str, last: str = "closed") -> dict[str, Any]:
    """``tests.views.opened_while_gone``'s record of connection ``key`` once its last
    entry starts with ``last`` (the connection has closed; bounded), and how many
    connections that process's registry holds, once none (bounded: the registry's
    ``websocket_closed`` receiver may run after the one that records ``closed``). Asked
    again until the process that served it answers (gunicorn runs two)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        url = server.url(f"/opened-while-gone/?id={key}", "http")
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            seen: dict[str, Any] = json.loads(response.read())
        signals = seen["signals"]
        settled = signals and signals[-1].startswith(last) and seen["open"] == 0
        if settled or time.monotonic() > deadline:
            return seen
        time.sleep(0.02)


@pytest.mark.parametrize("name", SERVERS)
def test_a_view_answering_while_a_helper_accepts_ends_the_session(
    make_server: Any, name: str
) -> None:
    # tests.views.answered_while_a_helper_accepts: the view returns a 200 while a
    # helper's send() is inside accept(), the socket taken over. The session ends the
    # connection (1000) once that accept is done, and websocket_closed follows
    # websocket_opened. Before, the session handed the 200 to the server, on a socket
    # no longer the server's, and never ended the connection: the client got the 200
    # and then the helper's 101 (runserver: the 101 and EOF; uWSGI: no EOF), and
    # websocket_closed never followed websocket_opened (eventlet's registry kept the
    # connection), nor did anything give back what the takeover holds.
    server = make_server(name)
    key = uuid.uuid4().hex
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    with RawClient(sock) as client:
        client.handshake(f"/answered-while-a-helper-accepts/?id={key}")
        # The helper's "hello" finds the connection closed: its receiver returns only then.
        assert client.recv() == Close(1000, "")
        assert read_until_eof(client.sock) == b""
    assert record(server, key) == {
        "signals": ["opened", "opened returned", "closed 1000"],
        "open": 0,
    }


@pytest.mark.parametrize("when", ["served", "returned"])
@pytest.mark.parametrize("use", ["accept", "send"])
@pytest.mark.parametrize("name", SERVERS)
def test_a_helper_using_the_connection_after_the_views_answer_is_refused(
    make_server: Any, name: str, use: str, when: str
) -> None:
    # tests.views.answered_then_a_helper_uses: the view answers 403 without accepting,
    # and a helper's accept() or send() starts once the server is done with that answer,
    # or as soon as the session returned it. It raises ConnectionClosed(1006) without
    # touching the socket: the client gets the 403 and nothing else (the server then
    # serves its next request, or closes), and the connection never opens (no signal,
    # nothing in the registry). Before, the helper took the socket over: the client got
    # the 403 and then a 101 (gunicorn gthread, uWSGI), or a 101 before the 403, and
    # websocket_opened with no websocket_closed; or it hung in the takeover until the
    # client left (runserver), or failed on the server's socket (gevent: RuntimeError,
    # eventlet: OSError).
    server = make_server(name)
    key = uuid.uuid4().hex
    path = f"/answered-then-a-helper-uses/?id={key}&use={use}&when={when}"
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        status, _, body = read_http_response(sock)
        assert (status, body) == (403, b"answered\n")
        assert record(server, key, "helper") == {
            "signals": ["helper: ConnectionClosed 1006"],
            "open": 0,
        }
        next_answer_alone(sock)
