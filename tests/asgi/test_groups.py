"""Groups between WSGI and ASGI processes: one real redis-server, a gevent.pywsgi process
and a uvicorn process (sync and async views); a group message sent through either reaches
the members connected through the other (the same Redis wire format). And the order in
which a member's client gets the group's messages and its view's own sends, in-process
and over Redis (docs/groups.rst, "Order"). And clients that read a history replay slowly
hold up no other session's joins (docs/recovery.rst)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.test import override_settings
from websockets.sync.client import ClientConnection, connect

from dwebsocket.groups.memory import Registry
from dwebsocket.groups.redis import RedisLayer
from dwebsocket.protocol.handshake import build_request, generate_key, parse_response
from tests.asgi.conftest import KINDS, asgi_servers, start_asgi
from tests.groups.conftest import redis_server  # noqa: F401 - the fixture
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


ROUNDS = 20


def rounds_of(client: ClientConnection) -> list[str | bytes]:
    """Ask a ``then-direct`` view for :data:`ROUNDS` rounds; what its client receives."""
    client.send(str(ROUNDS))
    return [client.recv(timeout=TIMEOUT) for _ in range(3 * ROUNDS)]


def then_direct_path(param: str, group: str) -> str:
    """The ``then-direct`` URL of ``param``'s kind: ``tests.groups.views.member`` (gevent's,
    a sync ASGI server's) or ``tests.asgi.views.room`` (async), with ``then_direct``."""
    if param.endswith("-async"):
        return f"/room/{group}/then-direct/"
    return f"/group/{group}/then-direct/"


SENT = [f"{i} {what}" for i in range(ROUNDS) for what in ("group", "group again", "direct")]


@pytest.mark.parametrize(
    "param", ["gevent", *(f"{name}-{kind}" for name in asgi_servers() for kind in KINDS)]
)
def test_in_process_a_views_group_messages_reach_its_client_before_what_it_sends_next(
    tmp_path: Path, param: str
) -> None:
    """With the in-process layer (``memory://``, the default), a view in a group sends to
    the group (``groups.send``, ``groups.asend``), then to its own connection: its client
    gets the group's messages first, in the order the view sent everything, on the
    default backend (gevent) and on every ASGI server, sync and async views alike. Under
    ASGI the connection's own ``send`` went out before the group's messages queued for
    it (``deliver``) just before."""
    if param == "gevent":
        server = start_server("gevent", tmp_path / "gevent.log")
    else:
        name, kind = param.rsplit("-", 1)
        server = start_asgi(name, kind, tmp_path / f"{param}.log")
    try:
        with contextlib.ExitStack() as stack:
            client = member(stack, server, then_direct_path(param, "ordered"))
            assert rounds_of(client) == SENT
    finally:
        server.stop()


@pytest.mark.skipif("uvicorn" not in asgi_servers(), reason="uvicorn not chosen")
def test_over_redis_a_views_group_messages_come_back_to_it_through_redis(
    processes: dict[str, ServerProcess],
) -> None:
    """With Redis, a group message reaches every member, the sender's own connection
    included, when it comes back through the process's subscription (docs/groups.rst):
    the group's messages keep their order, the connection's own sends theirs, but a send
    right after ``groups.send`` may reach the client before the group's message does
    (docs/groups.rst, "Order")."""
    for param, server in processes.items():
        with contextlib.ExitStack() as stack:
            client = member(stack, server, then_direct_path(param, f"ordered-{param}"))
            got = rounds_of(client)
        assert sorted(got) == sorted(SENT), param
        assert [m for m in got if "group" in str(m)] == [m for m in SENT if "group" in m]
        assert [m for m in got if "direct" in str(m)] == [m for m in SENT if "direct" in m]


#: A history group for the replay tests, and what a task worker (this process) kept in it:
#: more than the sockets of a client that reads nothing take.
FEED_HISTORY = {"feed": {"size": 1000, "ttl": 600}}
BACKLOG = 40
BACKLOG_SIZE = 256 << 10


