from __future__ import annotations

from collections.abc import Iterator

import pytest

from dwebsocket import groups
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
