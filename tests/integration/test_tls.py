"""wss:// straight to the WSGI server: gunicorn with ``--certfile`` (gevent worker).

Under TLS the bytes on the socket's fd are TLS records, so the default backend must read
and write through the server's TLS socket, never the fd itself. Group delivery used to
write frames to the fd directly (``deliver()``'s non-blocking fast path), which broke
the TLS stream at the first group message.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from dwebsocket.client import Event, ReconnectingClient
from dwebsocket.exceptions import ConnectionClosed
from tests.groups.proxy import Proxy
from tests.servers import ServerProcess, running_server
from tests.wire import TIMEOUT

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    argv += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def server(
    certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    cert, key = certificate
    log = tmp_path_factory.mktemp("tls-log") / "gunicorn.log"
    # gunicorn reads extra command-line arguments from GUNICORN_CMD_ARGS.
    env = {"GUNICORN_CMD_ARGS": f"--certfile {cert} --keyfile {key}"}
    with running_server("gunicorn-gevent", log, env=env) as srv:
        yield srv


def wss(server: ServerProcess, certificate: tuple[Path, Path], path: str) -> ClientConnection:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    return connect(
        server.url(path, scheme="wss"),
        ssl=context,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        proxy=None,
    )


def test_echo_over_tls(server: ServerProcess, certificate: tuple[Path, Path]) -> None:
    with wss(server, certificate, "/echo/") as client:
        for i in range(20):
            client.send(f"hello {i}")
            assert client.recv(timeout=TIMEOUT) == f"hello {i}"
        big = bytes(range(256)) * 256  # 64 KiB: several TLS records each way
        client.send(big)
        assert client.recv(timeout=TIMEOUT) == big
        for i in range(50):  # a burst: many records in one read
            client.send(f"burst {i}")
        assert [client.recv(timeout=TIMEOUT) for _ in range(50)] == [
            f"burst {i}" for i in range(50)
        ]


def test_group_messages_over_tls(server: ServerProcess, certificate: tuple[Path, Path]) -> None:
    # The member view sends what it receives to its group, so each message comes back
    # through deliver() (the in-process layer: one connection, one worker).
    with wss(server, certificate, "/group/tls-room/") as client:
        assert client.recv(timeout=TIMEOUT) == "joined"
        for i in range(20):
            client.send(f"to the group {i}")
            assert client.recv(timeout=TIMEOUT) == f"to the group {i}"


def test_the_python_clients_close_from_another_thread_reaches_the_view(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    """A service reads a ``wss://`` connection in one thread and stops from another:
    ``close(1000, "bye")`` wakes the reader, which sends the close frame. Over TLS the
    frame never went: the reader's SSL read met the shut-down read side (the wake-up),
    which left the TLS session unable to write, and the view recorded 1006, where over
    ``ws://`` it records 1000 "bye" (``tests/test_client.py``)."""
    context = ssl.create_default_context(cafile=str(certificate[0]))
    client = ReconnectingClient(
        server.url("/record/?id=tls-threads", scheme="wss"), ssl_context=context, ping_interval=30
    )
    client.connect(TIMEOUT)
    client.send("hello")
    assert client.recv(TIMEOUT).data == "hello"
    ended: list[BaseException] = []

    def read() -> None:
        try:
            client.recv()
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.1)  # the read is waiting
    client.close(1000, "bye")
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the read did not end"
    assert isinstance(ended[0], ConnectionClosed) and client._sock is None
    record = server.url("/record/?id=tls-threads", scheme="https")
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(record, timeout=TIMEOUT, context=context) as response:
                assert json.load(response) == {"code": 1000, "reason": "bye", "closed": True}
                break
        except urllib.error.HTTPError:  # 404: not closed yet
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_certificate_the_client_cannot_verify_ends_it(
    server: ServerProcess, certificate: tuple[Path, Path], host: str
) -> None:
    """The server's certificate fails verification: not signed by a CA the client trusts
    (the system's, here, for a self-signed one), or not for the host in the URL
    (``localhost``, a certificate for 127.0.0.1 only). Every attempt would get the same
    answer, as a 4xx refusal does: one ``close``, final, with RFC 6455's code for it
    (1015) and OpenSSL's reason, and ``connect()`` raises ``ConnectionClosed``. Before,
    the client retried it for ever with the backoff, and ``connect()`` without a timeout
    never returned."""
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    context = trusted if host == "localhost" else ssl.create_default_context()
    events: list[Event] = []
    client = ReconnectingClient(
        f"wss://{host}:{server.port}/echo/",
        ssl_context=context,
        min_delay=0.01,
        max_delay=0.05,
        on_event=events.append,
    )
    with pytest.raises(ConnectionClosed) as raised:
        client.connect(TIMEOUT)
    assert raised.value.code == 1015 and "certificate verify failed" in raised.value.reason
    assert [(e.type, e.code, e.will_retry) for e in events] == [("close", 1015, False)]
    assert client.close_code == 1015 and client._sock is None


def test_a_tls_handshake_that_fails_otherwise_is_retried(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A TLS failure that is no verdict on the certificate (here a server that speaks no
    TLS at all: plain HTTP behind a ``wss://`` URL, as during a deployment whose proxy is
    not up yet) is retried with the backoff, as a broken link is."""
    plain = make_server("gevent")
    events: list[Event] = []
    client = ReconnectingClient(
        plain.url("/echo/", scheme="wss"), min_delay=0.01, max_delay=0.05, on_event=events.append
    )
    with pytest.raises(TimeoutError):
        client.connect(0.5)
    client.close()
    closes = [e for e in events if e.type == "close"]
    assert closes and all(e.will_retry and e.code == 1006 for e in closes), closes


def test_a_tls_handshake_slower_than_the_callers_timeout_still_connects(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    """``recv(0.3)`` in a loop while the server's TLS handshake takes longer than that to
    arrive (a slow downlink: 256 bytes every 0.1 s, the certificate among them): each
    call goes on with the TLS handshake the one before left, and the client connects.
    Each call started a new attempt, and the client never connected."""
    link = Proxy(server.port)
    link.throttle(256, 0.1, to_clients=True)
    events: list[Event] = []
    client = ReconnectingClient(
        link.url("/echo/", scheme="wss"),
        ssl_context=ssl.create_default_context(cafile=str(certificate[0])),
        on_event=events.append,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not client.connected:
            assert time.monotonic() < deadline, events
            with contextlib.suppress(TimeoutError):
                client.recv(0.3)
        assert [e.type for e in events] == ["open"], events
        client.send("through")
        assert client.recv(TIMEOUT).data == "through"
    finally:
        client.close()
        link.close()
