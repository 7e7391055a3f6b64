"""The Redis layer over a real Redis Cluster and real Sentinels (``redis-cluster://``,
``redis-sentinel://``), in this process: each ``RedisLayer`` stands for one process, as in
``test_redis_layer.py``. The same across real server processes: ``test_cluster_servers.py``.

A failover here is a master killed with SIGKILL: the cluster (1 s node timeout) or the
Sentinels (down after 1 s) promote its replica; delivery must then resume by itself.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings
from redis.crc import key_slot

from dwebsocket.exceptions import InvalidSetting
from dwebsocket.groups import GroupsUnavailable, url_problem
from dwebsocket.groups.cluster import ClusterSubscription
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import MAX_PUBLISH_CONNECTIONS, RedisLayer, decode
from dwebsocket.groups.topology import _NAMES_COMMAND
from tests.groups.conftest import OPTIONS
from tests.groups.redis_cluster import Node, RedisCluster, RedisSentinels, running, wait_for
from tests.groups.test_redis_layer import Inbox, until
from tests.groups.test_redis_lost_replies import QUIET, ReplyDropper

WAIT = 10.0
#: How soon after the cluster (or the Sentinels) promoted a replica delivery must resume:
#: the subscriptions look again at least every second (FAILOVER_BACKOFF_CAP).
RESUME = 5.0

pytestmark = [
    pytest.mark.server,  # starts clusters and Sentinels: half a minute, not the unit layer's
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """A cluster for the tests that leave it whole (no kill)."""
    with running(RedisCluster()) as setup:
        yield setup


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    with running(RedisSentinels()) as setup:
        yield setup


def groups_on_each_master(cluster: RedisCluster, count: int = 1) -> dict[int, list[str]]:
    """``count`` group names per master: {master port: [group, ...]}."""
    found: dict[int, list[str]] = {master.port: [] for master in cluster.masters()}
    n = 0
    while any(len(names) < count for names in found.values()):
        group = f"room{n}"
        owner = cluster.owner(key_slot(f"dwebsocket:0:{{{group}}}".encode())).port
        if len(found[owner]) < count:
            found[owner].append(group)
        n += 1
    return found


def resumed(sender: RedisLayer, group: str, member: Inbox, timeout: float) -> float:
    """Send probes to ``group`` until ``member`` gets one; the seconds it took. Probes
    sent while the subscription was moving are lost (documented); later ones arrive."""
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < timeout:
        sender.send(group, f"probe {n}")
        n += 1
        try:
            message = member.get(timeout=0.1)
        except Exception:
            continue
        assert str(message).startswith("probe")
        return time.monotonic() - started
    raise AssertionError(f"delivery did not resume within {timeout} s")


def drain(sender: RedisLayer, group: str, member: Inbox) -> None:
    """Take the probes of :func:`resumed` still on their way to ``member`` (how many is
    not known: some were lost): ``sender`` sends one more message, a fence, and this
    waits (bounded) for it. ``sender``'s messages to a group reach a member in the order
    Redis published them, and each send returned once Redis had: every probe that will
    ever arrive comes before the fence, none after it. (A pause of 0.3 s without a probe
    was no proof of that: one delayed longer came among the messages sent next.)"""
    sender.send(group, "fence")
    deadline = time.monotonic() + WAIT
    while (message := member.get(timeout=max(0.0, deadline - time.monotonic()))) != "fence":
        assert str(message).startswith("probe"), message


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis-cluster://",
        "redis-cluster://127.0.0.1",
        "redis-cluster://127.0.0.1:1/3",
        "redis-sentinel://127.0.0.1:1",
        "redis-sentinel://127.0.0.1:1/a/b",
        "redis-sentinel://127.0.0.1:x/name",
        "redis://127.0.0.1:1/notadb",  # redis-py would use database 0
        "redis://127.0.0.1:1/1/2",
        "rediss://127.0.0.1:1/\u00b2",
    ],
)
def test_bad_urls_are_invalid_settings(url: str) -> None:
    # The check (and every handshake) reads it as the layer would: not only the scheme.
    problem = url_problem(url)
    assert problem is not None and problem.startswith("WEBSOCKET_GROUPS_URL ")
    with pytest.raises(InvalidSetting) as raised:
        RedisLayer(url, Registry())
    assert raised.value.check_id == "dwebsocket.E020"


def test_cluster_unreachable_at_start_is_an_outage_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No node answers: the layer is made, join returns at once, send delivers locally and
    raises only with fail_silently=False."""
    from tests.groups.redis_server import free_port

    layer = RedisLayer(f"redis-cluster://127.0.0.1:{free_port()}?{OPTIONS}", Registry())
    try:
        member = Inbox()
        with caplog.at_level(logging.WARNING, "dwebsocket.groups"):
            layer.join("room", member)
            layer.send("room", "local")
            assert member.get() == "local"
            until(lambda: "unreachable" in caplog.text)  # the reader may be the one to say it
        from dwebsocket.groups import GroupsUnavailable

        with pytest.raises(GroupsUnavailable):
            layer.send("room", "again", fail_silently=False)
    finally:
        layer.close()


