"""``/metrics`` scraped from a real ``gunicorn -k gevent -w 2`` with
``PROMETHEUS_MULTIPROC_DIR`` set, while ``websockets`` clients connect, send and close:
every counter is what the clients did, added up over both workers, whichever served
whom. The clients count their own bytes on the wire (a socket that counts), so the byte
counters are checked exactly, as are ``manage.py websocket_status``'s numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.servers import REPO, ServerProcess
from tests.wire import TIMEOUT, read_http_response, upgrade_request

pytestmark = pytest.mark.server


class CountingSocket(socket.socket):
    """A client socket that counts what it sends and receives after the HTTP head."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.sent = bytearray()
        self.received = bytearray()

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
        self.sent += data

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = super().recv(size, flags)
        self.received += data
        return data

    @staticmethod
    def after_head(data: bytearray) -> int:
        return len(data) - (data.index(b"\r\n\r\n") + 4)


class Client:
    """A ``websockets`` client on a :class:`CountingSocket`, without compression (so
    that frames have the size the test expects, not that it matters to the counts)."""

    def __init__(self, stack: contextlib.ExitStack, server: ServerProcess, path: str) -> None:
        self.sock = CountingSocket()
        stack.enter_context(self.sock)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((server.host, server.port))
        self.ws: ClientConnection = stack.enter_context(
            connect(
                server.url(path),
                sock=self.sock,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=TIMEOUT,
                proxy=None,
            )
        )

    def bytes(self) -> tuple[int, int]:
        """(bytes the server read, bytes it wrote) after the handshake."""
        return self.sock.after_head(self.sock.sent), self.sock.after_head(self.sock.received)


def scrape(server: ServerProcess) -> dict[str, float]:
    """``{sample: value}`` of dwebsocket's metrics (labels in the name: ``x{code=1000}``)."""
    with urllib.request.urlopen(server.url("/metrics", "http"), timeout=TIMEOUT) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("django_websocket_"):
                continue
            name = sample.name.removeprefix("django_websocket_")
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{name}{{{labels}}}" if labels else name] = sample.value
    return {k: v for k, v in values.items() if v}


def until(expected: dict[str, float], server: ServerProcess) -> dict[str, float]:
    """Scrape until ``expected`` is a subset (open connections' traffic is added every few
    seconds); the last scrape, whatever it holds, after a bound."""
    start = time.monotonic()
    while True:
        got = scrape(server)
        done = all(got.get(k, 0) == v for k, v in expected.items())
        if done or time.monotonic() > start + 20:
            print(f"scraped for {time.monotonic() - start:.1f} s")
            return got
        time.sleep(0.2)


