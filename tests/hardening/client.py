"""A hostile client: raw sockets, hand-made frames, and what the server answered.

Every socket operation is bounded by a timeout; nothing here retries.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from dwebsocket.protocol.connection import Close, Connection, Ping, Pong
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response
from tests.servers import ServerProcess

#: Bound of every single socket operation, generous for a loaded machine.
TIMEOUT = 30.0


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """Any client frame, valid or not (RFC 6455 5.2); ``length`` lies about the payload."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=TIMEOUT)


def handshake(
    sock: socket.socket, path: str = "/echo/", *, extensions: str | None = None
) -> tuple[dict[str, str], bytes]:
    """Send an upgrade request, read the 101: ``(headers, bytes that followed it)``."""
    key = generate_key()
    sock.sendall(build_request("127.0.0.1", path, key=key, extensions=extensions))
    data = b""
    while (parsed := parse_response(data, key)) is None:
        chunk = sock.recv(65536)
        assert chunk, f"EOF during the handshake after {data!r}"
        data += chunk
    status, headers, consumed = parsed
    assert status == 101, data
    return dict(headers), data[consumed:]


def open_websocket(
    server: ServerProcess, path: str = "/echo/", *, extensions: str | None = None
) -> tuple[socket.socket, bytes]:
    """A connected socket after a 101, and the bytes that followed the 101."""
    sock = connect(server)
    try:
        _, rest = handshake(sock, path, extensions=extensions)
    except BaseException:
        sock.close()
        raise
    return sock, rest


def close_frame(code: int = 1000) -> bytes:
    return frame(0x8, struct.pack("!H", code))


def echo(sock: socket.socket, rest: bytes, payload: bytes) -> Outcome:
    """Send ``payload`` (frames ending a message), wait for the echo, then close 1000;
    returns everything the server sent until its EOF."""
    result, echoed = Outcome(), threading.Event()
    reader = threading.Thread(
        target=outcome, args=(sock, rest), kwargs={"result": result, "on_message": echoed}
    )
    reader.start()
    try:
        sock.sendall(payload)
        if echoed.wait(TIMEOUT):
            sock.sendall(close_frame(1000))
    finally:
        reader.join(TIMEOUT * 2)
    assert not reader.is_alive(), "the server did not end the connection"
    return result


@dataclass
class Outcome:
    """What the server did after the attack, read until its EOF."""

    close: Close | None = None  # its close frame (None: the TCP connection just ended)
    messages: list[str | bytes] = field(default_factory=list)
    pongs: int = 0
    pings: int = 0
    eof: bool = False
    seconds: float = 0.0

    @property
    def code(self) -> int | None:
        return None if self.close is None else self.close.code


def outcome(
    sock: socket.socket,
    rest: bytes = b"",
    timeout: float = TIMEOUT,
    *,
    result: Outcome | None = None,
    on_message: threading.Event | None = None,
) -> Outcome:
    """Read frames until the server's EOF (or ``timeout``, then ``TimeoutError``).

    The server's frames go through the core's client side, which checks them too.
    ``result`` is filled as frames arrive (for a reader in another thread), and
    ``on_message`` set at each message."""
    started = time.monotonic()
    deadline = started + timeout
    conn = Connection(client=True, max_message_size=None)
    if result is None:
        result = Outcome()

    def take(data: bytes) -> None:
        for event in conn.receive_data(data):
            if isinstance(event, Close):
                if not data:
                    result.eof = True
                elif result.close is None:
                    result.close = event
            elif isinstance(event, Pong):
                result.pongs += 1
            elif isinstance(event, Ping):
                result.pings += 1
            else:
                result.messages.append(event)
                if on_message is not None:
                    on_message.set()

    if rest:
        take(rest)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no EOF from the server within {timeout}s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            result.eof = True
            if not conn.close_received:
                conn.receive_data(b"")
            break
        if not conn.close_received:
            take(data)
    result.seconds = time.monotonic() - started
    return result