def test_cluster_gone_after_start_is_an_outage_not_an_error(
    own_cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """Every node dies after the layer knew the cluster: a history group's send, a
    history read and presence are an outage as with one server -- nothing raised but
    GroupsUnavailable, and only when asked for. (redis-py's RedisClusterUnreachableError,
    not a RedisError, escaped them: a 500 from every view sending to a history group, or
    joining one, while the cluster was down.)"""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept": {"size": 10, "ttl": 60}}):
        a = layers(own_cluster.url)
        member = Inbox()
        a.join("kept", member)
        assert a.send("kept", "before") is not None
        assert member.get() == "before"
        for node in own_cluster.nodes:
            node.stop()
        assert a.send("kept", "during") is None
        assert member.get() == "during"  # this process's members, as in any outage
        with pytest.raises(GroupsUnavailable):
            a.send("kept", "strict", fail_silently=False)
        with pytest.raises(GroupsUnavailable):
            a.read("kept", 0, 10)
        with pytest.raises(GroupsUnavailable):
            a.presence("kept")


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
def test_cluster_send_to_a_hung_master_waits_one_socket_timeout(
    layers: Callable[[str], RedisLayer], history: bool
) -> None:
    """A group's master stops answering (SIGSTOP: a frozen host, a partition), and has
    no replica to take over: a send waits for it once, up to the socket timeout (1 s
    here), as with one server; the message reaches the other processes when it answers
    again. (redis-py's cluster client retried the timed-out command three times, learning
    the slots again and sleeping in between, and the plain send's fast path fell back to
    it after its own timeout: one send held its view some 15 s.)"""
    kept = {"room": {"size": 10, "ttl": 60}} if history else {}
    with (
        running(RedisCluster(replicas=0)) as own_cluster,
        override_settings(WEBSOCKET_GROUPS_HISTORY=kept),
    ):
        a, b = layers(own_cluster.url), layers(own_cluster.url)
        member = Inbox()
        b.join("room", member)
        a.send("room", "before")
        assert member.get() == "before"
        master = own_cluster.owner(key_slot(a.channel("room")))
        assert master.process is not None
        sending = threading.Thread(target=a.send, args=("room", "while hung"))
        master.process.send_signal(signal.SIGSTOP)
        try:
            sending.start()
            sending.join(WAIT)  # ten socket timeouts
            assert not sending.is_alive(), "send still waiting for the hung master"
        finally:
            master.process.send_signal(signal.SIGCONT)
            sending.join(WAIT)
        assert member.get() == "while hung"  # carried out once it answered


def test_cluster_send_whose_reply_was_lost_is_not_sent_again(
    layers: Callable[[str], RedisLayer],
) -> None:
    """The group's master ran the SPUBLISH, and the connection broke before its reply
    came back (a :class:`ReplyDropper` between them, which the master announces as its
    address): the send's fast path fell back to the cluster client's general way, which
    published the message a second time. It is sent once; the send counts as failed. The
    master answering still, it is no outage: the next send, at once, is published (it
    was held back, lost for the other processes)."""
    with running(RedisCluster(replicas=0)) as own_cluster:
        channel = b"dwebsocket:0:{room}"
        master = own_cluster.owner(key_slot(channel))
        dropper = ReplyDropper(master.port)
        try:
            master.command("CONFIG", "SET", "cluster-announce-port", str(dropper.port))
            wait_for(
                "every node to know the master by the dropper's port",
                lambda: all(
                    any(int(m[1]) == dropper.port for _, _, m, *_ in n.command("CLUSTER", "SLOTS"))
                    for n in own_cluster.live()
                ),
            )
            sender = layers(own_cluster.url)
            with contextlib.closing(master.client(socket_timeout=WAIT)) as client:
                pubsub = client.pubsub()
                pubsub.ssubscribe(channel)
                confirmed = pubsub.get_message(timeout=WAIT)
                assert confirmed is not None and confirmed["type"] == "ssubscribe"
                sender.send("room", "warm")  # the fast path's connection, through the dropper
                dropper.arm(b"SPUBLISH")
                with pytest.raises(GroupsUnavailable):
                    sender.send("room", "once", fail_silently=False)
                assert dropper.dropped.is_set()
                assert not sender.outage
                sender.send("room", "next", fail_silently=False)
                seen = []
                while (message := pubsub.get_message(timeout=QUIET)) is not None:
                    seen.append(decode(message["data"])[2])
                pubsub.close()
            assert seen == ["warm", "once", "next"]
        finally:
            dropper.close()


# -- Cluster --------------------------------------------------------------------------------


def test_cluster_delivers_between_processes_on_every_shard(
    cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    a, b = layers(cluster.url), layers(cluster.url)
    names = [group for groups in groups_on_each_master(cluster, 2).values() for group in groups]
    inboxes = {group: Inbox() for group in names}
    for group, inbox in inboxes.items():
        b.join(group, inbox)
    for i in range(5):
        for group in names:
            a.send(group, f"{group}:{i}" if i % 2 else f"{group}:{i}".encode())
    for group, inbox in inboxes.items():
        assert inbox.get_all(5) == [
            f"{group}:{i}" if i % 2 else f"{group}:{i}".encode() for i in range(5)
        ]
        inbox.assert_empty()
    # One subscription connection per master, each subscribed to its own groups only.
    subscription = b.subscriber
    assert isinstance(subscription, ClusterSubscription)
    shards = {shard.address: shard for shard in subscription._shards.values()}
    assert set(shards) == {m.address for m in cluster.masters()}
    for address, shard in shards.items():
        port = int(address.rpartition(":")[2])
        owned = {g for g in names if cluster.owner(key_slot(b.channel(g))).port == port}
        assert set(shard.subscribed) == owned


def test_cluster_senders_past_the_pool_wait_their_turn(
    cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """Every connection of the pool to a group's master is in use (32 senders at once):
    the next sender waits for one, as on one server (docs/groups.rst), and its message
    reaches every process. (A Cluster's node pools refused it at once, "Too many
    connections": the message reached this process only, and the shard's sends were held
    back as if it were down.)"""
    a, b = layers(cluster.url), layers(cluster.url)
    inbox = Inbox()
    b.join("busy", inbox)
    a.send("busy", "warm")  # a's client knows the slots
    assert inbox.get() == "warm"
    node = a.topology.client.get().nodes_manager.get_node_from_slot(key_slot(a.channel("busy")))
    pool = node.redis_connection.connection_pool
    named = ("PUBLISH",) if _NAMES_COMMAND else ()  # redis-py 5 wants the command
    taken = [pool.get_connection(*named) for _ in range(MAX_PUBLISH_CONNECTIONS)]

    def give_back() -> None:
        for connection in taken:
            pool.release(connection)

    timer = threading.Timer(0.3, give_back)  # while the send below waits: not asserted
    timer.start()
    try:
        a.send("busy", "waited", fail_silently=False)
    finally:
        timer.join(WAIT)
    assert inbox.get() == "waited"
    assert not a.outage


def test_cluster_process_receives_only_its_groups(
    cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """Sharded pub/sub, per-group channels: a process with no member in a group is not
    subscribed to it anywhere, so Redis sends it nothing of that group."""
    a, b = layers(cluster.url), layers(cluster.url)
    mine, theirs = Inbox(), Inbox()
    a.join("only-a", mine)
    b.join("only-b", theirs)
    received: list[bytes] = []
    original = a.receive_all
    a.receive_all = lambda messages: (  # type: ignore[method-assign]
        received.extend(channel for channel, _ in messages),
        original(messages),
    )[1]
    for i in range(20):
        b.send("only-b", f"b{i}")
        b.send("only-a", f"a{i}")
    assert theirs.get_all(20) == [f"b{i}" for i in range(20)]
    assert mine.get_all(20) == [f"a{i}" for i in range(20)]
    assert set(received) == {a.channel("only-a")}
    for master in cluster.masters():
        reply = master.command("PUBSUB", "SHARDNUMSUB", a.channel("only-b").decode())
        assert reply[1] in (0, 1)  # b's own subscription, never a's


def test_cluster_leave_unsubscribes_and_rejoin_subscribes(
    cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    a, b = layers(cluster.url), layers(cluster.url)
    inbox = Inbox()
    channel = a.channel("coming-and-going").decode()
    owner = cluster.owner(key_slot(channel.encode()))

    def subscribers() -> int:
        count: int = owner.command("PUBSUB", "SHARDNUMSUB", channel)[1]
        return count

    for _ in range(3):
        a.join("coming-and-going", inbox)
        assert subscribers() == 1
        b.send("coming-and-going", "hello")
        assert inbox.get() == "hello"
        a.leave("coming-and-going", inbox)
        until(lambda: subscribers() == 0)


def test_cluster_subscribes_per_slot_after_a_reconnection(
    own_cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """Many groups on one master, in many slots: the first subscription and the one after
    the connection is cut (CLIENT KILL) go out per slot (one SSUBSCRIBE across slots is
    refused with CROSSSLOT), and delivery to every group resumes."""
    a, b = layers(own_cluster.url), layers(own_cluster.url)
    port, names = next(iter(groups_on_each_master(own_cluster, 30).items()))
    master = own_cluster.by_port(port)
    inboxes = {group: Inbox() for group in names}
    for group, inbox in inboxes.items():
        b.join(group, inbox)
    master.command("CLIENT", "KILL", "TYPE", "pubsub")
    for group, inbox in inboxes.items():
        resumed(a, group, inbox, WAIT)
        drain(a, group, inbox)
    for group in names:
        a.send(group, "after")
    for inbox in inboxes.values():
        assert inbox.get() == "after"


def test_cluster_failover_resumes_delivery(
    own_cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """The master of a group's slot is killed; its replica is promoted: delivery of that
    group resumes within RESUME seconds of the promotion, with no call from anyone. The
    groups of the other masters never stop."""
    a, b = layers(own_cluster.url), layers(own_cluster.url)
    on_each = groups_on_each_master(own_cluster)
    victim_port, (group,) = next(iter(on_each.items()))
    others = [g for port, gs in on_each.items() if port != victim_port for g in gs]
    inbox, other_inboxes = Inbox(), {g: Inbox() for g in others}
    b.join(group, inbox)
    for g, other in other_inboxes.items():
        b.join(g, other)
    a.send(group, "before")
    assert inbox.get() == "before"

    killed_at = time.monotonic()
    own_cluster.kill(own_cluster.by_port(victim_port))
    promoted_at = time.monotonic()
    for g, other in other_inboxes.items():  # the other shards carry on meanwhile
        a.send(g, "meanwhile")
        assert other.get() == "meanwhile"
    took = resumed(a, group, inbox, RESUME)
    print(
        f"\n[cluster] promoted {promoted_at - killed_at:.2f} s after the kill; delivery "
        f"resumed {took:.2f} s after the promotion"
    )
    drain(a, group, inbox)
    for i in range(10):
        a.send(group, f"after {i}")
    assert inbox.get_all(10) == [f"after {i}" for i in range(10)]


def wait_subscribed_at(node: Node, layer: RedisLayer, group: str) -> None:
    """Wait until ``layer``'s subscription to ``group`` is on ``node`` (a slot moved)."""

    def subscribed() -> bool:
        reply = node.command("PUBSUB", "SHARDNUMSUB", layer.channel(group).decode())
        return bool(reply[1] == 1)

    wait_for("the subscription moved to the new master", subscribed, WAIT)


def test_cluster_group_moved_to_another_master_keeps_working(
    own_cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """Resharding: the slot of a group moves to another master (CLUSTER SETSLOT, as
    ``redis-cli --cluster reshard`` does); its subscription follows (the old master ends
    it with an sunsubscribe), and a sender whose map is stale is redirected (MOVED)."""
    a, b = layers(own_cluster.url), layers(own_cluster.url)
    inbox = Inbox()
    b.join("moving", inbox)
    a.send("moving", "before")
    assert inbox.get() == "before"
    slot = key_slot(b.channel("moving"))
    source = own_cluster.owner(slot)
    target = next(m for m in own_cluster.masters() if m is not source)
    own_cluster.move_slot(slot, target)

    wait_subscribed_at(target, b, "moving")
    for i in range(10):
        a.send("moving", f"after {i}")
    assert inbox.get_all(10) == [f"after {i}" for i in range(10)]
    inbox.assert_empty()


def test_cluster_slot_moved_while_another_refresh_runs_is_not_lost(
    layers: Callable[[str], RedisLayer],
) -> None:
    """The old master ends a moved slot's subscriptions while another thread refreshes
    the slot map (another shard's reader, the retry loop): the reader's own refresh
    returned at once, the one running had read the map before the move, and the group
    stayed unsubscribed for good, its messages lost without a word."""
    with running(RedisCluster(masters=3, replicas=0)) as setup:
        a, b = layers(setup.url), layers(setup.url)
        inbox = Inbox()
        b.join("moving", inbox)
        a.send("moving", "before")
        assert inbox.get() == "before"
        slot = key_slot(b.channel("moving"))
        target = next(m for m in setup.masters() if m is not setup.owner(slot))
        subscription = b.subscriber
        assert isinstance(subscription, ClusterSubscription)
        with subscription._refresh_lock:  # a refresh that read the map before the move
            setup.move_slot(slot, target)
            until(lambda: "moving" not in subscription.subscribed)

        wait_subscribed_at(target, b, "moving")
        a.send("moving", "after")
        assert inbox.get() == "after"


def test_cluster_slot_moved_while_no_seed_answers_is_subscribed_later(
    layers: Callable[[str], RedisLayer], caplog: pytest.LogCaptureFixture
) -> None:
    """The old master ends a moved slot's subscriptions, and the refresh that should route
    them again fails (no seed answers CLUSTER SLOTS for a moment; here the layer's user
    may not run it): the group stayed unsubscribed for good once the seeds answered
    again, its messages lost without a word. It is routed again as soon as they do."""
    with running(RedisCluster(masters=3, replicas=0)) as setup:
        user = ["ACL", "SETUSER", "layer", "on", ">pw", "~*", "&*", "+@all"]
        for node in setup.masters():
            node.command(*user)
        url = setup.url.replace("redis-cluster://", "redis-cluster://layer:pw@")
        a, b = layers(url), layers(url)
        inbox = Inbox()
        b.join("moving", inbox)
        a.send("moving", "before")
        assert inbox.get() == "before"
        slot = key_slot(b.channel("moving"))
        target = next(m for m in setup.masters() if m is not setup.owner(slot))
        subscription = b.subscriber
        assert isinstance(subscription, ClusterSubscription)
        for node in setup.masters():
            node.command("ACL", "SETUSER", "layer", "-cluster")
        with caplog.at_level(logging.DEBUG, "dwebsocket.groups"):
            setup.move_slot(slot, target)
            until(lambda: "slots not refreshed" in caplog.text)
        for node in setup.masters():
            node.command("ACL", "SETUSER", "layer", "+cluster")

        wait_subscribed_at(target, b, "moving")
        a.send("moving", "after")
        assert inbox.get() == "after"


# -- Sentinel -------------------------------------------------------------------------------


def test_sentinel_delivers_between_processes(
    sentinels: RedisSentinels, layers: Callable[[str], RedisLayer]
) -> None:
    a, b = layers(sentinels.url), layers(sentinels.url)
    inbox = Inbox()
    b.join("room", inbox)
    for i in range(10):
        a.send("room", f"m{i}")
    assert inbox.get_all(10) == [f"m{i}" for i in range(10)]
    master = sentinels.current_master()
    reply = master.command("PUBSUB", "NUMSUB", b.channel("room").decode())
    assert reply[1] == 1


def test_sentinel_failover_resumes_delivery(
    sentinels: RedisSentinels, layers: Callable[[str], RedisLayer]
) -> None:
    """The master is killed; the Sentinels promote the replica: both processes find it
    (publishing and subscribing) and delivery resumes within RESUME seconds of the
    promotion."""
    a, b = layers(sentinels.url), layers(sentinels.url)
    inbox = Inbox()
    b.join("room", inbox)
    a.send("room", "before")
    assert inbox.get() == "before"
    killed_at = time.monotonic()
    new = sentinels.kill_master()
    promoted_at = time.monotonic()
    took = resumed(a, "room", inbox, RESUME)
    print(
        f"\n[sentinel] promoted {promoted_at - killed_at:.2f} s after the kill; delivery "
        f"resumed {took:.2f} s after the promotion"
    )
    drain(a, "room", inbox)
    for i in range(10):
        a.send("room", f"after {i}")
    assert inbox.get_all(10) == [f"after {i}" for i in range(10)]
    reply = new.command("PUBSUB", "NUMSUB", b.channel("room").decode())
    assert reply[1] == 1


def test_sentinel_unreachable_is_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    from tests.groups.redis_server import free_port

    layer = RedisLayer(f"redis-sentinel://127.0.0.1:{free_port()}/dws?{OPTIONS}", Registry())
    try:
        member = Inbox()
        with caplog.at_level(logging.WARNING, "dwebsocket.groups"):
            layer.join("room", member)
            layer.send("room", "local")
            assert member.get() == "local"
            until(lambda: "unreachable" in caplog.text)  # the reader may be the one to say it
    finally:
        layer.close()


@pytest.mark.parametrize(("value", "tls"), [("false", False), ("no", False), ("true", True)])
def test_sentinel_ssl_option_reads_as_a_boolean(value: str, tls: bool) -> None:
    """``?ssl=false`` turned TLS on: redis-py's Sentinel pool took the string for true,
    and every connection to a plain master failed its TLS handshake."""
    from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    from tests.groups.redis_server import free_port

    url = f"redis-sentinel://127.0.0.1:{free_port()}/dws?ssl={value}&{OPTIONS}"
    assert url_problem(url) is None
    layer = RedisLayer(url, Registry())
    try:
        expected = SentinelManagedSSLConnection if tls else SentinelManagedConnection
        assert layer.topology.pool.connection_class is expected
    finally:
        layer.close()


def test_sentinel_master_name_is_percent_decoded() -> None:
    """The master name is the URL's path, read as a URL's path is: ``my%2Dmaster`` names
    ``my-master`` (it was asked for literally, ``my%2Dmaster``, which no Sentinel knew)."""
    from tests.groups.redis_server import free_port

    layer = RedisLayer(
        f"redis-sentinel://127.0.0.1:{free_port()}/my%2Dmaster?{OPTIONS}", Registry()
    )
    try:
        assert layer.topology.service == "my-master"
    finally:
        layer.close()
