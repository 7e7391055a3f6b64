from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.groups import redis as redis_layer
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.redis_server import RedisServer
from tests.requirements import REDIS_SETUP, executable


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test (it may stop and restart it)."""
    executable("redis-server", REDIS_SETUP)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        groups.reset()  # the layer goes first: no "unreachable" warning at teardown
        server.close()


#: The history the clients' tests give their servers and their task worker: group "feed".
FEED_HISTORY = {"feed": {"size": 10_000, "ttl": 600}}


@pytest.fixture
def long_first_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers' first backoff pause after a failure as long as their longest
    (``BACKOFF_CAP``, 5 s): the calls a test makes next surely fall in it, which the 0.1 s
    one did not promise on a loaded machine (a call came after it and was tried, not held
    back)."""
    monkeypatch.setattr(redis_layer, "BACKOFF_BASE", redis_layer.BACKOFF_CAP)


@pytest.fixture
def worker(redis_server: RedisServer) -> Iterator[RedisLayer]:
    """A task worker publishing through the private Redis, with the servers' history."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY=FEED_HISTORY):
        layer = RedisLayer(redis_server.url, Registry())
        try:
            yield layer
        finally:
            layer.close()


#: What the layers of the Cluster and Sentinel tests connect with: a second, not minutes.
OPTIONS = "socket_timeout=1&socket_connect_timeout=1"


@pytest.fixture
def layers() -> Iterator[Callable[[str], RedisLayer]]:
    """Makes layers on a URL (with :data:`OPTIONS`); closes every one at the end."""
    made: list[RedisLayer] = []

    def make(url: str) -> RedisLayer:
        layer = RedisLayer(f"{url}?{OPTIONS}", Registry())
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster for one test, which may kill a master or move slots."""
    with running(RedisCluster()) as setup:
        yield setup
