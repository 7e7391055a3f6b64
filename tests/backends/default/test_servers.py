"""The default backend through real servers (tests/servers.py), where what the tests
check depends on what each server does with a connection the backend gave back."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.wire import TIMEOUT, read_until_eof, upgrade_request

pytestmark = pytest.mark.server

SERVERS = ["runserver", "gevent", "gunicorn-gevent", "gunicorn-gthread", "eventlet"]


@pytest.mark.parametrize("name", SERVERS)
def test_a_failure_between_the_takeover_and_the_accept_ends_the_connection(
    make_server: Any, name: str
) -> None:
    # tests.views.fail_accept: taking the socket over, or setting up the fast path,
    # raises in accept(). The connection is shut down: the client gets EOF, after the
    # 101 if it went out, and nothing else. Before, it was neither accepted nor shut:
    # eventlet's client waited forever, gevent and gunicorn wrote the view's 500 on the
    # socket taken over (after the 101).
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
