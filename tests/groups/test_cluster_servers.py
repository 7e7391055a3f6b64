"""Groups across two real gevent server processes over a real Redis Cluster and real
Sentinels, with real clients (``websockets``): what ``test_cluster_layer.py`` shows for the
layer alone, end to end. Members join ``/group/<name>/`` and forward what they send to
the group (``tests/groups/views.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
from redis.crc import key_slot
from websockets.sync.client import ClientConnection

from tests.groups.redis_cluster import RedisCluster, RedisSentinels, running, wait_for
from tests.groups.test_servers import Clients, assert_nothing_more, manage, receive, sent_by
from tests.servers import ServerProcess

pytestmark = [
    pytest.mark.server,
]

WAIT = 20.0
#: As in test_cluster_layer: delivery resumes within this many seconds of the promotion.
RESUME = 5.0


@pytest.fixture
def clients() -> Iterator[Clients]:
    with Clients() as opened:
        yield opened


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with running(RedisCluster()) as setup:
        yield setup


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    with running(RedisSentinels()) as setup:
        yield setup


def two_servers(make_server: Callable[..., ServerProcess], url: str) -> list[ServerProcess]:
    # A short socket timeout, as in production near Redis: a dead node is given up soon.
    settings = {"WEBSOCKET_GROUPS_URL": f"{url}?socket_timeout=1&socket_connect_timeout=1"}
    return [make_server("gevent", settings=settings) for _ in range(2)]


def exchange(a: ClientConnection, b: ClientConnection, tag: str, count: int = 10) -> None:
    """``a`` and ``b`` (members of one group, on two servers) each send ``count``
    messages: both get all of them, each sender's in order."""
    for i in range(count):
        a.send(f"a{tag}:{i}")
        b.send(f"b{tag}:{i}")
    for ws in (a, b):
        got = receive(ws, 2 * count)
        assert sent_by(got, f"a{tag}") == [f"a{tag}:{i}" for i in range(count)]
        assert sent_by(got, f"b{tag}") == [f"b{tag}:{i}" for i in range(count)]
        assert_nothing_more(ws)


def until_resumed(sender: ClientConnection, receiver: ClientConnection, timeout: float) -> float:
    """Probes from ``sender`` until ``receiver`` (on the other server) has one; seconds.
    Afterwards every probe still in flight is read and dropped."""
    started = time.monotonic()
    n = 0
    while True:
        assert time.monotonic() - started < timeout, f"not resumed within {timeout} s"
        sender.send(f"probe:{n}")
        n += 1
        with contextlib.suppress(TimeoutError):
            if str(receiver.recv(timeout=0.1)).startswith("probe:"):
                took = time.monotonic() - started
                break
    for ws in (sender, receiver):
        with contextlib.suppress(TimeoutError):
            while True:
                assert str(ws.recv(timeout=0.5)).startswith("probe:")
    return took


def test_cluster_groups_across_two_gevent_processes(
    cluster: RedisCluster, make_server: Callable[..., ServerProcess], clients: Clients
) -> None:
    """Members of groups on every master, on two servers: all messages everywhere; then
    the master of one group is killed, and once its replica is promoted delivery resumes
    (probes sent in the gap are lost, as documented); then the group's slot is moved to
    another master, and delivery goes on."""
    one, two = two_servers(make_server, cluster.url)
    names: dict[int, str] = {}
    n = 0
    while len(names) < len(cluster.masters()):
        port = cluster.owner(key_slot(f"dwebsocket:0:{{g{n}}}".encode())).port
        names.setdefault(port, f"g{n}")
        n += 1
    pairs = {name: (clients.open(one, name), clients.open(two, name)) for name in names.values()}
    for name, (a, b) in pairs.items():
        exchange(a, b, name)
    for name in names.values():  # a management command (a third process) reaches them too
        result = manage("websocket_send", name, f"command:{name}", groups_url=cluster.url)
        assert result.returncode == 0, result.stderr.decode()
    for name, (a, b) in pairs.items():
        assert receive(a, 1) == receive(b, 1) == [f"command:{name}"]

    victim_port, group = next(iter(names.items()))
    a, b = pairs[group]
    killed_at = time.monotonic()
    cluster.kill(cluster.by_port(victim_port))
    promoted_at = time.monotonic()
    took = until_resumed(a, b, RESUME)
    print(f"\n[cluster] promoted after {promoted_at - killed_at:.2f} s, resumed {took:.2f} s later")
    exchange(a, b, "after-failover")
    for name, (x, y) in pairs.items():  # and the other groups never noticed
        if name != group:
            exchange(x, y, f"{name}-after")

    slot = key_slot(f"dwebsocket:0:{{{group}}}".encode())
    target = next(m for m in cluster.masters() if m is not cluster.owner(slot))
    cluster.move_slot(slot, target)

    def both_subscribed_at_target() -> bool:
        reply = target.command("PUBSUB", "SHARDNUMSUB", f"dwebsocket:0:{{{group}}}")
        return bool(reply[1] == 2)

    wait_for("both servers subscribed at the new master", both_subscribed_at_target, WAIT)
    exchange(a, b, "after-move")


def test_sentinel_groups_across_two_gevent_processes(
    sentinels: RedisSentinels, make_server: Callable[..., ServerProcess], clients: Clients
) -> None:
    """The same over Sentinels: the master is killed, the replica promoted, delivery
    resumes by itself."""
    one, two = two_servers(make_server, sentinels.url)
    a, b = clients.open(one, "room"), clients.open(two, "room")
    exchange(a, b, "before")
    killed_at = time.monotonic()
    sentinels.kill_master()
    promoted_at = time.monotonic()
    took = until_resumed(a, b, RESUME)
    print(
        f"\n[sentinel] promoted after {promoted_at - killed_at:.2f} s, resumed {took:.2f} s later"
    )
    exchange(a, b, "after")
