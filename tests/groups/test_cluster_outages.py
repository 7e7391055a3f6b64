"""The Redis layer over a real Redis Cluster while sends go on: a slot moving to another
master (resharding, MOVED) and a master failing (its replica promoted), with a process
sending without pause to a group whose members (there and in another process) are
subscribed with ``SSUBSCRIBE``. ``test_cluster_layer.py`` has the quiet cases."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis.crc import key_slot

from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.test_redis_layer import Inbox, until
from tests.groups.test_sentinel_outages import RESUME, WAIT, Sending, received

OPTIONS = "socket_timeout=1&socket_connect_timeout=1"

pytestmark = [pytest.mark.server]  # starts clusters: seconds, not the unit layer's


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    with running(RedisCluster()) as setup:
        yield setup


@pytest.fixture
def layers() -> Iterator[Callable[[str], RedisLayer]]:
    made: list[RedisLayer] = []

    def make(url: str) -> RedisLayer:
        layer = RedisLayer(f"{url}?{OPTIONS}", Registry())
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


@pytest.mark.parametrize("how", ["moved", "failover"])
def test_cluster_slot_moved_or_master_failed_while_sends_go_on(
    own_cluster: RedisCluster, layers: Callable[[str], RedisLayer], how: str
) -> None:
    """The group's slot moves to another master (``moved``), or its master is killed and
    its replica promoted (``failover``), while a process sends to it without pause. Both
    processes' sharded subscriptions are made again at the new owner, no member gets a
    message twice or out of order, and once they are there every message reaches every
    member. (While a slot moves, what is published between the old master ending the
    subscriptions and their confirmation at the new one reaches no process: pub/sub
    keeps nothing; ``docs/groups.rst``.)"""
    a, b = layers(own_cluster.url), layers(own_cluster.url)
    here, there = Inbox(), Inbox()
    a.join("moving", here)
    b.join("moving", there)
    channel = b.channel("moving")
    slot = key_slot(channel)
    sending = Sending(a, "moving")
    until(lambda: sending.sent > 20)
    source = own_cluster.owner(slot)
    if how == "moved":
        target = next(m for m in own_cluster.masters() if m is not source)
        own_cluster.move_slot(slot, target)
    else:
        target = own_cluster.kill(source)
    until(
        lambda: target.command("PUBSUB", "SHARDNUMSUB", channel.decode())[1] == 2,
        timeout=RESUME + WAIT,
    )
    mark = sending.sent
    until(lambda: sending.sent > mark + 50)
    total = sending.stop()

    mine, theirs = received(here), received(there)
    for numbers in (mine, theirs):
        assert numbers == sorted(set(numbers)), "a message twice, or out of order"
        assert set(range(mark, total)) <= set(numbers), "lost once both had moved"
    if how == "failover":  # sends to the dead master fail: delivered here at once
        assert mine == list(range(total)), "the sender's own member missed a message"
    assert not a.outage and not b.outage
