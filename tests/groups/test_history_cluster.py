"""Group history and recovery (issue 19) over a real Redis Cluster and real Sentinels:
the same scenarios as ``test_history_redis.py`` on one server. On a Cluster the history
script runs in the slot of the group's hash tag and publishes with ``SPUBLISH`` to the
group's channel, which lives in that slot; after a Sentinel failover the history is the
promoted replica's."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.groups.history import Position
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import Node, RedisCluster, RedisSentinels, require
from tests.groups.test_history import follow, receive, recovery_of
from tests.groups.test_redis_layer import Inbox

pytestmark = pytest.mark.server  # starts a cluster or Sentinels for each test

HISTORY = {"room": {"size": 100, "ttl": 60}, "big": {"size": 5000, "ttl": 60}}
OPTIONS = "?socket_timeout=2&socket_connect_timeout=2"


@pytest.fixture(params=["cluster", "sentinel"])
def setup(request: pytest.FixtureRequest) -> Iterator[Any]:
    require()
    made: Any = RedisCluster() if request.param == "cluster" else RedisSentinels()
    made.start()
    groups.reset()
    with override_settings(
        WEBSOCKET_GROUPS_URL=made.url + OPTIONS, WEBSOCKET_GROUPS_HISTORY=HISTORY
    ):
        yield made
        groups.reset()
    made.close()


@pytest.fixture
def layers(setup: Any) -> Iterator[Callable[[], RedisLayer]]:
    made: list[RedisLayer] = []

    def make() -> RedisLayer:
        layer = RedisLayer(setup.url + OPTIONS, Registry())
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


def test_positions_and_replay_across_processes(
    setup: Any, layers: Callable[[], RedisLayer]
) -> None:
    other = layers()  # another process sends
    first = Position.parse(other.send("room", "one"))
    assert first is not None and first.offset == 1
    with follow("room", since=f"{first.epoch}:0") as ws:
        assert ws.receive() == "one"
        assert recovery_of(ws)["recovered"] is True
        assert other.send("room", b"\x00two") == f"{first.epoch}:2"
        assert ws.receive() == b"\x00two"
        ws.send("three")  # the view sends it to the group from this process
        assert ws.receive() == "three"


def test_live_messages_during_the_replay_come_once_in_order(
    setup: Any, layers: Callable[[], RedisLayer]
) -> None:
    other = layers()
    start = other.send("big", "start")
    for i in range(300):
        other.send("big", f"m{i}")
    with follow("big", since=start) as ws:
        for i in range(300, 350):
            other.send("big", f"m{i}")
        got = [m for m in receive(ws, 351) if not str(m).startswith('{"recovery"')]
        assert got[:350] == [f"m{i}" for i in range(350)]


def replicated(master: Node, stream: str) -> int:
    """How many replicas have every write ``master`` took so far. ``WAIT`` counts those
    that have the writes of its own connection: a connection that wrote nothing gets the
    count at once, whatever the replicas lag (so this test failed about one run in eight:
    the replica was promoted without the stream, and the join rightly reported a new
    epoch). So a write in the stream's slot goes first, on the same connection."""
    with contextlib.closing(master.client(decode_responses=True)) as client:
        client.execute_command("SET", f"{stream}:replicated", "1")
        return int(client.execute_command("WAIT", 1, 5000))


def test_history_survives_a_failover_where_the_replica_had_it(
    setup: Any, layers: Callable[[], RedisLayer]
) -> None:
    """The master holding the group's stream is killed once its replica has the stream:
    the promoted replica serves the history, and new messages continue its offsets."""
    other = layers()
    for i in range(5):
        last = other.send("room", f"m{i}")
    position = Position.parse(last)
    assert position is not None
    stream = other.stream("room")
    if isinstance(setup, RedisCluster):
        master = setup.owner(setup.keyslot(stream))
        assert replicated(master, stream) == 1  # the replica has every write so far
        setup.kill(master)
    else:
        assert replicated(setup.current_master(), stream) == 1
        setup.kill_master()
    with follow("room", since=f"{position.epoch}:0") as ws:
        first = ws.receive()  # the view's report comes first when the recovery failed
        assert first == "m0", first
        assert receive(ws, 4) == [f"m{i}" for i in range(1, 5)]
        assert recovery_of(ws)["recovered"] is True


def test_a_lost_epoch_never_goes_on_with_other_messages(
    setup: Any, layers: Callable[[], RedisLayer]
) -> None:
    """The stream is lost and made again with an epoch behind the one a sender is still
    in: the sender appends in the stream's epoch (as in test_history_redis.py), so a
    position of the lost epoch fails explicitly instead of naming another message."""
    ahead = layers()
    seen = Position.parse(ahead.send("room", "old"))
    assert seen is not None
    stream = ahead.stream("room")
    if isinstance(setup, RedisCluster):
        master = setup.owner(setup.keyslot(stream))
    else:
        master = setup.current_master()
    behind = str(int(seen.epoch) - 5_000_000)
    master.command("DEL", stream)
    master.command("XADD", stream, f"{behind}-0", "k", "")
    master.command("XDEL", stream, f"{behind}-0")
    assert Position.parse(layers().send("room", "new1")) == Position(behind, 1)
    assert Position.parse(ahead.send("room", "new2")) == Position(behind, 2)
    recovery = groups.join("room", Inbox(), since=str(seen))
    assert recovery.failed and recovery.position == f"{behind}:2"