def websocket_status(env: dict[str, str]) -> dict[str, Any]:
    """The counts ``manage.py websocket_status --json`` prints, run as a user runs it: in a
    process of its own, with ``env`` (the servers' ``PROMETHEUS_MULTIPROC_DIR``) added."""
    status = subprocess.run(
        [sys.executable, str(REPO / "tests" / "manage.py"), "websocket_status", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert status.returncode == 0, status.stderr
    counts: dict[str, Any] = json.loads(status.stdout)
    return counts


def refused(server: ServerProcess, **kwargs: Any) -> int:
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/echo/", **kwargs))
        status, _, _ = read_http_response(sock)
    return status


@pytest.fixture
def gunicorn(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[Callable[..., tuple[ServerProcess, dict[str, str]]]]:
    """gunicorn -k gevent -w 2 (``tests/servers.py``) with its own multiprocess dir."""

    def start(**settings: Any) -> tuple[ServerProcess, dict[str, str]]:
        directory = tmp_path / f"prometheus-{len(list(tmp_path.iterdir()))}"
        directory.mkdir()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
        return make_server("gunicorn-gevent", settings=settings, env=env), env

    yield start


def test_every_counter_across_two_workers(
    gunicorn: Callable[..., tuple[ServerProcess, dict[str, str]]],
) -> None:
    server, env = gunicorn(WEBSOCKET_PING_INTERVAL=None)
    assert scrape(server) == {}
    stack = contextlib.ExitStack()
    with stack:
        _every_counter(server, env, stack)


def _every_counter(server: ServerProcess, env: dict[str, str], stack: contextlib.ExitStack) -> None:

    # Refused handshakes: nothing else moves.
    assert refused(server, headers={"Sec-WebSocket-Version": "8"}) == 426
    assert refused(server, key="short") == 400
    assert refused(server, origin="https://evil.example") == 403

    # Echo clients open at once, at least six and on both workers (which worker takes a
    # connection is the kernel's choice: each worker's own file says whom it counted).
    directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    # The second worker may still be loading Django: keep connecting, a little apart.
    clients: list[Client] = []
    deadline = time.monotonic() + 60
    while len(clients) < 6 or len(sessions_per_worker(directory)) < 2:
        assert time.monotonic() < deadline, sessions_per_worker(directory)
        clients.append(Client(stack, server, "/echo/"))
        if len(clients) >= 6:
            time.sleep(0.2)
    opened = len(clients)
    sent = 0
    for n, client in enumerate(clients):
        for i in range(n % 4 + 1):
            message: str | bytes = f"{n}:{i}" * (i + 1) if i % 2 else bytes([n]) * 300
            client.ws.send(message)
            assert client.ws.recv(timeout=TIMEOUT) == message
            sent += 1
    in_, out = (sum(c.bytes()[i] for c in clients) for i in (0, 1))
    open_now = {
        "connections_open": opened,
        "handshakes_total{status=101}": opened,
        "handshakes_total{status=400}": 1,
        "handshakes_total{status=403}": 1,
        "handshakes_total{status=426}": 1,
        "messages_received_total": sent,
        "messages_sent_total": sent,
        "received_bytes_total": in_,
        "sent_bytes_total": out,
    }
    assert until(open_now, server) == open_now  # the open ones' traffic, within seconds

    # A group member (groups in the worker's memory: it hears itself), and a view's close.
    member = Client(stack, server, "/group/metrics/")
    assert member.ws.recv(timeout=TIMEOUT) == "joined"
    for text in ("a", "b", "c"):
        member.ws.send(text)
        assert member.ws.recv(timeout=TIMEOUT) == text
    closer = Client(stack, server, "/close/?code=4000&reason=done")
    closer.ws.send("close, please")
    with pytest.raises(ConnectionClosed):
        closer.ws.recv(timeout=TIMEOUT)

    # Closes with the clients' codes.
    for n, client in enumerate(clients):
        client.ws.close(1000 if n % 2 else 4001)
    member.ws.close()
    everyone = [*clients, member, closer]
    final = {
        "handshakes_total{status=101}": opened + 2,
        "handshakes_total{status=400}": 1,
        "handshakes_total{status=403}": 1,
        "handshakes_total{status=426}": 1,
        "messages_received_total": sent + 3 + 1,
        "messages_sent_total": sent + 1 + 3,
        "received_bytes_total": sum(c.bytes()[0] for c in everyone),
        "sent_bytes_total": sum(c.bytes()[1] for c in everyone),
        "closes_total{code=1000}": opened // 2 + 1,
        "closes_total{code=4001}": (opened + 1) // 2,
        "closes_total{code=4000}": 1,
        "group_sends_total": 3,
    }
    assert until(final, server) == final  # connections_open: 0, so absent

    # manage.py websocket_status reads the same directory.
    counts = websocket_status(env)
    assert counts["handshakes_total"] == {"101": opened + 2, "400": 1, "403": 1, "426": 1}
    assert counts["closes_total"] == {
        "1000": opened // 2 + 1,
        "4000": 1,
        "4001": (opened + 1) // 2,
    }
    assert counts["received_bytes_total"] == final["received_bytes_total"]
    assert counts["sent_bytes_total"] == final["sent_bytes_total"]
    assert counts.get("connections_open", 0) == 0
    assert sum(sessions_per_worker(directory).values()) == opened + 2


def test_caps_keepalive_and_slow_members(
    gunicorn: Callable[..., tuple[ServerProcess, dict[str, str]]],
) -> None:
    """One session per worker; silent peers; a member that never reads."""
    server, _ = gunicorn(
        WEBSOCKET_MAX_CONNECTIONS=1,
        WEBSOCKET_PING_INTERVAL=0.5,
        WEBSOCKET_PING_TIMEOUT=0.5,
        WEBSOCKET_SEND_QUEUE_SIZE=65536,
    )
    # Three at once on two workers of one session each: at least one 503. All three
    # handshakes are sent before any answer is read: an accepted session that never
    # answers a ping is closed (1011) about a second after it opened, which frees its
    # worker's slot, so handshakes one after the other, each waiting for the last's
    # answer, may all get a 101 when the client is slow (a loaded machine).
    socks = [socket.create_connection((server.host, server.port), timeout=TIMEOUT) for _ in "abc"]
    for sock in socks:
        sock.sendall(upgrade_request("/echo/"))
    accepted, statuses = [], []
    for sock in socks:
        status, _, _ = read_http_response(sock)
        statuses.append(status)
        (accepted if status == 101 else []).append(sock)
        if status != 101:
            sock.close()
    assert sorted(set(statuses)) <= [101, 503] and 503 in statuses
    # The accepted ones never answer a ping: closed with 1011 within a second or so.
    for sock in accepted:
        sock.settimeout(TIMEOUT)
        while sock.recv(65536):
            pass
        sock.close()
    k = len(accepted)
    expected = {
        "handshakes_total{status=101}": k,
        "handshakes_total{status=503}": 3 - k,
        "keepalive_timeouts_total": k,
        "closes_total{code=1011}": k,
    }
    assert until(expected, server) == {**expected, **_bytes(scrape(server))}

    # A member that sends 64 KiB messages to its own group and never reads: dropped (1008).
    member = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    member.sendall(upgrade_request("/group/slow/"))
    assert read_http_response(member)[0] == 101
    from tests.wire import masked

    try:
        for _ in range(200):
            member.sendall(masked(0x2, b"x" * 65536))
    except OSError:
        pass  # the server shut it down
    member.close()
    expected.update(
        {
            "handshakes_total{status=101}": k + 1,
            "group_members_dropped_total": 1,
            "closes_total{code=1008}": 1,
        }
    )
    got = until(expected, server)
    assert {k2: got.get(k2) for k2 in expected} == expected

    # websocket_status on the /metrics page (which adds up both workers here).
    out = io.StringIO()
    call_command("websocket_status", "--url", server.url("/metrics", "http"), stdout=out)
    lines = dict(line.split("  ", 1) for line in out.getvalue().splitlines())
    assert lines["Keepalive timeouts (1011)"].strip() == str(k)
    assert lines["Group members dropped (1008)"].strip() == "1"
    assert lines["Handshakes, by status"].strip() == f"101: {k + 1}  503: {3 - k}"


def _bytes(values: dict[str, float]) -> dict[str, float]:
    """The traffic counters of a scrape (pings, pongs and closes: not checked here)."""
    return {k: v for k, v in values.items() if k.endswith("bytes_total") or "messages" in k}


def sessions_per_worker(directory: Path) -> dict[str, float]:
    """``{pid: 101 handshakes}`` from each worker's own file in the multiprocess dir."""
    from prometheus_client.mmap_dict import MmapedDict

    found = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name.endswith("django_websocket_handshakes_total") and labels == {"status": "101"}:
                found[path.stem.rsplit("_", 1)[1]] = value
    return found


@pytest.mark.parametrize("variable", ["PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"])
def test_a_killed_workers_websockets_stop_counting_as_open(
    make_server: Callable[..., ServerProcess], tmp_path: Path, variable: str
) -> None:
    """child_exit drops a dead worker's open gauge, whichever spelling of the variable
    the servers have (prometheus_client and the /metrics view read both). Before, with
    the lower-case one child_exit did nothing: connections_open stayed 1 for good."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = make_server(
        "gunicorn-gevent",
        settings={"WEBSOCKET_PING_INTERVAL": None},
        env={variable: str(directory)},
    )
    with contextlib.ExitStack() as stack:
        client = Client(stack, server, "/echo/")
        client.ws.send("x")
        assert client.ws.recv(timeout=TIMEOUT) == "x"
        assert until({"connections_open": 1}, server).get("connections_open") == 1
        (pid,) = [pid for pid, n in open_per_worker(directory).items() if n == 1]
        os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            client.ws.recv(timeout=TIMEOUT)
    assert until({"connections_open": 0}, server).get("connections_open", 0) == 0


def open_per_worker(directory: Path) -> dict[str, float]:
    """``{pid: open WebSockets}`` from each worker's own gauge file."""
    from prometheus_client.mmap_dict import MmapedDict

    found = {}
    for path in directory.glob("gauge_livesum_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1].endswith("django_websocket_connections_open"):
                found[path.stem.rsplit("_", 1)[1]] = value
    return found
