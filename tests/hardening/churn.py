"""The churn client: connect / handshake / close cycles, half of them aborted abruptly.

    python -m tests.hardening.churn HOST PORT FIRST COUNT

runs cycles FIRST .. FIRST+COUNT-1 one after another and prints one JSON line of
counts. The test starts several of these processes at once (tests/hardening/test_churn.py).
Cycle ``i`` does, by ``i % 10``:

0-4  clean: handshake (permessage-deflate offered on odd cycles), one message whose echo
     is checked byte for byte, close 1000, the server's close reply, its EOF.
5    RST right after the 101 (``SO_LINGER`` 0 then ``close``).
6    RST in the middle of a frame: header and half the payload, then RST.
7    RST in the middle of the handshake: half the request head, then RST.
8    half-close in the middle of a frame: ``shutdown(SHUT_WR)``, then wait for the
     server's EOF.
9    silent (a half-open peer): handshake, then neither read nor write; the server's
     keepalive must close it (its close frame 1011 is checked once the client reads).

Every socket operation is bounded by ``TIMEOUT``; a failed check is counted, not raised,
so that one bad cycle does not hide the rest.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections import Counter

from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response

TIMEOUT = 30.0
_LINGER_RST = struct.pack("ii", 1, 0)
#: Silent connections parked before the client reads their outcome.
_PARK = 100
#: How long a silent connection may wait for the server's keepalive to close it.
SILENT_TIMEOUT = 60.0

KIND_NAMES = ["clean"] * 5 + ["rst", "rst_mid_frame", "rst_mid_handshake", "half_close", "silent"]


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.counts: Counter[str] = Counter()
        self.parked: list[socket.socket] = []
        self.key = generate_key()
        self.request = build_request(host, "/echo/", key=self.key)
        self.request_deflate = build_request(
            host, "/echo/", key=self.key, extensions=PerMessageDeflate.client_offer()
        )

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def handshake(self, sock: socket.socket, request: bytes) -> tuple[dict[str, str], bytes]:
        sock.sendall(request)
        data = b""
        while (parsed := parse_response(data, self.key)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("EOF during the handshake")
            data += chunk
        status, headers, consumed = parsed
        if status != 101:
            raise ValueError(f"status {status}")
        return dict(headers), data[consumed:]

    def cycle(self, i: int) -> None:
        kind = i % 10
        try:
            if kind < 5:
                self.clean(i)
            elif kind == 9:
                self.silent()
            else:
                self.abort(kind)
        except (OSError, EOFError, ValueError, AssertionError) as exc:
            self.counts[f"error:{KIND_NAMES[kind]}:{type(exc).__name__}"] += 1
        else:
            self.counts[KIND_NAMES[kind]] += 1

    def clean(self, i: int) -> None:
        with self.connect() as sock:
            deflate = i % 2 == 1
            headers, rest = self.handshake(sock, self.request_deflate if deflate else self.request)
            codec = None
            if "sec-websocket-extensions" in headers:
                codec = PerMessageDeflate.from_response(headers["sec-websocket-extensions"])
            assert (codec is not None) == deflate, headers
            conn = Connection(client=True, deflate=codec, max_message_size=None)
            message = f"churn {i} " + "x" * (i % 300)
            sock.sendall(conn.send_text(message))
            events = conn.receive_data(rest) if rest else []
            while not events:
                data = sock.recv(65536)
                if not data:
                    raise EOFError("EOF before the echo")
                events = conn.receive_data(data)
            assert events[0] == message, (events, message)
            sock.sendall(conn.send_close(1000))
            closes = [e for e in events if isinstance(e, Close)]
            while not closes:
                data = sock.recv(65536)
                closes = [e for e in conn.receive_data(data) if isinstance(e, Close)]
            assert closes[0].code == 1000, closes
            assert sock.recv(65536) == b"", "data after the close frame"

    def abort(self, kind: int) -> None:
        sock = self.connect()
        try:
            if kind == 7:  # RST in the middle of the handshake
                sock.sendall(self.request[: len(self.request) // 2])
                _rst(sock)
                return
            self.handshake(sock, self.request)
            if kind == 5:
                _rst(sock)
                return
            header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", 1000) + os.urandom(4)
            sock.sendall(header + b"\x00" * 500)
            if kind == 6:
                _rst(sock)
                return
            sock.shutdown(socket.SHUT_WR)  # kind 8: half-close mid-frame
            while sock.recv(65536):
                pass
        finally:
            sock.close()

    def silent(self) -> None:
        sock = self.connect()
        try:
            self.handshake(sock, self.request)
        except BaseException:
            sock.close()
            raise
        self.parked.append(sock)
        if len(self.parked) >= _PARK:
            self.drain()

    def drain(self) -> None:
        """Read what the server sent the silent connections: a ping, close 1011, EOF."""
        parked, self.parked = self.parked, []
        deadline = time.monotonic() + SILENT_TIMEOUT
        for sock in parked:
            with sock:
                conn = Connection(client=True, max_message_size=None)
                codes = []
                try:
                    while True:
                        sock.settimeout(max(0.1, deadline - time.monotonic()))
                        data = sock.recv(65536)
                        if not data:
                            break
                        if not conn.close_received:
                            events = conn.receive_data(data)
                            codes += [e.code for e in events if isinstance(e, Close)]
                except OSError as exc:
                    self.counts[f"silent:{type(exc).__name__}"] += 1
                    continue
                self.counts[f"silent_closed:{codes[0] if codes else None}"] += 1


def main() -> None:
    host, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = Client(host, port)
    started = time.monotonic()
    for i in range(first, first + count):
        client.cycle(i)
    client.drain()
    result: dict[str, float] = dict(client.counts)
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
