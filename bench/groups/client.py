"""One client process of the groups benchmark: many WebSocket members, one epoll loop.

    python bench/groups/client.py SOURCE_IP COUNT PATH PORT [PORT ...]

Opens COUNT connections from SOURCE_IP (a 127.0.0.x address, so that many processes do
not share one address's ephemeral ports), spread round-robin over the server PORTs on
127.0.0.1, waits for every server's first message ("joined": the member is in the group),
then prints ``{"ready": COUNT}``. From then on, for every text message ``"<round>"`` the
servers send, it notes CLOCK_MONOTONIC (system-wide, so comparable with the sender's
clock) when each connection got it, and once all COUNT have it prints
``{"round": R, "last": t, "first": t}``. Ends on EOF of stdin, closing everything.

Raw sockets and a minimal frame reader keep the client's own cost per message a few
microseconds: the time measured is the servers' and the layer's.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 240.0
BATCH = 50  # connections opened at once
RETRIES = 500  # connections a client may open again during set-up


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def emit(data: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


class Member:
    __slots__ = ("buffer", "handshaken", "port", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.handshaken = False
        self.port = 0


def request(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frames(member: Member) -> list[tuple[int, bytes]]:
    """Complete (opcode, payload) frames in the member's buffer (server frames: unmasked)."""
    out = []
    data = member.buffer
    while len(data) >= 2:
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                break
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            if len(data) < 10:
                break
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            break
        out.append((data[0] & 0x0F, data[offset : offset + length]))
        data = data[offset + length :]
    member.buffer = data
    return out


def open_member(source: str, port: int, path: str) -> Member:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    sock.sendall(request(path, port))
    sock.setblocking(False)
    member = Member(sock)
    member.port = port
    return member


def main() -> None:
    source, count, path, ports = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    raise_fd_limit()
    selector = selectors.DefaultSelector()
    members: list[Member] = []
    # Connect in batches, so as not to overflow the servers' accept backlogs; a connection
    # a server drops or refuses while busy (Channels times out on Redis under a burst of
    # group_add) is opened again, up to RETRIES times in all.
    retries = RETRIES
    deadline = time.monotonic() + CONNECT_TIMEOUT
    waiting: set[Member] = set()  # opened, not joined yet

    def open_one(port: int) -> None:
        member = open_member(source, port, path)
        waiting.add(member)
        selector.register(member.sock, selectors.EVENT_READ, member)

    for first in range(0, count, BATCH):
        for i in range(first, min(count, first + BATCH)):
            open_one(int(ports[i % len(ports)]))
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(waiting)} connections not joined in {CONNECT_TIMEOUT}s")
            for key, _ in selector.select(1.0):
                m = key.data
                try:
                    data = m.sock.recv(65536)
                except ConnectionError:
                    data = b""
                failed = not data
                if data:
                    m.buffer += data
                    if not m.handshaken:
                        head, sep, rest = m.buffer.partition(b"\r\n\r\n")
                        if not sep:
                            continue
                        failed = not head.startswith(b"HTTP/1.1 101")
                        m.handshaken, m.buffer = True, rest
                if failed:  # refused, or dropped (even after joining): open it again
                    retries -= 1
                    if retries < 0:
                        raise SystemExit(f"more than {RETRIES} connections failed ({path})")
                    waiting.discard(m)
                    if m in members:
                        members.remove(m)
                    selector.unregister(m.sock)
                    m.sock.close()
                    open_one(m.port)
                    continue
                for opcode, payload in frames(m):
                    if opcode == 1 and payload == b"joined" and m in waiting:
                        waiting.discard(m)
                        members.append(m)
    joined = len(members)
    emit({"ready": joined})

    stdin = sys.stdin.buffer
    selector.register(stdin, selectors.EVENT_READ, None)
    clock = time.monotonic
    got: dict[int, list[float]] = {}
    alive = len(members)
    while True:
        for key, _ in selector.select():
            m = key.data
            if m is None:  # stdin: EOF (or anything) ends the run
                if not os.read(stdin.fileno(), 4096):
                    for member in members:
                        member.sock.close()
                    return
                continue
            try:
                data = m.sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:  # the server dropped a member: say so, count the living ones
                selector.unregister(m.sock)
                alive -= 1
                emit({"dropped": 1})
                for n in [n for n, times in got.items() if len(times) >= alive]:
                    times = got.pop(n)  # complete without it
                    emit({"round": n, "first": min(times), "last": max(times), "alive": alive})
                continue
            now = clock()
            m.buffer += data
            for opcode, payload in frames(m):
                if opcode != 1:
                    continue
                n = int(payload)
                times = got.setdefault(n, [])
                times.append(now)
                if len(times) >= alive:
                    emit({"round": n, "first": min(times), "last": max(times), "alive": alive})
                    del got[n]


if __name__ == "__main__":
    main()
