"""The HTTP layer in front of the handshake, as gevent.pywsgi really does it (measured,
not assumed; docs/security.rst cites these numbers): its limits on the request head, and
what it does with a client that sends its head slowly (slowloris).

gevent.pywsgi 26.9, measured here:
- request line of 8192 bytes or more: 414;
- a header line over 65536 bytes (http.client's limit): 400;
- more than 100 header lines: 400;
- so the largest head it reads is about 100 x 64 KiB = 6.4 MiB, and it is accepted;
  parsing one such head costs the process a ~40 MiB peak (plain HTTP requests too);
- no timeout at all while it reads a head: a slow client holds its greenlet and socket
  for as long as it keeps the connection open. Bound it at the proxy.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from dwebsocket.protocol.handshake import build_request, generate_key
from tests.hardening.client import TIMEOUT, connect, echo, frame, open_websocket
from tests.hardening.support import memory_bounded, settled, stats
from tests.servers import ServerProcess
from tests.wire import read_http_response

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]


def head(extra: bytes = b"", path: str = "/echo/") -> bytes:
    """An upgrade request head with ``extra`` header lines before the blank line."""
    return build_request("127.0.0.1", path, key=generate_key())[:-2] + extra + b"\r\n"


def status_of(server: ServerProcess, request: bytes) -> int:
    with connect(server) as sock:
        sock.sendall(request)
        status, _, _ = read_http_response(sock)
    return status


#: What reading one ~6 MiB head may cost the server (gevent.pywsgi's own limits).
HEAD_BUDGET = 80 << 20


@pytest.fixture
def server(hostile_server: ServerProcess) -> Iterator[ServerProcess]:
    with memory_bounded(hostile_server):
        yield hostile_server


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n\r\n", 414),
        (head(b"X-Big: " + b"a" * 65537 + b"\r\n"), 400),
        (head(b"".join(b"X-%d: a\r\n" % i for i in range(101))), 400),
    ],
    ids=["request-line-8k", "header-line-64k", "101-header-lines"],
)
def test_heads_over_the_servers_limits_are_refused(
    server: ServerProcess, request_head: bytes, status: int
) -> None:
    assert status_of(server, request_head) == status


def test_the_largest_head_within_the_limits_is_read(hostile_server: ServerProcess) -> None:
    """~5.4 MB of headers (90 lines of 60 kB) still reach Django: gevent.pywsgi bounds a
    head only at ~6.4 MiB, and holds several copies of it while it parses (measured: a
    ~35-40 MiB peak, the same for a plain HTTP request to the view: this is the WSGI
    server's and Django's cost, not the handshake's). Bounded, but only the proxy can
    make the bound small (docs/security.rst)."""
    big = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 60_000) for i in range(90))
    with memory_bounded(hostile_server, budget=HEAD_BUDGET):
        assert status_of(hostile_server, head(big)) == 101


def test_huge_but_valid_handshake_headers(server: ServerProcess) -> None:
    """60 kB of extension offers and subprotocols: parsed in linear time, first
    acceptable offer wins."""
    offers = ", ".join(f'x-ext-{i}; a=1; b="q"' for i in range(2500))
    protocols = ", ".join(f"proto-{i}" for i in range(4000))
    extra = (
        f"Sec-WebSocket-Extensions: {offers}, permessage-deflate\r\n"
        f"Sec-WebSocket-Protocol: {protocols}\r\n"
    ).encode()
    with connect(server) as sock:
        sock.sendall(head(extra))
        status, headers, _ = read_http_response(sock)
    assert status == 101 and headers["sec-websocket-extensions"].startswith("permessage-deflate")


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("Sec-WebSocket-Protocol", "a@" * 30_000, 400),
        ("Origin", "https://" + "e" * 60_000 + ".example", 403),
    ],
    ids=["400-bad-subprotocols", "403-foreign-origin"],
)
def test_a_refusal_quotes_a_long_header_only_in_part(
    server: ServerProcess, name: str, value: str, status: int
) -> None:
    """The 400 or 403 body names the value at fault by its first 100 characters and its
    length: a 60 kB header is not echoed back, nor written to the log."""
    with connect(server) as sock:
        sock.sendall(head(f"{name}: {value}\r\n".encode()))
        got, _, body = read_http_response(sock)
    assert got == status
    assert repr(value[:100]).encode() in body
    assert f"... ({len(value)} characters)".encode() in body
    assert len(body) < 300
    assert value[:101] not in server.log()


#: A log line of the attacker's choosing, in a path: ``%0A`` decodes to a newline.
FORGED = "[WARNING dwebsocket] forged"


def _logged(server: ServerProcess, mark: int, count: int, text: str) -> str:
    """The log since ``mark`` once ``text`` is in it ``count`` times (bounded wait)."""
    deadline = time.monotonic() + TIMEOUT
    while server.log(mark).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log(mark)


def test_a_path_cannot_write_lines_of_its_own_in_the_log(server: ServerProcess) -> None:
    """A request's path decodes to any character, a newline included. Django escapes it in
    its own request log (CVE-2025-48432); dwebsocket's lines wrote it raw, so a client
    could add the log lines it wanted: here through a refused handshake, a plain request
    to a WebSocket-only view, and a protocol error, each logged with the path."""
    path = "/group/x%0A" + FORGED.replace(" ", "%20") + "/"
    mark = server.mark()
    request = head(path=path)
    no_key = b"".join(line + b"\r\n" for line in request.split(b"\r\n")[:-2] if b"Key" not in line)
    assert status_of(server, no_key + b"\r\n") == 400
    plain = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert status_of(server, plain.encode()) == 400
    sock, _ = open_websocket(server, path)
    with sock:
        sock.sendall(frame(0x3, b"reserved opcode"))
        sock.settimeout(TIMEOUT)
        while sock.recv(65536):
            pass
    log = _logged(server, mark, 3, "\\n" + FORGED)
    assert [line for line in log.splitlines() if line.startswith(FORGED)] == []
    assert log.count("\\n" + FORGED) >= 3, log


SLOW_CLIENTS = 200
SLOW_SECONDS = 6.0


def test_slowloris_is_not_bounded_by_gevent(server: ServerProcess) -> None:
    """200 clients send their request head one byte every ~0.3 s. gevent.pywsgi keeps
    every one (no read timeout), each costing a socket and a greenlet; a normal client
    is still served meanwhile, memory stays within the budget, and once a slow client
    finishes its head it gets its 101 (nothing gave up on it)."""
    before = stats(server)
    requests = [head() for _ in range(SLOW_CLIENTS)]
    sent = [0] * SLOW_CLIENTS
    slow = [connect(server) for _ in range(SLOW_CLIENTS)]
    try:
        deadline = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < deadline:
            for i, sock in enumerate(slow):
                if sent[i] < len(requests[i]) - 1:  # never the last byte
                    sock.sendall(requests[i][sent[i] : sent[i] + 1])
                    sent[i] += 1
            time.sleep(0.3)
        during = stats(server)
        # Every slow connection is still open: the server closed none of them.
        readable, _, _ = select.select(slow, [], [], 0)
        assert readable == []
        assert during["fds"] >= before["fds"] + SLOW_CLIENTS

        sock, rest = open_websocket(server)
        with sock:
            assert echo(sock, rest, frame(0x1, b"served")).messages == ["served"]

        for i, sock in enumerate(slow):
            sock.sendall(requests[i][sent[i] :])
        for sock in slow:
            sock.settimeout(TIMEOUT)
            assert read_http_response(sock)[0] == 101
    finally:
        for sock in slow:
            sock.close()
    after = settled(server, lambda s: s["fds"] <= before["fds"] and s["websockets"] == 0)
    assert after["fds"] <= before["fds"]


def test_a_head_that_never_ends_is_held_until_the_client_leaves(server: ServerProcess) -> None:
    """No timeout, hence no status: after 3 s of silence mid-head the connection is still
    open, and gevent.pywsgi forgets it only when the client goes."""
    with connect(server) as sock:
        sock.sendall(head()[:40])
        sock.settimeout(3.0)
        with pytest.raises(socket.timeout):
            sock.recv(1)
