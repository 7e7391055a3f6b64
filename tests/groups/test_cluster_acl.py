"""An ACL user that may not use some groups' channels, on a real Redis Cluster: what
``test_redis_layer.py``'s ACL tests check on one server, where the Cluster does it its own
way (sharded pub/sub, a subscription per master)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings

from dwebsocket.groups import GroupsUnavailable
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.test_redis_layer import Inbox

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
