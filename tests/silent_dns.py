"""A ``ReconnectingClient`` whose host name never resolves: the DNS server never answers.

Run by ``tests/test_client.py`` inside private namespaces (``unshare --user
--map-root-user --mount --net``), so nothing of the machine changes: it binds the given
``resolv.conf`` over ``/etc/resolv.conf`` (in its own mount namespace), brings its own
loopback up, listens on 127.0.0.1:53 (UDP and TCP) and never answers, then connects with a
timeout twice, then closes from another thread a client whose ``connect()`` waits for the
lookup. Prints one JSON line: what ``connect`` raised, the close events, the most lookup
threads alive at once, the queries the server got, the TCP sockets left, and whether the
close ended that wait (within 3 s; its attempts may take 30).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

HOST = "dws-never-answers.test"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """A new network namespace's ``lo`` is down: bring it up (``ip link set lo up``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def silent_server() -> list[bytes]:
    """Listen on 127.0.0.1:53 and never answer; the queries that came, as they come."""
    queries: list[bytes] = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    tcp = socket.create_server(("127.0.0.1", 53))  # accepted by the kernel, never read

    def listen() -> None:
        while True:
            data, _ = udp.recvfrom(4096)
            queries.append(data)

    threading.Thread(target=listen, daemon=True).start()
    silent_server.keep = (udp, tcp)  # type: ignore[attr-defined]
    return queries


def main(resolv_conf: str) -> None:
    subprocess.run(["mount", "--bind", resolv_conf, "/etc/resolv.conf"], check=True)
    loopback_up()
    queries = silent_server()

    from dwebsocket.client import Event, ReconnectingClient
    from dwebsocket.exceptions import ConnectionClosed

    closes: list[dict[str, Any]] = []
    most = 0

    def on_event(event: Event) -> None:
        nonlocal most
        lookups = [t for t in threading.enumerate() if t.name == "dwebsocket-resolve"]
        most = max(most, len(lookups))
        if event.type == "close":
            closes.append({"code": event.code, "reason": event.reason, "retry": event.will_retry})

    raised = []
    client = ReconnectingClient(
        f"ws://{HOST}:8000/x/", timeout=0.5, min_delay=0.05, max_delay=0.1, on_event=on_event
    )
    for _ in range(2):  # the second call finds the first one's lookup still under way
        try:
            client.connect(2.0)
            raised.append("nothing")
        except Exception as exc:
            raised.append(f"{type(exc).__name__}: {exc}")
    client.close()

    waiting = ReconnectingClient(f"ws://{HOST}:8000/x/", timeout=30)

    def connect() -> None:
        with contextlib.suppress(ConnectionClosed):  # what close() ends it with
            waiting.connect()

    reader = threading.Thread(target=connect, daemon=True)
    reader.start()
    time.sleep(0.2)  # the attempt waits for the lookup
    waiting.close()
    reader.join(3)
    close_ended = not reader.is_alive()
    with open("/proc/net/tcp") as tcp, open("/proc/net/tcp6") as tcp6:
        # This namespace's TCP sockets: the DNS server's listener, and what leaked.
        sockets = len(tcp.read().splitlines()[1:]) + len(tcp6.read().splitlines()[1:])
    print(
        json.dumps(
            {
                "raised": raised,
                "closes": closes,
                "most_lookups": most,
                "queries": len(queries),
                "tcp_sockets": sockets,
                "close_ended": close_ended,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