def replayed_to_slowly(server: ServerProcess, path: str) -> socket.socket:
    """A client that opens ``path`` (a join that replays history to it), reads the 101 and
    nothing more: the replay to it waits for the server to take each message, for as long
    as it stays connected."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect((server.host, server.port))
        key = generate_key()
        sock.sendall(build_request(f"{server.host}:{server.port}", path, key=key))
        data = b""
        while (parsed := parse_response(data, key)) is None:
            chunk = sock.recv(1024)
            assert chunk, "the server closed the connection during the handshake"
            data += chunk
        assert parsed[0] == 101
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.skipif("uvicorn" not in asgi_servers(), reason="uvicorn not chosen")
@pytest.mark.parametrize("kind", KINDS)
def test_clients_that_read_a_replay_slowly_hold_up_no_other_session(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """docs/recovery.rst: a connection that reads slowly slows its replay, not the group.
    More clients than the event loop's default executor has threads (``min(32, CPUs +
    4)``) join a history group with a position far back and read nothing: each one's
    ``join`` blocks, sending the replay at its client's pace. Every one of them still
    gets its 101, and another client still joins a group, and its message goes to the
    group through Redis and back. An async view's ``await ws.join()`` ran in that executor,
    shared by the whole process (``groups.asend`` and ``users.asend`` over Redis too): the
    joins of the clients beyond its size never started (no 101), and nobody else's
    either, until a slow client left or its send timed out a minute later. It runs in the
    session's own worker thread now, as a sync view's join runs in the view's."""
    redis: RedisServer = request.getfixturevalue("redis_server")
    settings = {
        "WEBSOCKET_GROUPS_URL": redis.url,
        "WEBSOCKET_GROUPS_HISTORY": FEED_HISTORY,
    }
    server = start_asgi("uvicorn", kind, tmp_path / "uvicorn.log", **settings)
    worker = RedisLayer(redis.url, Registry())
    slow: list[socket.socket] = []
    try:
        with override_settings(WEBSOCKET_GROUPS_HISTORY=FEED_HISTORY):
            first = worker.send("feed", "first", fail_silently=False)
            for _ in range(BACKLOG):
                worker.send("feed", "x" * BACKLOG_SIZE, fail_silently=False)
        assert first is not None
        follow = "/room/feed/follow/" if kind == "async" else "/group/feed/follow/"
        query = urlencode({"dws_since": json.dumps({"feed": first})})
        for n in range(min(32, (os.cpu_count() or 1) + 4) + 1):
            try:
                slow.append(replayed_to_slowly(server, f"{follow}?{query}"))
            except TimeoutError:
                raise AssertionError(f"no 101 for the slow client #{n + 1}") from None
        with contextlib.ExitStack() as stack:
            other = member(stack, server, "/room/other/" if kind == "async" else "/group/other/")
            other.send("through Redis")
            assert other.recv(timeout=TIMEOUT) == "through Redis"
    finally:
        for sock in slow:
            sock.close()
        worker.close()
        server.stop()


def status(server: ServerProcess, group: str) -> dict[str, int]:
    """``group``'s members and present sockets in ``server``'s process."""
    url = server.url(f"/group/{group}/status/", scheme="http")
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        answer: dict[str, int] = json.loads(response.read())
    return answer


@pytest.mark.skipif("uvicorn" not in asgi_servers(), reason="uvicorn not chosen")
def test_an_async_view_joining_with_the_groups_function_is_the_connection_joining(
    tmp_path: Path,
) -> None:
    """docs/groups.rst: ``groups.join(group, websocket)`` is "the same as the methods, for
    code that holds a WebSocket"; an ``async def`` view holds its ``request.websocket``.
    Joined that way (from a worker thread, with ``since`` and ``presence``), the client
    gets the history it missed, and the connection leaves the group and its presence
    when it closes, as with ``await ws.join()``. The group took the async object for a
    member of its own: the replay went to its ``send()``, a coroutine function, called
    and never awaited (nothing sent, ``recovered`` all the same), and
    ``websocket_closed``, which names the sync object, left the member and its presence
    in place."""
    history = {"fn-feed": {"size": 100, "ttl": 600}}
    server = start_asgi(
        "uvicorn", "async", tmp_path / "uvicorn.log", WEBSOCKET_GROUPS_HISTORY=history
    )
    path = "/room/fn-feed/by-function/?dws=1"
    try:
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(
                connect(server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None)
            )
            assert json.loads(first.recv(timeout=TIMEOUT))["dws"] == "joined"
            assert json.loads(first.recv(timeout=TIMEOUT)) == {"recovered": False, "missed": 0}
            positions = []
            for text in ("a", "b", "c"):
                first.send(text)
                got = json.loads(first.recv(timeout=TIMEOUT))
                assert got["d"] == text
                positions.append(got["p"])
            since = urlencode({"dws_since": json.dumps({"fn-feed": positions[0]})})
            again = stack.enter_context(
                connect(
                    server.url(f"{path}&{since}"),
                    open_timeout=TIMEOUT,
                    close_timeout=TIMEOUT,
                    proxy=None,
                )
            )
            replayed = [json.loads(again.recv(timeout=TIMEOUT))]
            while "dws" in replayed[-1]:  # up to the view's report
                replayed.append(json.loads(again.recv(timeout=TIMEOUT)))
            assert [(m.get("dws"), m.get("d"), m.get("p")) for m in replayed] == [
                ("msg", "b", positions[1]),
                ("msg", "c", positions[2]),
                ("joined", None, positions[2]),
                (None, None, None),
            ]
            assert replayed[-1] == {"recovered": True, "missed": 2}
            now = status(server, "fn-feed")
            assert (now["members"], now["present"]) == (2, 2)
        deadline = time.monotonic() + TIMEOUT
        while (now := status(server, "fn-feed"))["members"] or now["present"]:
            assert time.monotonic() < deadline, f"still in the group after the close: {now}"
            time.sleep(0.05)
    finally:
        server.stop()
