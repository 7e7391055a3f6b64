"""The Redis layer over a real Redis Cluster while sends go on: a slot moving to another
master (resharding, MOVED) and a master failing (its replica promoted), with a process
sending without pause to a group whose members (there and in another process) are
subscribed with ``SSUBSCRIBE``. ``test_cluster_layer.py`` has the quiet cases."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import pytest
from django.test import override_settings
from redis.crc import key_slot

from dwebsocket.groups.cluster import ClusterSubscription, ShardSubscriber
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.test_redis_layer import Inbox, until
from tests.groups.test_sentinel_outages import (
    RESUME,
    WAIT,
    Sending,
    moved_then_stopped,
    outage_lines,
)

pytestmark = [pytest.mark.server]  # starts clusters: seconds, not the unit layer's


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
    mine, total = moved_then_stopped(sending, here, there, b)
    if how == "failover":  # sends to the dead master fail: delivered here at once
        assert mine == list(range(total)), "the sender's own member missed a message"
    assert not a.outage and not b.outage


def in_room(
    a: RedisLayer,
) -> tuple[RedisLayer, Inbox, ClusterSubscription, ShardSubscriber]:
    """``a`` with a member in group "room", its Cluster subscription, and the reader
    of the room's master."""
    member = Inbox()
    a.join("room", member)
    subscription = a.subscriber
    assert isinstance(subscription, ClusterSubscription)
    old = subscription.shard_of("room")
    assert old is not None
    return a, member, subscription, old


