"""Recovery after a reconnect, end to end: real gevent servers, a real private
``redis-server``, a load balancer stand-in (``proxy.py``) and dwebsocket's reconnecting
client (``dwebsocket.client``), while a task worker (this process) publishes.

The scenario of issue 19 -- a client cut off for 30 s while 1,000 messages/s go to a group
of 1,000 members -- runs at a smaller scale here (CI's share of the machine), set by
environment variables; ``make recovery-full`` runs it at full scale::

    DWEBSOCKET_RECOVERY_CUT      seconds the client is cut off (3)
    DWEBSOCKET_RECOVERY_RATE     messages per second published (200)
    DWEBSOCKET_RECOVERY_MEMBERS  members of the group, the client included (50)
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket.client import Event, Received, ReconnectingClient
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response
from tests.groups.proxy import Proxy
from tests.groups.redis_server import RedisServer
from tests.servers import ServerProcess

pytestmark = pytest.mark.server

CUT = float(os.environ.get("DWEBSOCKET_RECOVERY_CUT", "3"))
RATE = int(os.environ.get("DWEBSOCKET_RECOVERY_RATE", "200"))
MEMBERS = int(os.environ.get("DWEBSOCKET_RECOVERY_MEMBERS", "50"))
#: Enough history for everything the scenario publishes, and more.
HISTORY = {"feed": {"size": 200_000, "ttl": 600}, "small": {"size": 20, "ttl": 600}}
WAIT = 60.0


class Members:
    """``count`` group members over raw sockets that one thread reads and discards (the
    load of a big group, at little cost to this process). Closed on exit."""

    def __init__(self, servers: list[ServerProcess], group: str, count: int) -> None:
        self.sockets: list[socket.socket] = []
        self.received = 0
        self._selector = selectors.DefaultSelector()
        self._stop = False
        for n in range(count):
            self.sockets.append(_member(servers[n % len(servers)], f"/group/{group}/"))
        for sock in self.sockets:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(sock)
                self.received += len(data)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._selector.close()
        for sock in self.sockets:
            sock.close()


def _member(server: ServerProcess, path: str) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=WAIT)
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
    while len(data) < 8:  # "joined": the view has joined the group
        data += sock.recv(4096)
    return sock


class Publisher(threading.Thread):
    """A task worker publishing ``m0``, ``m1``, ... to ``group`` at ``rate`` per second."""

    def __init__(self, url: str, group: str, count: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.layer = RedisLayer(url, Registry())
        self.group, self.count, self.rate = group, count, rate
        self.positions: list[str | None] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(self.count):
                pause = start + i / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self.positions.append(self.layer.send(self.group, f"m{i}", fail_silently=False))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.layer.close()


@pytest.fixture(autouse=True)
def history_here() -> Iterator[None]:
    """This process (the task worker) keeps the same history settings as the servers."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY=HISTORY):
        yield


@pytest.fixture
def history_servers(
    redis_server: RedisServer, make_server: Callable[..., ServerProcess]
) -> Callable[[int], list[ServerProcess]]:
    def make(count: int) -> list[ServerProcess]:
        settings = {
            "WEBSOCKET_GROUPS_URL": redis_server.url,
            "WEBSOCKET_GROUPS_HISTORY": HISTORY,
            # A member of a big group falling behind must not be closed meanwhile.
            "WEBSOCKET_SEND_QUEUE_SIZE": 64 * 1024 * 1024,
            "WEBSOCKET_PING_INTERVAL": None,  # the raw members do not answer pings
        }
        return [make_server("gevent", settings=settings) for _ in range(count)]

    return make


@pytest.fixture
def proxy() -> Iterator[Callable[[int], Proxy]]:
    made: list[Proxy] = []

    def make(target: int) -> Proxy:
        made.append(Proxy(target))
        return made[-1]

    yield make
    for p in made:
        p.close()


