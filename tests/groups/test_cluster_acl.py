"""An ACL user that may not use some groups' channels, on a real Redis Cluster: what
``test_redis_layer.py``'s ACL tests check on one server, where the Cluster does it its own
way (sharded pub/sub, a subscription per master)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings
from redis.crc import key_slot

from dwebsocket.groups import GroupsUnavailable
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.test_redis_layer import WAIT, Inbox

pytestmark = pytest.mark.server  # starts a cluster: seconds, not the unit layer's


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """A cluster whose every node knows ACL user "app" (password "pw"), which may use the
    channels of groups named "open..." alone (and every key)."""
    with running(RedisCluster()) as setup:
        for node in setup.nodes:  # ACLs are each node's own
            node.command(
                "ACL", "SETUSER", "app", "on", ">pw", "+@all", "~*",
                "resetchannels", "&dwebsocket:0:{open*",
            )  # fmt: skip
        yield setup


def as_app(cluster: RedisCluster) -> str:
    return cluster.url.replace("://", "://app:pw@", 1)


def in_slot_of(group: str) -> str:
    """An "open..." group whose channel is in the slot of ``group``'s."""
    slot = key_slot(f"dwebsocket:0:{{{group}}}".encode())
    return next(
        name
        for name in (f"open{n}" for n in itertools.count())
        if key_slot(f"dwebsocket:0:{{{name}}}".encode()) == slot
    )


def subscription_ids(cluster: RedisCluster, group: str) -> list[str]:
    """The ids of user app's subscription connections on the master of ``group``'s slot."""
    master = cluster.owner(key_slot(f"dwebsocket:0:{{{group}}}".encode()))
    listed = master.command("CLIENT", "LIST", "TYPE", "pubsub")
    return [line.split()[0][3:] for line in listed.splitlines() if " user=app " in line]


def arrives(sender: RedisLayer, group: str, member: Inbox) -> bool:
    """Send probes to ``group`` until ``member`` gets one (True), for up to WAIT seconds:
    probes sent before the subscription was made again reach no member here."""
    deadline = time.monotonic() + WAIT
    for n in itertools.count():
        if time.monotonic() > deadline:
            return False
        sender.send(group, f"probe {n}")
        try:
            member.get(timeout=0.1)
        except Exception:
            continue
        return True
    raise AssertionError  # pragma: no cover - itertools.count() does not end


def test_a_refused_channel_leaves_the_other_groups_of_its_slot_subscribed(
    cluster: RedisCluster,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The subscription connection to a master subscribes again to all its groups at once
    (here after Redis closed it): the one whose channel the ACL refuses is refused alone,
    and the other group of its slot is subscribed. (One SSUBSCRIBE per slot: Redis refused
    it whole, and the other group's messages from other processes no longer came.)"""
    opened = in_slot_of("shut")
    a, b = layers(as_app(cluster)), layers(cluster.url)  # b: all rights
    here, there, shut = Inbox(), Inbox(), Inbox()
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    a.join(opened, here)
    b.join(opened, there)
    a.join("shut", shut)  # returns: refused
    assert "shut" not in a.subscriber.subscribed
    b.send(opened, "before")
    assert here.get() == there.get() == "before"
    [connection] = subscription_ids(cluster, "shut")
    master = cluster.owner(key_slot(f"dwebsocket:0:{{{opened}}}".encode()))
    master.command("CLIENT", "KILL", "ID", connection)
    assert arrives(b, opened, here), "the subscription to the open group was not made again"
    assert subscription_ids(cluster, "shut") not in ([], [connection])
    a.send("shut", "here only")
    assert shut.get() == "here only"
    assert not a.outage
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    errors = [text for level, text in said if level == "ERROR"]
    assert len(errors) == 2 and all("'shut'" in text for text in errors), said
    assert "subscri" in errors[0] and "message was not published" in errors[1]
    assert not any("unreachable" in text for _, text in said), said


def test_a_history_group_whose_channel_is_refused_keeps_none_of_its_messages(
    cluster: RedisCluster, layers: Callable[[str], RedisLayer]
) -> None:
    """The history script's SPUBLISH refused: the entry it appended is taken back, its
    offset too, so the history and what members get live never disagree."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"shut-kept": {"size": 10, "ttl": 60}}):
        a, b = layers(as_app(cluster)), layers(cluster.url)
        there = Inbox()
        b.join("shut-kept", there)
        first = b.send("shut-kept", "first")
        assert first is not None
        epoch = first.partition(":")[0]
        with pytest.raises(GroupsUnavailable):
            a.send("shut-kept", "refused", fail_silently=False)
        assert b.send("shut-kept", "second") == f"{epoch}:2"
        assert [there.get(), there.get()] == ["first", "second"]
        page = b.read("shut-kept", 0, 10)
        assert (page.head, page.entries) == (2, [(1, "first"), (2, "second")])
