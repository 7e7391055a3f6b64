"""Groups between WSGI and ASGI processes: one real redis-server, a gevent.pywsgi process
and a uvicorn process (sync and async views); a group message sent through either reaches
the members connected through the other (the same Redis wire format)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.asgi.conftest import asgi_servers, start_asgi
from tests.groups.redis_server import RedisServer
from tests.servers import ServerProcess, start_server
from tests.wire import TIMEOUT

pytestmark = pytest.mark.server


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, ServerProcess]]:
    redis = RedisServer()
    redis.start()
    settings = {"WEBSOCKET_GROUPS_URL": redis.url}
    started: dict[str, ServerProcess] = {}
    try:
        started["gevent"] = start_server("gevent", tmp_path / "gevent.log", settings=settings)
        for kind in ("sync", "async"):
            started[f"uvicorn-{kind}"] = start_asgi(
                "uvicorn", kind, tmp_path / f"uvicorn-{kind}.log", **settings
            )
        yield started
    finally:
        for server in started.values():
            server.stop()
        redis.close()


def member(stack: contextlib.ExitStack, server: ServerProcess, path: str) -> ClientConnection:
    client = stack.enter_context(
        connect(server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None)
    )
    assert client.recv(timeout=TIMEOUT) == "joined"
    return client


@pytest.mark.skipif("uvicorn" not in asgi_servers(), reason="uvicorn not chosen")
def test_group_messages_cross_between_gevent_and_uvicorn(
    processes: dict[str, ServerProcess],
) -> None:
    with contextlib.ExitStack() as stack:
        # The same group through each process: gevent's sync view (tests/groups/views.py),
        # uvicorn's sync view (the same), and uvicorn's async view (groups.asend).
        on_gevent = member(stack, processes["gevent"], "/group/room/")
        on_uvicorn = member(stack, processes["uvicorn-sync"], "/group/room/")
        on_uvicorn_async = member(stack, processes["uvicorn-async"], "/room/room/")
        everyone = [on_gevent, on_uvicorn, on_uvicorn_async]
        for sender, text in [
            (on_gevent, "from gevent"),
            (on_uvicorn, "from uvicorn, sync"),
            (on_uvicorn_async, "from uvicorn, async"),
        ]:
            sender.send(text)
            for client in everyone:
                assert client.recv(timeout=TIMEOUT) == text
        on_uvicorn_async.send(b"\x00binary\xff")
        for client in everyone:
            assert client.recv(timeout=TIMEOUT) == b"\x00binary\xff"
