"""``manage.py runserver`` after a takeover (#24): it must not read the rest of the
WebSocket as HTTP, and the close handshake must complete.

runserver's handler loops ``handle_one_request()`` while the connection is kept alive (an
upgrade request is HTTP/1.1, so it is). It used to read the client's close frame, or what
was left of a message over the size limit, as the next request: ``code 400, message Bad
HTTP/0.9 request type ('\\x88...')``, then ``Broken pipe`` when it answered; and with a
message over the limit still arriving, the client could get no close frame at all.

It took a response with a ``Content-Length`` (``CommonMiddleware``, in every
``startproject``) for runserver to keep the connection; without one it closes it. Its
own log (``django.server``) is where the noise went. Each case runs a few times: the old
failure depended on how the bytes raced.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from tests.conftest import assert_no_traceback
from tests.servers import LOGGING, ServerProcess, running_server
from tests.wire import TIMEOUT, read_http_response, upgrade_request

pytestmark = pytest.mark.server

ROUNDS = 3


@pytest.fixture(scope="module")
def runserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("runserver") / "server.log"
    logging = copy.deepcopy(LOGGING)  # and runserver's own log (Django's default shows it)
    logging["loggers"]["django.server"] = {"handlers": ["stderr"], "level": "INFO"}  # type: ignore[index]
    settings = {
        "MIDDLEWARE": ["django.middleware.common.CommonMiddleware"],
        "LOGGING": logging,
    }
    with running_server("runserver", log, settings=settings) as server:
        yield server


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _connection_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the TCP connection from ``client_port``."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                return inode
    return None


def wait_until_released(server: ServerProcess, inode: str) -> None:
    """Return once runserver no longer holds the socket ``inode``: its handler is done
    with it, and has logged whatever it was going to. Fails after ``TIMEOUT``."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if inode not in _socket_inodes(server.process.pid):
            return
        time.sleep(0.02)
    pytest.fail(f"runserver still holds the connection's socket (inode {inode})")


def session(server: ServerProcess, path: str, message: str | bytes) -> tuple[str, int | None]:
    """Send ``message`` to ``path`` and wait for the server's close: ``(the inode of
    the server's socket, the code of the close frame the client received)`` (None: no
    close frame)."""
    with connect(
        server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None, max_size=None
    ) as client:
        # Established (the 101 came): the server's end is in /proc/net/tcp with its inode.
        inode = _connection_inode(server.port, client.socket.getsockname()[1])
        assert inode not in (None, "0")
        client.send(message)
        try:
            while True:
                client.recv(timeout=TIMEOUT)
        except ClientClosed as closed:
            received = closed.rcvd
        except TimeoutError:
            received = None
    return inode, None if received is None else received.code


@pytest.mark.parametrize(
    ("path", "message", "code"),
    [
        ("/echo/", b"\x00" * (2 << 20), 1009),  # over WEBSOCKET_MAX_MESSAGE_SIZE (1 MiB)
        ("/raise-error/", "go", 1011),
        ("/close/?code=4000", "go", 4000),
    ],
    ids=["1009", "1011", "server-close"],
)
def test_runserver_reads_nothing_after_the_session(
    runserver: ServerProcess, path: str, message: str | bytes, code: int
) -> None:
    since = runserver.mark()
    for _ in range(ROUNDS):
        inode, received = session(runserver, path, message)
        assert received == code
        wait_until_released(runserver, inode)
    log = runserver.log(since)
    assert "Bad HTTP" not in log and "Bad request" not in log, log
    assert "Broken pipe" not in log, log
    assert "Traceback" not in log or code == 1011, log
    # The access log has each session, with the status of Django's response (which
    # went nowhere): 101, or 500 for the view that raised.
    status = 500 if code == 1011 else 101
    assert log.count(f'"GET {path} HTTP/1.1" {status} ') == ROUNDS, log


@pytest.mark.parametrize(
    ("value", "status"),
    [(b"\xb2", 400), (b"1\xb9", 400), (b"1" * 5000, 400), (b"0" * 5000, 101)],
    ids=["superscript-two", "digit-and-superscript-one", "5000-digits", "5000-zeros"],
)
def test_a_content_length_int_refuses_gets_an_answer_not_a_500(
    runserver: ServerProcess, value: bytes, status: int
) -> None:
    """runserver passes any Content-Length on; "\\xb2" (latin-1 "²") passed
    ``str.isdigit()`` and then failed ``int()``, as did 5000 digits (Python's limit is
    4300): a ValueError, a 500 and a traceback for a malformed handshake."""
    since = runserver.mark()
    request = upgrade_request("/echo/").replace(
        b"\r\n\r\n", b"\r\nContent-Length: " + value + b"\r\n\r\n"
    )
    with socket.create_connection((runserver.host, runserver.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        answer, _, _ = read_http_response(sock)
    assert answer == status
    assert_no_traceback(runserver, since)
