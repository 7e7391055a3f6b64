"""A raw WebSocket client over a plain socket, for tests that check bytes on the wire.

Built on the core (``dwebsocket.protocol``) on the client side; every socket operation
has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import Iterator

from dwebsocket.protocol.connection import Close, Connection, Event
from dwebsocket.protocol.frames import encode_frame
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response

TIMEOUT = 10.0
#: ``TIMEOUT`` in a test that a server's known defect makes fail (a strict xfail): most
#: defects show as a wait that runs out, and a server that learned passes without
#: waiting, so the strict xfail still catches it.
DEFECT_TIMEOUT = 3.0


@contextlib.contextmanager
def defect_waits(test: object) -> Iterator[None]:
    """``TIMEOUT`` is :data:`DEFECT_TIMEOUT` meanwhile, here and in the module that defines
    the function ``test`` (which imports it by name)."""
    modules = {sys.modules[__name__], sys.modules[getattr(test, "__module__", __name__)]}
    saved = [(module, module.__dict__.get("TIMEOUT")) for module in modules]
    for module, _ in saved:
        module.TIMEOUT = DEFECT_TIMEOUT  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, value in saved:
            if value is None:
                del module.TIMEOUT  # type: ignore[attr-defined]
            else:
                module.TIMEOUT = value  # type: ignore[attr-defined]


def upgrade_request(
    path: str = "/echo/",
    host: str = "127.0.0.1",
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    extensions: str | None = None,
    subprotocols: tuple[str, ...] = (),
) -> bytes:
    """A client's upgrade request; a header in ``headers`` replaces the one of that name
    the request would have (``{"Sec-WebSocket-Version": "8"}``: one version, 8)."""
    request = build_request(
        host,
        path,
        key=key or generate_key(),
        origin=origin,
        extensions=extensions,
        subprotocols=subprotocols,
    )
    if not headers:
        return request
    names = {name.lower() for name in headers}
    head = request.removesuffix(b"\r\n\r\n").split(b"\r\n")
    lines = [head[0]] + [
        line for line in head[1:] if line.partition(b":")[0].decode().lower() not in names
    ]
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame, masked as RFC 6455 5.3 requires."""
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask_key=os.urandom(4))


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response with a Content-Length body: ``(status, headers, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything until the peer's EOF; ``socket.timeout`` if it does not come."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def next_answer_alone(sock: socket.socket) -> None:
    """Ask for ``/echo/`` over plain HTTP on ``sock`` after a refused handshake, and check
    that what comes back is nothing (the server had closed: the request came after it) or
    the server's answer to it alone (it may be chunked): nothing of a WebSocket between."""
    try:
        sock.sendall(b"GET /echo/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = read_until_eof(sock)
    except ConnectionResetError:
        data = b""
    assert data == b"" or (
        data.startswith(b"HTTP/1.1 200 ")
        and data.count(b"HTTP/1.1 ") == 1
        and b"echo: plain HTTP\n" in data
    ), data


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Unmasked server frames in ``data``: ``([(first byte, payload), ...], trailing bytes)``.
    Parsing stops after a close frame: whatever follows it is returned as trailing."""
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        length, start = b1 & 0x7F, pos + 2
        if length == 126:
            length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
        elif length == 127:
            length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
        if start + length > len(data):
            break
        frames.append((b0, data[start : start + length]))
        pos = start + length
        if b0 & 0x0F == 0x8:
            break
    return frames, data[pos:]


class RawClient:
    """A connected socket speaking WebSocket through the core's client side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.conn = Connection(client=True, max_message_size=None)
        self.events: deque[Event] = deque()
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    def connect(cls, host: str, port: int, path: str = "/echo/", **kwargs: object) -> RawClient:
        client = cls(socket.create_connection((host, port), timeout=TIMEOUT))
        client.handshake(path, host, **kwargs)
        return client

    def handshake(
        self, path: str, host: str = "127.0.0.1", *, first: bytes = b"", **kwargs: object
    ) -> None:
        """Send the upgrade request (plus ``first``, in the same ``sendall``); read the 101."""
        key = generate_key()
        self.sock.sendall(upgrade_request(path, host, key=key, **kwargs) + first)  # type: ignore[arg-type]
        data = b""
        while True:
            parsed = parse_response(data, key)
            if parsed is not None:
                break
            chunk = self.sock.recv(65536)
            assert chunk, f"EOF during the handshake after {data!r}"
            data += chunk
        self.status, headers, consumed = parsed
        self.headers = dict(headers)
        assert self.status == 101, data
        if data[consumed:]:
            self.receive(data[consumed:])

    def send(self, message: str | bytes) -> None:
        self.sock.sendall(self.conn.send_message(message))

    def receive(self, data: bytes) -> None:
        """Feed received bytes to the core; send what it answers (pongs, close reply)."""
        self.events.extend(self.conn.receive_data(data))
        out = self.conn.data_to_send()
        if out:
            # The peer may have shut down right after its close frame.
            with contextlib.suppress(OSError):
                self.sock.sendall(out)

    def next_event(self) -> Event:
        while not self.events:
            data = self.sock.recv(65536)
            if not data and self.conn.eof:
                raise EOFError("the server closed the connection")
            self.receive(data)
        return self.events.popleft()

    def recv(self) -> str | bytes | Close:
        """The next message, or the Close event; pings and pongs are skipped."""
        while True:
            event = self.next_event()
            if isinstance(event, (str, bytes, Close)):
                return event

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
