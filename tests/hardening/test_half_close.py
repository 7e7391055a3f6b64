"""A client that sends a message, then shuts down its write side (TCP FIN) and reads on.

The echo view gets the message and answers it before it sees the end of the stream; the
client receives the echo, then EOF, and the view ends with 1006 (no close frame came).
Raw sockets, real servers: the default backend (gevent.pywsgi, and uWSGI taking the
connection over) and the uwsgi backend under ``--gevent`` and ``--async --ugreen``
(uWSGI's send API refuses once its read saw the EOF: the backend frames those messages
by hand).

Not here, because whether the echo wins the race with the FIN there is a matter of
timing: uWSGI's ``--http`` router ends the whole connection at the client's FIN
(``test_router_passes_a_half_close_on`` in ``tests/backends/uwsgi/test_defects.py``
shows it without the race), and so does uvicorn (the websockets library's
``eof_received`` closes the transport).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from tests.asgi.test_asgi import recorded
from tests.conftest import assert_no_traceback
from tests.hardening.client import frame, open_websocket, outcome
from tests.hardening.support import SETTINGS
from tests.servers import ServerProcess, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

SERVERS = ["gevent", "uwsgi-takeover", "uwsgi-gevent", "uwsgi-async"]


@pytest.fixture(scope="module", params=SERVERS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The server under test (not the shared suite's ``server``: these servers only)."""
    log = tmp_path_factory.mktemp("half-close") / f"{request.param}.log"
    with running_server(request.param, log, settings=SETTINGS) as srv:
        yield srv
    assert_no_traceback(srv)


#: A text message, and a 256 KiB binary one (not UTF-8: uWSGI's receive loses the
#: opcode, and the backend takes such payloads for binary).
MESSAGES: dict[str, str | bytes] = {"text": "hi", "binary": bytes(range(256)) * 1024}


@pytest.mark.parametrize("path", ["/echo/", "/echo-wait/"])
@pytest.mark.parametrize("kind", MESSAGES)
def test_a_message_then_fin_is_answered_before_the_end(
    target: ServerProcess, path: str, kind: str
) -> None:
    message = MESSAGES[kind]
    sock, rest = open_websocket(target, path)
    with sock:
        if isinstance(message, str):
            sock.sendall(frame(0x1, message.encode()))
        else:
            sock.sendall(frame(0x2, message))
        sock.shutdown(socket.SHUT_WR)
        result = outcome(sock, rest)
    assert result.messages == [message]
    assert result.eof and result.close is None  # the view saw the end first


def test_every_message_before_the_fin_is_answered_and_the_view_sees_1006(
    target: ServerProcess,
) -> None:
    key = uuid.uuid4().hex
    sock, rest = open_websocket(target, f"/record/?id={key}")
    with sock:
        sock.sendall(b"".join(frame(0x1, f"m{i}".encode()) for i in range(5)))
        sock.shutdown(socket.SHUT_WR)
        result = outcome(sock, rest)
    assert result.messages == [f"m{i}" for i in range(5)]
    assert result.eof and result.close is None
    assert recorded(target, "/record/", key) == {"code": 1006, "reason": "", "closed": True}
