from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dwebsocket import groups
from tests.groups.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test (it may stop and restart it)."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        groups.reset()  # the layer goes first: no "unreachable" warning at teardown
        server.close()
