"""Groups across real server processes, real clients and a real (private) Redis.

Every server runs the test project with ``WEBSOCKET_GROUPS_URL`` pointing at a
redis-server this module starts on its own port, so the tests can stop and restart it.
Clients are ``websockets``' sync client; ``/group/<name>/`` joins, answers ``joined`` and
forwards what the client sends to the group (``tests/groups/views.py``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from dwebsocket.groups import redis as redis_layer
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from dwebsocket.protocol.frames import Opcode, parse_close_payload
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response
from tests.groups.redis_server import RedisServer
from tests.servers import REPO, ServerProcess, shared_servers

pytestmark = pytest.mark.server

WAIT = 20.0  # no single wait below is longer
Messages = list[str | bytes]


class Clients(contextlib.ExitStack):
    """Opens members; closes every one of them on exit, whatever happens."""

    def open(self, server: ServerProcess, group: str, query: str = "") -> ClientConnection:
        """A member of ``group`` on ``server``, once the server confirmed the join."""
        ws = self.enter_context(
            connect(
                server.url(f"/group/{group}/{query}"),
                open_timeout=WAIT,
                close_timeout=WAIT,
                max_queue=None,
                compression=None,
            )
        )
        assert ws.recv(timeout=WAIT) == "joined"
        return ws


def receive(
    ws: ClientConnection,
    count: int,
    skip: Callable[[Any], bool] = lambda m: False,
    wait: float = WAIT,
) -> Messages:
    got: Messages = []
    while len(got) < count:
        message = ws.recv(timeout=wait)
        if not skip(message):
            got.append(message)
    return got


def assert_nothing_more(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=wait)


def sent_by(messages: Messages, sender: str) -> list[str]:
    return [m for m in messages if isinstance(m, str) and m.startswith(sender + ":")]


def manage(*args: str, groups_url: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``python tests/manage.py ARGS`` with the test settings and this groups URL."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DWEBSOCKET_TEST_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": groups_url}),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "manage.py"), *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.fixture
def redis_servers(
    redis_server: RedisServer, make_server: Callable[..., ServerProcess]
) -> Callable[[int, str], list[ServerProcess]]:
    def make(count: int, name: str = "gevent", **settings: Any) -> list[ServerProcess]:
        settings = {"WEBSOCKET_GROUPS_URL": redis_server.url, **settings}
        return [make_server(name, settings=settings) for _ in range(count)]

    return make


@pytest.fixture
def clients() -> Iterator[Clients]:
    with Clients() as opened:
        yield opened


def test_three_processes_and_a_command_exactly_once_in_order(
    redis_server: RedisServer,
    redis_servers: Callable[..., list[ServerProcess]],
    clients: Clients,
    tmp_path: Path,
) -> None:
    """3 gevent servers with 4 members each; one member per server and a management
    command send 50 messages each, all at once: every member gets every message exactly
    once, and each sender's messages in the order it sent them."""
    servers = redis_servers(3)
    members = [clients.open(srv, "room") for srv in servers for _ in range(4)]
    senders = {f"client{n}": members[4 * n] for n in range(3)}
    binary = tmp_path / "payload.bin"
    binary.write_bytes(bytes(range(256)))

    command = subprocess.Popen(  # the command's 50 lines go out while the clients send
        [sys.executable, str(REPO / "tests" / "manage.py"), "websocket_send", "room", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DWEBSOCKET_TEST_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": redis_server.url}),
        },
    )
    try:
        lines = "".join(f"command:{i}\n" for i in range(50)).encode()
        for i in range(50):
            for name, ws in senders.items():
                ws.send(f"{name}:{i}")
        out, err = command.communicate(lines, timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(10)
    assert command.returncode == 0, err.decode()
    assert b"Sent 50 message(s)" in out
    result = manage(
        "websocket_send", "room", "--binary-file", str(binary), groups_url=redis_server.url
    )
    assert result.returncode == 0, result.stderr.decode()

    for ws in members:
        got = receive(ws, 4 * 50 + 1)
        for sender in [*senders, "command"]:
            assert sent_by(got, sender) == [f"{sender}:{i}" for i in range(50)], sender
        assert got[-1] == bytes(range(256))  # sent after all the others were delivered
        assert_nothing_more(ws)


def test_command_errors(redis_server: RedisServer) -> None:
    memory = manage("websocket_send", "room", "hi", groups_url="memory://")
    assert memory.returncode == 1
    assert b"memory://" in memory.stderr
    neither = manage("websocket_send", "room", groups_url=redis_server.url)
    assert neither.returncode == 1
    assert b"either MESSAGE or --binary-file" in neither.stderr
    missing = manage(
        "websocket_send", "room", "--binary-file", "/nonexistent", groups_url=redis_server.url
    )
    assert missing.returncode == 1
    assert b"cannot read /nonexistent" in missing.stderr
    redis_server.stop()
    down = manage("websocket_send", "room", "hi", groups_url=redis_server.url)
    assert down.returncode == 1
    assert b"not published" in down.stderr


def test_redis_restart_under_a_running_group(
    redis_server: RedisServer,
    redis_servers: Callable[..., list[ServerProcess]],
    clients: Clients,
) -> None:
    """Stop Redis under two running servers and start it again on the same port: during
    the outage each server's members still get what is sent from that server, the other
    server's members lose it (documented: pub/sub keeps no history), and afterwards
    delivery resumes by itself, exactly once and in order."""
    one, two = redis_servers(2)
    a1, a2 = clients.open(one, "room"), clients.open(one, "room")
    b1, b2 = clients.open(two, "room"), clients.open(two, "room")
    members = [a1, a2, b1, b2]
    a1.send("a:before")
    for ws in members:
        assert receive(ws, 1) == ["a:before"]
    marks = [srv.mark() for srv in (one, two)]

    redis_server.stop()
    for i in range(10):
        a1.send(f"a:during {i}")
        b1.send(f"b:during {i}")
    for ws in (a1, a2):
        assert receive(ws, 10) == [f"a:during {i}" for i in range(10)]
    for ws in (b1, b2):
        assert receive(ws, 10) == [f"b:during {i}" for i in range(10)]

    redis_server.start()  # same port; the servers are not restarted
    # Probe from each side until every member has seen a probe from the other side: both
    # processes are subscribed again. Probes are then ignored.
    deadline = time.monotonic() + 30
    pending = {id(ws) for ws in members}
    n = 0
    while pending:
        assert time.monotonic() < deadline, "delivery did not resume within 30 s"
        a1.send(f"probe:a{n}")
        b1.send(f"probe:b{n}")
        n += 1
        for ws in members:
            with contextlib.suppress(TimeoutError):
                while True:
                    message = ws.recv(timeout=0.1)
                    local = "probe:a" if ws in (a1, a2) else "probe:b"
                    if (
                        isinstance(message, str)
                        and message.startswith("probe:")
                        and not message.startswith(local)
                    ):
                        pending.discard(id(ws))
    for i in range(20):
        a1.send(f"a:after {i}")
        b1.send(f"b:after {i}")
    for ws in members:
        got = receive(ws, 40, skip=lambda m: str(m).startswith("probe:"))
        assert sent_by(got, "a") == [f"a:after {i}" for i in range(20)]
        assert sent_by(got, "b") == [f"b:after {i}" for i in range(20)]
        with contextlib.suppress(TimeoutError):
            while True:
                assert str(ws.recv(timeout=0.3)).startswith("probe:")
    for srv, mark in zip((one, two), marks, strict=True):
        log = srv.log(mark)
        assert log.count("is unreachable") == 1, log  # one WARNING per outage, per process
        assert "reachable again" in log


def raw_member(server: ServerProcess, path: str) -> socket.socket:
    """A member that completes the handshake, reads ``joined``, then stops reading.
    Its receive buffer is small, so the server's outgoing buffer fills soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect((server.host, server.port))
    key = generate_key()
    sock.sendall(build_request(f"{server.host}:{server.port}", path, key=key))
    data = b""
    while (parsed := parse_response(data, key)) is None:
        chunk = sock.recv(4096)
        assert chunk, "server closed during the handshake"
        data += chunk
    status, _headers, consumed = parsed
    assert status == 101
    data = data[consumed:]
    while len(data) < 8:  # "joined": a 2-byte header + 6 bytes
        data += sock.recv(4096)
    assert data == b"\x81\x06joined"
    return sock


def read_frames_until_eof(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) the server sent until it closed the TCP connection."""
    data = b""
    sock.settimeout(WAIT)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    frames = []
    while len(data) >= 2:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def status(server: ServerProcess, group: str) -> dict[str, int]:
    """What ``/group/<group>/status/`` says: the server's pid and local member count."""
    url = server.url(f"/group/{group}/status/", scheme="http")
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        answer: dict[str, int] = json.load(response)
        return answer


#: The outgoing buffer of each member in the slow-member test.
SEND_QUEUE = 65536


def claims_bytes() -> int:
    """The memory of the Redis layer's claim record when full: ``CLAIMS`` sequence numbers
    (64-bit, as Redis's INCR gives them) in an OrderedDict, measured here."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        claims = collections.OrderedDict((2**40 + n, None) for n in range(redis_layer.CLAIMS))
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(claims) == redis_layer.CLAIMS
    return size


def vm_rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("layer", ["memory", "redis", "memory-pure-python"])
def test_slow_member_is_closed_1008_and_others_keep_up(
    layer: str,
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    clients: Clients,
) -> None:
    """One member stops reading; the group goes on: the others get every message, the slow
    one is closed with 1008 once its outgoing buffer (64 KiB here) overflows, and the
    server's memory stays bounded although 64 MiB went to the group: it may grow by what
    the configuration lets it hold, not by what went through (see ``allowed``). Also
    without the C extensions (``memory-pure-python``), as an install without a compiler
    runs: there the masking of the sender's 16 KiB frames once kept a 4 KiB integer for
    every key it saw, up to 4,096 of them (17 MiB)."""
    url = redis_server.url if layer == "redis" else "memory://"
    srv = make_server(
        "gevent",
        env={"DWEBSOCKET_NO_SPEEDUPS": "1"} if layer.endswith("pure-python") else None,
        settings={
            "WEBSOCKET_GROUPS_URL": url,
            "WEBSOCKET_SEND_QUEUE_SIZE": SEND_QUEUE,
            "WEBSOCKET_PING_INTERVAL": None,  # only the 1008 close can end the view's wait()
            "WEBSOCKET_CLOSE_TIMEOUT": 1.0,
        },
    )
    monitor = clients.open(srv, "monitor")
    readers = [clients.open(srv, "room") for _ in range(3)]
    slow = raw_member(srv, "/group/room/?id=slow")
    try:
        chunk = b"x" * 16384
        sender = readers[0]
        sender.send(chunk)  # warm up, then measure
        for ws in readers:
            assert receive(ws, 1) == [chunk]
        rss_before = vm_rss(srv.process.pid)
        latencies = []
        for i in range(4096):  # 64 MiB in all
            started = time.monotonic()
            sender.send(i.to_bytes(4, "big") + chunk[4:])
            for ws in readers:
                got = receive(ws, 1)[0]
                assert isinstance(got, bytes) and got[:4] == i.to_bytes(4, "big")
            latencies.append(time.monotonic() - started)
        rss_after = vm_rss(srv.process.pid)
        # Closed at once, so the next delivery dropped it from the group...
        assert status(srv, "room")["members"] == 3
        # ...and its view, blocked in wait(), was released (within the close timeout, the
        # peer not answering) and saw close code 1008.
        report = json.loads(receive(monitor, 1)[0])
        assert report["id"] == "slow" and report["code"] == 1008
        # What the server may hold at the end whatever went through: each connection
        # (the monitor, the readers, the slow one) a full send queue and one message being
        # read; the Redis layer its last CLAIMS message claims; and what the allocators
        # may keep of freed memory: one pymalloc arena (1 MiB on Python 3.11) and glibc's
        # trim threshold (128 KiB). About 2 MiB with Redis, for 64 MiB sent (measured:
        # 0 to 0.7 MiB; the fixed 32 MiB bound let half of what went through leak).
        connections = 1 + len(readers) + 1
        allowed = connections * (SEND_QUEUE + len(chunk)) + 2**20 + 128 * 1024
        if layer == "redis":
            allowed += claims_bytes()
        assert rss_after - rss_before < allowed, (rss_before, rss_after, allowed)
        # Latency is printed, not asserted (no timing assertions): first vs last 100.
        print(
            f"\n[{layer}] round trip to 3 readers: first 100 avg "
            f"{1000 * sum(latencies[:100]) / 100:.2f} ms, last 100 avg "
            f"{1000 * sum(latencies[-100:]) / 100:.2f} ms; RSS "
            f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
        )
        frames = read_frames_until_eof(slow)
        closes = [payload for opcode, payload in frames if opcode == Opcode.CLOSE]
        # The close frame comes after what was already in flight, if the server could still
        # write it before giving up on the peer; either way never a different code.
        assert all(parse_close_payload(p)[0] == 1008 for p in closes), closes
    finally:
        slow.close()


@pytest.mark.shared
@pytest.mark.parametrize("name", shared_servers())
def test_every_server_with_redis(
    name: str,
    redis_server: RedisServer,
    redis_servers: Callable[..., list[ServerProcess]],
    clients: Clients,
) -> None:
    """Members on each supported server (threads, gevent, eventlet, uWSGI; gunicorn's two
    workers are two processes) and on a gevent server exchange messages through Redis,
    with a task worker (this test's process) sending text and binary."""
    (srv,) = redis_servers(1, name)
    (other,) = redis_servers(1, "gevent")
    members = [clients.open(srv, "room") for _ in range(3)] + [clients.open(other, "room")]
    worker = RedisLayer(redis_server.url, Registry())
    try:
        for i in range(10):
            for n, ws in enumerate(members):
                ws.send(f"m{n}:{i}")
            worker.send("room", f"w:{i}" if i % 2 else f"w:{i}".encode())
    finally:
        worker.close()
    for ws in members:
        got = receive(ws, 50)
        for n in range(4):
            assert sent_by(got, f"m{n}") == [f"m{n}:{i}" for i in range(10)]
        from_worker = [m for m in got if str(m).startswith(("w:", "b'w:"))]
        assert from_worker == [f"w:{i}" if i % 2 else f"w:{i}".encode() for i in range(10)]
        assert_nothing_more(ws)


@pytest.mark.parametrize("name", ["eventlet", "gevent", "runserver"])
def test_a_view_that_joined_then_refused_leaves_no_member(
    name: str, make_server: Callable[..., ServerProcess]
) -> None:
    """The view joins a group, present, before the 101 (docs/channels.rst's chat does),
    then answers 403: the connection never opened, so no websocket_closed, the signal on
    which members leave their groups. It stayed a member, and present, until the group's
    next message found it closed: a quiet room listed a user who never got in."""
    srv = make_server(name)
    request = build_request(
        f"127.0.0.1:{srv.port}", "/group/quiet/joined-then-refused/", key=generate_key()
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    deadline = time.monotonic() + WAIT
    while (now := status(srv, "quiet"))["members"] or now["present"]:
        assert time.monotonic() < deadline, now
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["eventlet", "gevent", "runserver"])
def test_single_process_servers_in_memory(
    name: str, make_server: Callable[..., ServerProcess], clients: Clients
) -> None:
    """The default layer needs no set-up: members of one process reach each other."""
    srv = make_server(name)
    members = [clients.open(srv, "room") for _ in range(3)]
    for i in range(10):
        for n, ws in enumerate(members):
            ws.send(f"m{n}:{i}")
    for ws in members:
        got = receive(ws, 30)
        for n in range(3):
            assert sent_by(got, f"m{n}") == [f"m{n}:{i}" for i in range(10)]
        assert_nothing_more(ws)
    assert status(srv, "room")["members"] == 3
    members[0].close()
    deadline = time.monotonic() + WAIT
    while status(srv, "room")["members"] != 2:  # left on close (websocket_closed)
        assert time.monotonic() < deadline
        time.sleep(0.05)