def test_cluster_reader_of_a_failed_master_does_not_reopen_the_outage(
    own_cluster: RedisCluster,
    layers: Callable[[str], RedisLayer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reader of a killed master, once the replica is promoted, has the slots learned
    again after its failed attempt; that moves its groups to the new master's reader and
    stops it. It then reported its failed attempt all the same: when the new reader's
    subscription was confirmed first (which ends the outage), the process was
    "unreachable" again for good -- no "reachable again" ever came, ``outage`` stayed
    true. (Here the old reader is made to wait for that confirmation, which only load
    makes happen otherwise.) Now a stopped reader reports nothing."""
    a, _, subscription, old = in_room(layers(own_cluster.url))
    gap = ShardSubscriber._gap

    def slow_gap(self: ShardSubscriber) -> None:
        gap(self)
        if self is old and self._stopping:  # its groups moved: let the new reader confirm
            until(lambda: "room" in subscription.subscribed, timeout=WAIT)

    monkeypatch.setattr(ShardSubscriber, "_gap", slow_gap)
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    own_cluster.kill(own_cluster.owner(key_slot(a.channel("room"))))
    until(lambda: "room" in subscription.subscribed, timeout=RESUME + WAIT)
    until(lambda: old._thread is not None and not old._thread.is_alive(), timeout=WAIT)
    assert not a.outage
    down, up = outage_lines(caplog)
    assert len(down) == len(up) == 1, caplog.text


def test_cluster_send_failed_at_a_replaced_master_does_not_reopen_the_outage(
    own_cluster: RedisCluster,
    layers: Callable[[str], RedisLayer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A group's master hangs (a frozen host: sends time out) and its replica is promoted.
    A send that went to the old master before the process learned the new map timed out
    after the reader had subscribed again at the new one (which ends the outage): its
    failure was recorded under the old master's address, which no send goes to any more,
    so no success ever cleared it -- ``outage`` stayed true, an "unreachable" WARNING
    with no "reachable again". (Here that send is made to wait for the new reader's
    confirmation; on a busy process one is nearly always in flight then: each waits out
    the socket timeout.) A failure at a node that no longer serves a slot is no outage."""
    a, member, subscription, old = in_room(layers(own_cluster.url))
    send_failed = RedisLayer._send_failed

    def moved() -> bool:
        return (
            subscription.shard_of("room") not in (None, old) and "room" in subscription.subscribed
        )

    def late(self: RedisLayer, exc: BaseException, channel: bytes, shard: str | None) -> None:
        if shard == old.address:  # the new reader confirms first
            until(moved, timeout=RESUME + WAIT)
        send_failed(self, exc, channel, shard)

    monkeypatch.setattr(RedisLayer, "_send_failed", late)
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    own_cluster.hang(own_cluster.owner(key_slot(a.channel("room"))))
    a.send("room", "while hung")  # times out at the old master, fails late
    assert member.get() == "while hung"  # this process's members, as in any outage
    assert moved()
    a.send("room", "after")
    assert member.get() == "after"
    until(lambda: not a.outage, timeout=WAIT)
    down, up = outage_lines(caplog)
    assert len(down) == len(up) <= 1, caplog.text


def test_cluster_sender_follows_the_failover_of_a_master_that_hangs(
    own_cluster: RedisCluster,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process that only sends to a group (a view's process, a task worker: no member
    there, so no reader on that shard) while the group's master hangs (a frozen host, a
    partition: its sends time out, nothing refuses them). The cluster promotes the
    replica; the process kept sending to the old master -- each send a timeout, every
    message lost for the other processes, for as long as the old master hung: nothing
    had it learn the slots again (a refused connection does, through redis-py's own
    path; a timeout on the direct path did not). A failed call to a master has the slots
    learned again, in the background: its sends go to the new master, and its outage
    ends with one "reachable again"."""
    a, b = layers(own_cluster.url), layers(own_cluster.url)
    member = Inbox()
    b.join("room", member)
    a.send("room", "before")
    assert member.get() == "before"
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    channel = a.channel("room")
    hung = own_cluster.owner(key_slot(channel))
    new = own_cluster.hang(hung)
    until(  # b's reader notices (its keepalive) and subscribes at the new master
        lambda: new.command("PUBSUB", "SHARDNUMSUB", channel.decode())[1] == 1,
        timeout=RESUME + WAIT,
    )

    def delivered() -> bool:
        a.send("room", "after")
        try:
            return bool(member.get(timeout=0.2) == "after")
        except Exception:
            return False

    until(delivered, timeout=WAIT)
    until(lambda: not a.outage, timeout=WAIT)
    down, up = outage_lines(caplog)
    assert len(down) == len(up) >= 1, caplog.text
    # The master that failed, not only the cluster's URL: the other shards were up.
    assert f"master at {hung.address}" in down[0], down[0]


def test_cluster_process_started_while_a_shard_is_down_reaches_the_others(
    layers: Callable[[str], RedisLayer], caplog: pytest.LogCaptureFixture
) -> None:
    """A shard is down whole (its master dead, no replica left) on a cluster that serves
    the rest (``cluster-require-full-coverage no``), and the down master is the one of
    slot 0, which redis-py's client takes for its default node. A process started then (a
    deploy, a worker recycled) could not make its cluster client at all: the client asks
    the default node for ``COMMAND`` while it is made, and with retries turned off that
    one refused connection failed it, so every send -- to every shard -- was an outage,
    for as long as the shard was down. Its sends to the healthy shards go out; only the
    down shard's groups are an outage."""
    with running(RedisCluster(replicas=0)) as setup:
        for node in setup.nodes:
            node.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        down = setup.owner(0)
        healthy = next(
            f"room{n}"
            for n in range(1000)
            if setup.owner(key_slot(f"dwebsocket:0:{{room{n}}}".encode())) is not down
        )
        a = layers(setup.url)
        member = Inbox()
        a.join(healthy, member)
        down.stop()
        setup.wait_ok()
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        b = layers(setup.url)
        b.send(healthy, "from a new process", fail_silently=False)
        assert member.get() == "from a new process"
        assert not b.outage


def test_cluster_history_send_loads_its_script_on_its_own_shard_only(
    layers: Callable[[str], RedisLayer],
) -> None:
    """A history group's master does not know the layer's script (a replica promoted, a
    node restarted: Redis keeps scripts in memory, not in the data it replicates) while
    another master hangs (a frozen host, a partition). The send loads the script on the
    group's master only. (redis-py's ``Script`` loads it with ``SCRIPT LOAD`` on every
    master: the hung one failed the send after a socket timeout, and the group's
    healthy shard was taken for an outage, its sends held back.)"""
    with (
        running(RedisCluster(replicas=0)) as setup,
        override_settings(WEBSOCKET_GROUPS_HISTORY={"room*": {"size": 10, "ttl": 60}}),
    ):
        for node in setup.nodes:
            node.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        a, b = layers(setup.url), layers(setup.url)
        group = "room0"
        master = setup.owner(key_slot(a.channel(group)))
        hung = next(node for node in setup.masters() if node is not master)
        member = Inbox()
        b.join(group, member)
        assert a.send(group, "before", fail_silently=False) is not None
        assert member.get() == "before"
        master.command("SCRIPT", "FLUSH")  # as a promoted replica starts
        assert hung.process is not None
        hung.process.send_signal(signal.SIGSTOP)
        try:
            assert a.send(group, "while another hangs", fail_silently=False) is not None
            assert member.get() == "while another hangs"
            assert not a.outage
        finally:
            hung.process.send_signal(signal.SIGCONT)


def test_cluster_subscriptions_at_healthy_masters_do_not_end_another_s_outage(
    layers: Callable[[str], RedisLayer], caplog: pytest.LogCaptureFixture
) -> None:
    """A master is down (no replica to take over; the cluster serves the rest) while
    members here join groups of the other masters: the outage goes on until that master
    is back, then ends once. (Each subscription confirmed at a healthy master ended the
    outage: "reachable again" while it was down, "unreachable" again at its next send or
    reconnection attempt, and its sends no longer held back, each waiting for it.)"""
    with running(RedisCluster(replicas=0)) as setup:
        for node in setup.nodes:
            node.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        a = layers(setup.url)
        down = setup.masters()[0]

        def on_down(group: str) -> bool:
            return setup.owner(key_slot(a.channel(group))) is down

        there = next(f"b{n}" for n in range(1000) if on_down(f"b{n}"))
        healthy = [f"a{n}" for n in range(1000) if not on_down(f"a{n}")][:4]
        member = Inbox()
        a.join(there, member)
        a.join(healthy[0], Inbox())
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        down.stop()
        a.send(there, "while down")
        assert member.get() == "while down"  # this process's members, as in any outage
        # Whichever thread starts (or ends) the outage sets ``outage`` first and logs it
        # after: the WARNING may lag the flag (a reader's, on a loaded machine).
        until(lambda: a.outage and bool(outage_lines(caplog)[0]))
        for group in healthy[1:]:
            a.join(group, Inbox())
            a.send(there, "still down")
            assert a.outage
        down_lines, up_lines = outage_lines(caplog)
        assert len(down_lines) == 1 and not up_lines, caplog.text
        down.start()
        until(lambda: not a.outage and bool(outage_lines(caplog)[1]), timeout=RESUME + WAIT)
        down_lines, up_lines = outage_lines(caplog)
        assert len(down_lines) == len(up_lines) == 1, caplog.text
