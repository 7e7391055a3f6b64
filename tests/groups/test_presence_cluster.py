"""Presence and group commands over a real Redis Cluster and real Sentinels: the scripts
run in the slot of the group's hash tag and publish (events, commands) with the
topology's command -- SPUBLISH on a Cluster, to the group's channel in that slot."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.groups import control
from dwebsocket.groups.memory import Member, Registry
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, RedisSentinels, require
from tests.groups.test_presence_redis import join, leave, who
from tests.groups.test_redis_layer import Inbox

pytestmark = pytest.mark.server  # starts a cluster or Sentinels for each test

OPTIONS = "?socket_timeout=2&socket_connect_timeout=2"
WAIT = 10.0


@pytest.fixture(params=["cluster", "sentinel"])
def layers(request: pytest.FixtureRequest) -> Iterator[Callable[[], RedisLayer]]:
    require()
    setup: Any = RedisCluster() if request.param == "cluster" else RedisSentinels()
    setup.start()
    made: list[RedisLayer] = []

    def make() -> RedisLayer:
        layer = RedisLayer(setup.url + OPTIONS, Registry())
        made.append(layer)
        return layer

    try:
        with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=1.0):
            yield make
    finally:
        for layer in made:
            layer.close()
        groups.reset()
        setup.close()


def test_presence_and_events_across_processes(layers: Callable[[], RedisLayer]) -> None:
    one, two = layers(), layers()
    for group in ("room", "lobby"):  # two groups: on a Cluster, most likely two slots
        watcher = Inbox()
        one.join(group, watcher)
        one.registry.presence.listen(group, watcher)
        tabs = [Inbox(), Inbox()]
        join(one, tabs[0], "alice", group)
        assert json.loads(watcher.get())["presence"] == "join"
        join(two, tabs[1], "alice", group)  # the same user in the other process
        assert who(one, group) == who(two, group) == {"user:alice": 2}
        leave(one, tabs[0], group)
        watcher.assert_empty()
        leave(two, tabs[1], group)
        event = json.loads(watcher.get())
        assert (event["presence"], event["user"], event["group"]) == ("leave", "alice", group)
        assert who(one, group) == {}


def test_commands_reach_the_members_of_every_process(layers: Callable[[], RedisLayer]) -> None:
    got: queue.Queue[tuple[str, int, dict[str, Any]]] = queue.Queue()

    def record(group: str, members: list[Member], command: dict[str, Any]) -> None:
        got.put((group, len(members), command))

    control.register("test-record", record)
    one, two = layers(), layers()
    two.join("dwebsocket.user.7", Inbox())
    two.join("dwebsocket.user.7", Inbox())
    one.control("dwebsocket.user.7", control.encode("test-record", n=1))
    assert got.get(timeout=WAIT) == ("dwebsocket.user.7", 2, {"op": "test-record", "n": 1})
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)  # once, and none for the sender's process (no member there)


def test_a_command_is_remembered_for_a_member_that_joins_late(
    layers: Callable[[], RedisLayer],
) -> None:
    """A command is kept in its group's slot (written before it is published): another
    process reads it with its age, for its group only."""
    one, two = layers(), layers()
    one.control("dwebsocket.user.7", control.encode("check"))
    one.control("dwebsocket.session.abc", control.encode("close", code=4001, reason=""))
    [(payload, ago)] = two.recent_controls("dwebsocket.user.7", control.MEMORY)
    assert json.loads(payload) == {"op": "check"} and 0 <= ago < WAIT
    [(payload, _)] = two.recent_controls("dwebsocket.session.abc", control.MEMORY)
    assert json.loads(payload)["code"] == 4001
    assert two.recent_controls("dwebsocket.user.8", control.MEMORY) == []