class Recorder:
    """What a :class:`ReconnectingClient` saw: messages and events, in one order."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    def __call__(self, event: Event) -> None:
        self.log.append(event)

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.log if isinstance(e, Event) and e.type == kind]


def client(url: str, recorder: Recorder) -> ReconnectingClient:
    return ReconnectingClient(
        url, min_delay=0.2, max_delay=2.0, timeout=10, on_event=recorder
    ).connect(WAIT)


def collect(ws: ReconnectingClient, count: int, recorder: Recorder) -> list[str]:
    """The group's messages until ``count`` came (the view's reports left out)."""
    got: list[str] = []
    # A big group on a small machine lags behind the publisher: wait in proportion.
    deadline = time.monotonic() + CUT + WAIT + count * MEMBERS / 200_000
    while len(got) < count:
        try:
            received = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            events = [e for e in recorder.log if isinstance(e, Event)]
            raise AssertionError(f"{len(got)} of {count} messages; events {events}") from None
        recorder.log.append(received)
        if received.group is not None:
            assert isinstance(received.data, str)
            got.append(received.data)
    return got


def next_group_message(ws: ReconnectingClient) -> Received:
    """The next group message (the view's reports skipped)."""
    while (received := ws.recv(WAIT)).group is None:
        pass
    return received


@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "other-process"])
def test_a_client_cut_off_gets_every_message_once_in_order(
    processes: int,
    redis_server: RedisServer,
    history_servers: Callable[[int], list[ServerProcess]],
    proxy: Callable[[int], Proxy],
) -> None:
    """Cut off for ``CUT`` s while ``RATE`` messages/s go to a group of ``MEMBERS``: the
    client comes back (to the same server, or -- that one killed -- to the other) and has
    every message, in order, none twice, told "recovered"."""
    servers = history_servers(processes)
    balancer = proxy(servers[0].port)
    members = Members(servers, "feed", MEMBERS - 1)
    recorder = Recorder()
    count = int(RATE * (CUT + 2))
    try:
        with client(balancer.url("/group/feed/follow/"), recorder) as ws:
            publisher = Publisher(redis_server.url, "feed", count, RATE)
            publisher.start()
            time.sleep(1)
            balancer.cut()
            if processes == 2:
                servers[0].stop(signal.SIGKILL)
                balancer.target(servers[1].port)
            time.sleep(CUT)
            balancer.restore()
            got = collect(ws, count, recorder)
            publisher.join(WAIT)
            assert publisher.error is None, publisher.error
    finally:
        members.close()
    assert got == [f"m{i}" for i in range(count)]  # all, in order, none twice
    assert ws.positions["feed"] == publisher.positions[-1]
    opened = recorder.events("open")
    assert len(opened) >= 2 and opened[-1].reconnect
    recovered = recorder.events("recovered")
    assert len(recovered) == 1 and recovered[0].missed > 0
    assert not recorder.events("recovery_failed")
    assert balancer.forwarded >= 2
    print(
        f"\n[{processes} process(es)] {count} messages at {RATE}/s, {MEMBERS} members, "
        f"cut {CUT} s: {recovered[0].missed} recovered from the history"
    )


@pytest.mark.parametrize("loss", ["trimmed", "flushed"])
def test_lost_history_gives_recovery_failed(
    loss: str,
    redis_server: RedisServer,
    history_servers: Callable[[int], list[ServerProcess]],
    proxy: Callable[[int], Proxy],
) -> None:
    """History trimmed past the client's position (size 20), or Redis flushed: the client
    is told "recovery failed" (and the view, which reports it), then goes on live."""
    (server,) = history_servers(1)
    balancer = proxy(server.port)
    recorder = Recorder()
    worker = RedisLayer(redis_server.url, Registry())
    try:
        with client(balancer.url("/group/small/follow/"), recorder) as ws:
            worker.send("small", "seen")
            assert next_group_message(ws).data == "seen"
            balancer.cut()
            if loss == "flushed":
                assert redis_server.command("FLUSHALL") == b"+OK\r\n"
                worker.send("small", "after the flush")
            else:
                for i in range(50):
                    worker.send("small", f"m{i}")
            balancer.restore()
            deadline = time.monotonic() + WAIT
            while not recorder.events("recovery_failed"):
                assert time.monotonic() < deadline
                with contextlib.suppress(TimeoutError):
                    recorder.log.append(ws.recv(timeout=0.5))
            failed = recorder.events("recovery_failed")[0]
            assert failed.since is not None and failed.position is not None
            assert failed.position.split(":")[0] != failed.since.split(":")[0] or (
                loss == "trimmed"
            )
            assert not recorder.events("recovered")
            live = worker.send("small", "live")
            received = next_group_message(ws)
            assert received.data == "live" and received.position == live
    finally:
        worker.close()


def server_behind_a_link(
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    proxy: Callable[[int], Proxy],
) -> tuple[Proxy, ServerProcess]:
    """A gevent server whose way to Redis goes through the returned proxy, which the test
    cuts (short socket timeouts: it finds Redis gone soon)."""
    link = proxy(redis_server.port)
    options = "?socket_timeout=1&socket_connect_timeout=1"
    server = make_server(
        "gevent",
        settings={
            "WEBSOCKET_GROUPS_URL": f"redis://127.0.0.1:{link.port}/0{options}",
            "WEBSOCKET_GROUPS_HISTORY": HISTORY,
        },
    )
    return link, server


