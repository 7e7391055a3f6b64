"""The floor of one greenlet per connection under gevent: no WebSocket library at all.

    python bench/stacks/gevent_raw_echo.py 127.0.0.1:PORT

Answers the upgrade, then sends back whatever it receives, frames untouched (the load
generator accepts masked frames). Any gevent-based server does at least this per
message: a recv, a send, two greenlet switches and a turn of the libev loop.
"""

from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import hashlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handle(sock, address):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return
        head += chunk
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    server = StreamServer((host, int(port)), handle)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    print(f"raw gevent echo on {host}:{port}", flush=True)
    server.serve_forever()
