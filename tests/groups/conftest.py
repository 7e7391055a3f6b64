from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
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
def worker(redis_server: RedisServer) -> Iterator[RedisLayer]:
    """A task worker publishing through the private Redis, with the servers' history."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY=FEED_HISTORY):
        layer = RedisLayer(redis_server.url, Registry())
        try:
            yield layer
        finally:
            layer.close()