def read_until(ws: ReconnectingClient, recorder: Recorder, condition: Callable[[], bool]) -> None:
    """Read what ``ws`` gets into ``recorder`` until ``condition`` holds (bounded)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, recorder.log
        with contextlib.suppress(TimeoutError):
            recorder.log.append(ws.recv(timeout=0.5))


def back_while_redis_is_cut_off(
    ws: ReconnectingClient,
    recorder: Recorder,
    worker: RedisLayer,
    balancer: Proxy,
    link: Proxy,
    missed: str | None = None,
) -> str:
    """``ws`` gets "seen" (its position returned), is cut off (``missed`` sent meanwhile)
    and comes back while its server cannot reach Redis (``link`` cut, and left so): told
    "recovery failed" (``recorder``)."""
    seen = worker.send("small", "seen")
    assert seen is not None
    read_until(ws, recorder, lambda: any(getattr(r, "data", None) == "seen" for r in recorder.log))
    balancer.cut()
    if missed is not None:
        worker.send("small", missed)  # kept; in the full state the view sends next
    link.cut()
    balancer.restore()
    read_until(ws, recorder, lambda: bool(recorder.events("recovery_failed")))
    return seen


def test_a_resume_redis_could_not_serve_is_not_made_again_later(
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    proxy: Callable[[int], Proxy],
) -> None:
    """The client comes back while its server cannot reach Redis: "recovery failed" with
    no position, and the view sends the full state, which has what the client missed.
    Its next reconnection, Redis back, must not resume from the old position: that
    replayed the missed message on top of that full state (twice, told "recovered").
    It now joins as a first visit, told "recovery failed" again, with the old ``since``."""
    link, server = server_behind_a_link(redis_server, make_server, proxy)
    balancer = proxy(server.port)
    worker = RedisLayer(redis_server.url, Registry())
    recorder = Recorder()

    def reports() -> list[dict[str, Any]]:
        return [
            json.loads(r.data)["recovery"]
            for r in recorder.log
            if isinstance(r, Received) and r.group is None and '"recovery"' in str(r.data)
        ]

    def server_reaches_redis() -> bool:
        with ReconnectingClient(server.url("/group/small/follow/")) as probe:
            report = json.loads(probe.recv(WAIT).data)["recovery"]
        return report["position"] is not None

    try:
        with client(balancer.url("/group/small/follow/"), recorder) as ws:
            seen = back_while_redis_is_cut_off(ws, recorder, worker, balancer, link, "missed")
            (failed,) = recorder.events("recovery_failed")
            assert failed.since == seen and failed.position is None
            assert "small" not in ws.positions  # given up
            link.restore()
            deadline = time.monotonic() + WAIT
            while not server_reaches_redis():
                assert time.monotonic() < deadline, "the server never reached Redis again"
                time.sleep(0.2)
            balancer.cut()
            balancer.restore()
            read_until(ws, recorder, lambda: len(reports()) >= 3)
    finally:
        worker.close()
    assert [r.data for r in recorder.log if isinstance(r, Received) and r.group] == ["seen"]
    assert reports()[2]["since"] is None  # a first visit: the view sends the full state
    assert not recorder.events("recovered")
    assert [e.since for e in recorder.events("recovery_failed")] == [seen, seen]


def test_a_member_joined_without_a_position_is_told_of_messages_it_may_have_missed(
    redis_server: RedisServer,
    make_server: Callable[..., ServerProcess],
    proxy: Callable[[int], Proxy],
) -> None:
    """The client comes back while its server cannot reach Redis ("recovery failed", no
    position), Redis is flushed, and another process sends a new epoch's first messages
    while the server is still cut off from Redis. Redis back, the first message the
    server gets is the new epoch's fourth or later: whether its client missed those before
    it cannot be told (it had no position), so it is closed with 4003 and joins again as a
    first visit, the view sending the full state. (It was handed the message: its client
    took that position as its own, never told of the new epoch's first messages, and a
    later reconnection from it "recovered".)"""
    link, server = server_behind_a_link(redis_server, make_server, proxy)
    balancer = proxy(server.port)
    worker = RedisLayer(redis_server.url, Registry())
    recorder = Recorder()

    def closed_for_gap() -> bool:
        return any(e.code == 4003 for e in recorder.events("close"))

    try:
        with client(balancer.url("/group/small/follow/"), recorder) as ws:
            seen = back_while_redis_is_cut_off(ws, recorder, worker, balancer, link)
            (failed,) = recorder.events("recovery_failed")
            assert failed.since == seen and failed.position is None
            assert redis_server.command("FLUSHALL") == b"+OK\r\n"
            lost = [worker.send("small", f"new {n}") for n in range(1, 4)]
            link.restore()
            # Until the server, subscribed again, hands one of the next ones over.
            deadline = time.monotonic() + WAIT
            sent = 3
            while not closed_for_gap() and not any(
                isinstance(r, Received) and r.group == "small" and r.data != "seen"
                for r in recorder.log
            ):
                assert time.monotonic() < deadline, recorder.log
                sent += 1
                worker.send("small", f"new {sent}")
                with contextlib.suppress(TimeoutError):
                    recorder.log.append(ws.recv(timeout=0.3))
            got = [
                (r.data, r.position) for r in recorder.log if isinstance(r, Received) and r.group
            ]
            assert got == [("seen", seen)] and closed_for_gap()
            read_until(ws, recorder, lambda: len(recorder.events("joined")) >= 3)
    finally:
        worker.close()
    epoch = lost[0].split(":")[0]  # type: ignore[union-attr]
    assert lost == [f"{epoch}:{n}" for n in (1, 2, 3)]
    again = recorder.events("joined")[2]  # a first visit: the view sends the full state
    assert again.since is None and again.position is not None
    assert again.position.split(":")[0] == epoch
