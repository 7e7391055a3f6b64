"""What the shared suite does not cover under ASGI: the caps, a client that vanishes (nothing
leaks: threads, tasks, sessions counted before and after), the Origin check's status on
every server, and async views outside ASGI (never an unawaited coroutine)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect

from dwebsocket.backends.asgi.connection import BACKLOG_MESSAGES
from dwebsocket.backends.asgi.websocket import SIGNAL_THREADS
from dwebsocket.limits import RETRY_AFTER
from tests.asgi.conftest import HYPERCORN_PIPELINED, KINDS, asgi_servers, start_asgi
from tests.defects import DefectShown, check
from tests.servers import ServerProcess, start_server
from tests.wire import (
    TIMEOUT,
    RawClient,
    masked,
    read_http_response,
    read_until_eof,
    upgrade_request,
)

SERVERS = [f"{name}-{kind}" for name in asgi_servers() for kind in KINDS]
#: The status a refused handshake gets: the view's where the server has the
#: websocket.http.response extension, else ASGI's 403.
NO_HTTP_RESPONSE = {"daphne"}


def ws(server: ServerProcess, path: str, **kwargs: Any) -> ClientConnection:
    return connect(
        server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None, **kwargs
    )


def counts(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(server.url("/counts/", "http"), timeout=TIMEOUT) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def refused(server: ServerProcess, path: str, **kwargs: Any) -> Response:
    with pytest.raises(InvalidStatus) as info:
        ws(server, path, **kwargs).close()
    return info.value.response


def refused_status(server: ServerProcess, path: str, **kwargs: Any) -> int:
    return refused(server, path, **kwargs).status_code


def assert_over_the_cap(server: ServerProcess, name: str) -> None:
    """The next handshake is refused as docs/settings.rst says: 503 with ``Retry-After``
    (daphne: its bare 403, docs/asgi.rst)."""
    response = refused(server, "/echo/")
    if name in NO_HTTP_RESPONSE:
        assert response.status_code == 403
    else:
        assert response.status_code == 503
        assert response.headers.get("Retry-After") == str(RETRY_AFTER)


@pytest.fixture
def started(tmp_path: Path) -> Any:
    servers: list[ServerProcess] = []

    def start(param: str, **settings: object) -> ServerProcess:
        name, kind = param.rsplit("-", 1)
        srv = start_asgi(name, kind, tmp_path / f"{param}-{len(servers)}.log", **settings)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_origin_check_and_connection_cap(started: Callable[..., ServerProcess], param: str) -> None:
    server = started(param, WEBSOCKET_MAX_CONNECTIONS=1)
    name = param.rsplit("-", 1)[0]
    assert refused_status(server, "/echo/", origin="http://evil.example") == 403
    with ws(server, "/echo/", origin=f"http://127.0.0.1:{server.port}") as first:
        first.send("one")
        assert first.recv(timeout=TIMEOUT) == "one"
        assert_over_the_cap(server, name)
    # The slot is given back when the session ends.
    deadline = time.monotonic() + TIMEOUT
    while counts(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    with ws(server, "/echo/") as again:
        again.send("two")
        assert again.recv(timeout=TIMEOUT) == "two"


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_sync_views_hold_at_most_websocket_asgi_threads(
    started: Callable[..., ServerProcess], name: str
) -> None:
    server = started(f"{name}-sync", WEBSOCKET_ASGI_THREADS=2)
    with ws(server, "/echo/") as one, ws(server, "/echo/") as two:
        for client in (one, two):
            client.send("held")
            assert client.recv(timeout=TIMEOUT) == "held"
        assert counts(server)["sync_sessions"] == 2
        # Over the cap: refused at once, never queued behind the threads.
        assert_over_the_cap(server, name)
    deadline = time.monotonic() + TIMEOUT
    while counts(server)["sync_sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    with ws(server, "/echo/") as three:
        three.send("again")
        assert three.recv(timeout=TIMEOUT) == "again"


MIDDLEWARE = "dwebsocket.middleware.WebSocketMiddleware"
#: How an ``async def`` view gets its session: the URL, and the MIDDLEWARE setting.
ASYNC_VIA = {
    "decorator": ("/echo/", []),
    "middleware": ("/marked-echo/", [MIDDLEWARE]),
    # The decorator's session inside the middleware's request.
    "both": ("/echo/", [MIDDLEWARE]),
}


@pytest.mark.server
@pytest.mark.parametrize("via", ASYNC_VIA)
@pytest.mark.parametrize("name", asgi_servers())
def test_async_views_hold_no_thread(
    started: Callable[..., ServerProcess], name: str, via: str
) -> None:
    """Not a WEBSOCKET_ASGI_THREADS slot, and not an OS thread either: the thread that ran
    the handshake's sync code (request_started) is given back while the session waits
    (until 2026-12-05 every async session kept one, asgiref's per-request executor), and
    so it is for a view whose session ``WebSocketMiddleware`` runs (until 2026-12-06 that
    one held its worker thread for the whole session, and no slot: the sync
    ``process_view`` ran it with ``async_to_sync``)."""
    path, middleware = ASYNC_VIA[via]
    server = started(f"{name}-async", WEBSOCKET_ASGI_THREADS=0, MIDDLEWARE=middleware)
    with ws(server, path) as warm:  # the loop's and Django's thread pools
        warm.send("warm")
        assert warm.recv(timeout=TIMEOUT) == "warm"
    before = settle(server, lambda now: now["sessions"] == 0)["threads"]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws(server, path)) for _ in range(20)]
        for client in clients:
            client.send("no thread")
            assert client.recv(timeout=TIMEOUT) == "no thread"
        now = settle(server, lambda now: now["threads"] <= before)
        assert now["threads"] <= before, (before, now)
        assert now["sessions"] == 20 and now["sync_sessions"] == 0, now
        for client in clients:  # and the sessions go on
            client.send("still here")
            assert client.recv(timeout=TIMEOUT) == "still here"


@pytest.mark.server
@pytest.mark.skipif("uvicorn" not in asgi_servers(), reason="uvicorn not chosen")
@pytest.mark.parametrize("kind", KINDS)
def test_slow_websocket_opened_receivers_hold_up_no_other_handshake(
    started: Callable[..., ServerProcess], kind: str
) -> None:
    """Connections whose ``websocket_opened`` receivers wait (users' join of a user's
    group waits for Redis to confirm the subscription, up to the socket timeout; a
    site's receiver that writes a row) hold up their own session, not the others'
    handshakes. An async view's accept ran the session's cookies and those receivers in
    the process's pool of ``SIGNAL_THREADS`` signal threads: that many connections whose
    receivers waited, and no other async view in the process got its 101 (nor its
    ``websocket_closed``) until one returned. They run in the session's worker thread
    now, as a sync view's run in the view's."""
    server = started(f"uvicorn-{kind}")
    gate = uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        try:
            held = [
                stack.enter_context(ws(server, f"/echo/?open_gate={gate}"))
                for _ in range(SIGNAL_THREADS)
            ]
            try:
                other = stack.enter_context(ws(server, "/echo/"))
            except TimeoutError:
                raise AssertionError("no 101 while the other receivers wait") from None
            other.send("not held up")
            assert other.recv(timeout=TIMEOUT) == "not held up"
        finally:
            with urllib.request.urlopen(
                server.url(f"/release/?id={gate}", "http"), timeout=TIMEOUT
            ):
                pass
        for client in held:  # and the held ones go on once their receivers returned
            client.send("released")
            assert client.recv(timeout=TIMEOUT) == "released"


@pytest.mark.server
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
@pytest.mark.parametrize("name", asgi_servers())
def test_a_task_group_whose_tasks_found_the_client_gone_logs_no_error(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """An async view running a reader and a ticker in a ``TaskGroup``: when the client
    leaves, the ticker's send raises ``ConnectionClosed``, which the group raises in an
    ``ExceptionGroup``. That is the client leaving, as a ``ConnectionClosed`` the view
    raises itself is, not the view failing: no 500 (Django's ``got_request_exception``,
    what error reporters hook) and no "Internal Server Error" with a traceback at ERROR
    (daphne shows Django's log) for each client that leaves."""
    server = started(f"{name}-async")
    for _ in range(3):
        with ws(server, "/ticks/") as client:
            assert client.recv(timeout=TIMEOUT) == "tick"
    now = settle(server, lambda now: now["sessions"] == 0)
    assert now["sessions"] == 0 and "/ticks/" not in now["errors"], now
    server.stop()  # what the sessions' ends logged is all in
    assert "Internal Server Error" not in server.log(), server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.server
@pytest.mark.parametrize("via", ["middleware", "both"])
@pytest.mark.parametrize("name", asgi_servers())
def test_an_async_view_run_from_a_thread_holds_a_thread_slot(
    started: Callable[..., ServerProcess], name: str, via: str
) -> None:
    """A sync-only middleware makes Django run the middleware outside it sync, and the
    view through ``async_to_sync`` from the request's worker thread: an ``async def``
    view's session then holds that thread until it ends, whether ``WebSocketMiddleware``
    (run sync too) or the decorator runs it. Then it counts against
    ``WEBSOCKET_ASGI_THREADS`` as a sync view does (it did not: the cap let any number
    through)."""
    path = ASYNC_VIA[via][0]
    server = started(
        f"{name}-async",
        WEBSOCKET_ASGI_THREADS=2,
        MIDDLEWARE=[MIDDLEWARE, "tests.asgi.views.SyncOnlyMiddleware"],
    )
    with ws(server, path) as one, ws(server, path) as two:
        for client in (one, two):
            client.send("held")
            assert client.recv(timeout=TIMEOUT) == "held"
        assert counts(server)["sync_sessions"] == 2
        assert refused_status(server, path) == (403 if name in NO_HTTP_RESPONSE else 503)
    settle(server, lambda now: now["sync_sessions"] == 0)
    with ws(server, path) as three:
        three.send("again")
        assert three.recv(timeout=TIMEOUT) == "again"


def _draft_handshake(server: ServerProcess, origin_header: str, origin: str) -> int:
    """The status of a hybi-10 handshake (``Sec-WebSocket-Version: 8``), whose browsers
    sent the page's origin as ``Sec-WebSocket-Origin``."""
    request = (
        f"GET /echo/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 8\r\n{origin_header}: {origin}\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        status, _, _ = read_http_response(sock)
    return status


@pytest.mark.server
@pytest.mark.parametrize("kind", KINDS)
def test_daphne_checks_the_origin_of_a_draft_handshake(
    started: Callable[..., ServerProcess], kind: str
) -> None:
    """daphne (autobahn) accepts the hybi drafts' version 8, whose browsers name the page's
    origin ``Sec-WebSocket-Origin``: a foreign page's handshake was let through (101),
    as if it came from no browser."""
    if "daphne" not in asgi_servers():
        pytest.skip("daphne is not among the ASGI servers tested")
    server = started(f"daphne-{kind}")
    evil = "http://evil.example"
    assert _draft_handshake(server, "Sec-WebSocket-Origin", evil) == 403
    assert _draft_handshake(server, "Origin", evil) == 403
    same = f"http://127.0.0.1:{server.port}"
    assert _draft_handshake(server, "Sec-WebSocket-Origin", same) == 101


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_the_middleware_run_async_answers_as_it_does_sync(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """``WebSocketMiddleware`` last, so that Django runs it async: plain HTTP reaches the
    views as usual (400 for a view that requires WebSockets), a WebSocket request to a
    view that does not accept them gets 400, and the views that do accept them run their
    sessions: an async one on the loop, a sync one in its thread, with a slot."""
    server = started(f"{name}-async", MIDDLEWARE=[MIDDLEWARE])
    http = server.url("/marked-echo/", "http")
    with urllib.request.urlopen(http, timeout=TIMEOUT) as response:
        assert response.read() == b"marked echo: plain HTTP\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url("/required-echo/", "http"), timeout=TIMEOUT).close()
    assert info.value.code == 400
    info.value.close()
    assert refused_status(server, "/counts/") == (403 if name in NO_HTTP_RESPONSE else 400)
    with ws(server, "/required-echo/") as required, ws(server, "/marked-echo-sync/") as sync:
        for client in (required, sync):
            client.send("hello")
            assert client.recv(timeout=TIMEOUT) == "hello"
        assert counts(server)["sync_sessions"] == 1, counts(server)
    assert settle(server, lambda now: now["sessions"] == 0)["sync_sessions"] == 0


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_a_full_backlog_stops_the_reading_until_the_view_catches_up(
    started: Callable[..., ServerProcess], param: str
) -> None:
    """Three backlogs' worth of messages to a view that reads none until released: the
    pump stops at a full backlog and reads again once the view has taken half of it
    (from the view's worker thread for a sync view, on the loop for an async one)."""
    server = started(param)
    total = BACKLOG_MESSAGES * 3
    with ws(server, f"/stalled/?id={param}") as client:
        for n in range(total):
            client.send(str(n))
        with urllib.request.urlopen(
            server.url(f"/release/?id={param}", "http"), timeout=TIMEOUT
        ) as response:
            assert response.read() == b"released"
        received = [client.recv(timeout=TIMEOUT) for _ in range(total)]
    assert received == [str(n) for n in range(total)]


@pytest.mark.server
def test_a_sync_view_waiting_gives_its_database_connection_back(
    tmp_path: Path, started: Callable[..., ServerProcess]
) -> None:
    """docs/deployment.rst: a view blocked in ``wait()`` applies Django's end-of-request
    rule to its thread's database connections within a second (here ``CONN_MAX_AGE =
    0``: it closes them), as the WSGI backends do. A sync view under ASGI kept the
    connection of its first query for the whole session (one database connection per
    open WebSocket). The server does not matter: the wait is dwebsocket's. A file
    database: SQLite never closes an in-memory one. Slow: waits out that second."""
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")}
    server = started(f"{asgi_servers()[0]}-sync", DATABASES={"default": database})
    with ws(server, "/database-while-waiting/") as client:
        client.send("first")
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"message": "first", "held": False}
        time.sleep(1.2)  # the view waits meanwhile
        client.send("second")
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"message": "second", "held": False}


#: What a client may send to a view that reads nothing before the server stops reading:
#: the view's backlog (1 MiB) and the server's and the kernel's buffers, with room to spare.
PUSHED_BACK_WITHIN = 64 << 20


@pytest.mark.server
def test_a_client_that_sends_faster_than_the_view_reads_is_pushed_back(
    server: ServerProcess,
) -> None:
    """The backlog's bound holds on the wire: once the view's backlog is full the
    server stops reading, and a client sending on finds its socket's buffers full (a
    send that makes no progress for half a second) long before 64 MiB. Where the server
    read on, everything the client sent would pile up in the process."""
    key = uuid.uuid4().hex
    frame, sent = masked(0x2, bytes(1 << 16)), 0
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(f"/stalled/?id={key}&sink=1"))
        assert read_http_response(sock)[0] == 101
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while sent < PUSHED_BACK_WITHIN:
                sock.sendall(frame)
                sent += len(frame)
        # The view reads it all once released; then a close handshake ends the session
        # (a server whose reading waits for the application's would otherwise hold on).
        with urllib.request.urlopen(server.url(f"/release/?id={key}", "http"), timeout=TIMEOUT):
            pass
        sock.settimeout(TIMEOUT)
        sock.sendall(masked(0x8, struct.pack("!H", 1000)))
        read_until_eof(sock)
    assert sent < PUSHED_BACK_WITHIN, f"{sent >> 20} MiB sent without push-back"


#: Connections per server and kind of view in the vanishing test: CI's share keeps it
#: modest; ``make vanish-full`` runs the 1,000 of issue 20.
VANISHING = int(os.environ.get("DWEBSOCKET_VANISHING", "200"))


def vanish(server: ServerProcess, count: int) -> None:
    """``count`` clients that open, echo once, and drop the TCP connection (RST, no close
    frame), 50 at a time."""
    for start in range(0, count, 50):
        batch = []
        for _ in range(min(50, count - start)):
            client = RawClient.connect(server.host, server.port, "/echo/")
            client.send("here")
            batch.append(client)
        for client in batch:
            assert client.recv() == "here"
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_clients_that_vanish_leave_nothing_behind(
    started: Callable[..., ServerProcess], param: str
) -> None:
    server = started(param)
    vanish(server, 50)  # warm up: the loop's executor, Django's thread-sensitive pools
    deadline = time.monotonic() + 30
    while counts(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    before = counts(server)
    vanish(server, VANISHING)
    deadline = time.monotonic() + 30
    while True:
        after = counts(server)
        settled = (
            after["sessions"] == 0
            and after["sync_sessions"] == 0
            and after["threads"] <= before["threads"]
            and after["tasks"] <= before["tasks"]
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["sessions"] == 0 and after["sync_sessions"] == 0, after
    assert after["threads"] <= before["threads"], (before, after)
    assert after["tasks"] <= before["tasks"], (before, after)


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_a_client_gone_before_the_accept_leaves_the_groups_its_view_joined(
    started: Callable[..., ServerProcess], param: str
) -> None:
    """tests.asgi.views.joined_held: the view joins a group, present, before the 101 (as
    docs/channels.rst's chat does), and the client leaves before the view accepts. The
    accept finds it gone, the view ends, and the connection must leave the group. It
    stayed a member, and present, until the next message to that group: a connection
    that never opened gets no websocket_closed, the signal on which members leave."""
    server = started(param)
    key = uuid.uuid4().hex
    path = f"/joined-held/?id={key}"

    def membership() -> dict[str, int]:
        with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as answer:
            seen: dict[str, int] = json.loads(answer.read())
        return seen

    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        deadline = time.monotonic() + TIMEOUT
        while membership() != {"members": 1, "present": 1}:  # the view joined
            assert time.monotonic() < deadline, membership()
            time.sleep(0.05)
    urllib.request.urlopen(server.url(f"/release/?id={key}", "http"), timeout=TIMEOUT).close()
    settle(server, lambda now: now["sessions"] == 0)
    deadline = time.monotonic() + TIMEOUT
    while membership() != {"members": 0, "present": 0}:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert membership() == {"members": 0, "present": 0}


@pytest.mark.server
@pytest.mark.skipif("hypercorn" not in asgi_servers(), reason="hypercorn not chosen")
@pytest.mark.xfail(strict=True, raises=DefectShown, reason=HYPERCORN_PIPELINED)
@pytest.mark.parametrize("kind", KINDS)
def test_hypercorn_ends_the_session_it_answered_400(
    started: Callable[..., ServerProcess], kind: str
) -> None:
    """A frame before the 101 (here: after the request reached the view, before the view
    accepts): hypercorn, which started the application with ``websocket.connect``,
    answers 400 itself. The client is gone; the session must end, and a sync view's
    thread come back. On hypercorn 0.18 neither happens: the application is never sent
    ``websocket.disconnect`` and its sends are dropped without an error, so nothing tells
    dwebsocket (the view runs until hypercorn stops, which cancels it)."""
    server = started(f"hypercorn-{kind}")
    release = server.url("/release/?id=pipelined", "http")
    with ws(server, "/echo/") as warm:  # the loop's and Django's thread pools
        warm.send("warm")
        assert warm.recv(timeout=TIMEOUT) == "warm"
    urllib.request.urlopen(release.replace("pipelined", "warm"), timeout=TIMEOUT).close()
    settle(server, lambda now: now["sessions"] == 0)
    before = counts(server)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/held/?id=pipelined"))
        settle(server, lambda now: now["sessions"] == 1)  # the view waits at its gate
        sock.sendall(masked(0x1, b"before the 101"))
        status = read_http_response(sock)[0]
    urllib.request.urlopen(release, timeout=TIMEOUT).close()
    # With the defect, this wait runs out.
    after = settle(server, lambda now: not now["sessions"] and now["threads"] <= before["threads"])
    # sync_sessions: the worker threads sync views hold (the process's thread count also
    # moves with the loop's and Django's pools, so it is only waited for above).
    check(
        HYPERCORN_PIPELINED,
        (status, after["sessions"], after["sync_sessions"]),
        correct=(status, 0, 0),  # whatever the answer, nothing left running
        # 400, and one session left running; for a sync view, holding its thread.
        signature=(400, 1, 1) if kind == "sync" else (400, 1, 0),
    )


@pytest.mark.server
@pytest.mark.skipif("hypercorn" not in asgi_servers(), reason="hypercorn not chosen")
@pytest.mark.parametrize("kind", KINDS)
def test_an_upgrade_with_a_body_holds_no_session_under_hypercorn(
    started: Callable[..., ServerProcess], kind: str
) -> None:
    """An upgrade request with a body in its segment: hypercorn answers 400 itself, but it
    started the application first and never tells it (as for a frame before the 101,
    above). dwebsocket refuses the body before the view runs, so no session is left
    behind; it was: the view ran until hypercorn stopped, a sync one holding a thread and
    a ``WEBSOCKET_ASGI_THREADS`` slot, for any client that sent a ``Content-Length``."""
    server = started(f"hypercorn-{kind}")
    release = server.url("/release/?id=with-body", "http")
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        request = upgrade_request("/held/?id=with-body")
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello"))
        status = read_http_response(sock)[0]
    try:
        after = settle(server, lambda now: not now["sessions"])
    finally:
        urllib.request.urlopen(release, timeout=TIMEOUT).close()
    assert (status, after["sessions"], after["sync_sessions"]) == (400, 0, 0)


DAPHNE_NO_CLOSE_REASON = (
    "daphne defect: websocket.disconnect carries the client's close code, not its reason "
    "(daphne 4.2, ws_protocol.onClose)"
)


@pytest.mark.server
@pytest.mark.skipif("daphne" not in asgi_servers(), reason="daphne not chosen")
@pytest.mark.xfail(strict=True, raises=DefectShown, reason=DAPHNE_NO_CLOSE_REASON)
@pytest.mark.parametrize("kind", KINDS)
def test_daphne_tells_the_view_the_clients_close_reason(
    started: Callable[..., ServerProcess], kind: str
) -> None:
    """What the view sees of a client's close (4000, with a reason): on daphne the code
    only, its reason empty (docs/asgi.rst said both reached the view; the shared test
    ``test_client_closes_with_code_and_reason`` fails on daphne before it looks)."""
    server = started(f"daphne-{kind}")
    key = uuid.uuid4().hex
    with ws(server, f"/record/?id={key}") as client:
        client.send("hi")
        assert client.recv(timeout=TIMEOUT) == "hi"
        client.close(4000, "client says bye")
    seen = recorded(server, "/record/", key)
    check(
        DAPHNE_NO_CLOSE_REASON,
        (seen["code"], seen["reason"]),
        correct=(4000, "client says bye"),
        signature=(4000, ""),
    )


def settle(
    server: ServerProcess, done: Callable[[dict[str, Any]], bool], bound: float = TIMEOUT
) -> dict[str, Any]:
    """``counts(server)`` once ``done`` says so, or when ``bound`` seconds ran out."""
    deadline = time.monotonic() + bound
    while not done(now := counts(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_async_json_helpers(started: Callable[..., ServerProcess], name: str) -> None:
    server = started(f"{name}-async")
    with ws(server, "/json/") as client:
        client.send(json.dumps({"n": 1}))
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"got": {"n": 1}}
        if name == "daphne":
            return  # daphne cannot send 1007 (autobahn: 1000 and 3000-4999 only)
        client.send("not json")
        with pytest.raises(ConnectionClosedError):
            client.recv(timeout=TIMEOUT)
    assert client.close_code == 1007


def recorded(server: ServerProcess, path: str, key: str) -> Any:
    """What the view at ``path`` with ``?id=key`` recorded once it ended (404 until then;
    at most TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(
                server.url(f"{path}?id={key}", "http"), timeout=TIMEOUT
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and time.monotonic() < deadline, exc
            time.sleep(0.05)


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_two_tasks_waiting_at_once_each_get_a_message_and_the_close(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """An async view's tasks may wait for messages at the same time: none is forgotten.
    (The connection once kept one waiter: the second wait replaced the first, whose task
    then waited forever, through the close too.)"""
    server = started(f"{name}-async")
    key = f"two-readers-{name}"
    with ws(server, f"/two-readers/?id={key}") as client:
        assert client.recv(timeout=TIMEOUT) == "waiting"
        client.send("a")
        client.send("b")
        got = json.loads(client.recv(timeout=TIMEOUT))
        assert got != "timed out" and sorted(got) == ["a", "b"], got
        assert client.recv(timeout=TIMEOUT) == "waiting"
    seen = recorded(server, "/two-readers/", key)
    assert seen["closed"] == [None, None], seen


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_two_first_uses_at_once_accept_once(
    started: Callable[..., ServerProcess], param: str
) -> None:
    """A view that never accepts explicitly, one task (or thread) sending while the view
    waits: both accept on first use, and the server gets one ``websocket.accept`` (a second
    one killed the connection on granian) and the view one ``websocket_opened``."""
    server = started(param)
    key = f"lazy-{param}"
    with ws(server, f"/lazy-accepts/?lazy={key}") as client:
        assert client.recv(timeout=TIMEOUT) == "tick"
        client.send("hi")
        assert client.recv(timeout=TIMEOUT) == "got hi"
    assert signalled(server, "/lazy-accepts/", key)["opened"] == 1


def signalled(server: ServerProcess, path: str, key: str, closed: int = 0) -> dict[str, int]:
    """The signals sent for the connections of ``?lazy=key``, once at least ``closed``
    ``websocket_closed`` were (they are sent after the session, in a thread of their own)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with urllib.request.urlopen(
            server.url(f"{path}?lazy={key}", "http"), timeout=TIMEOUT
        ) as response:
            seen: dict[str, int] = json.loads(response.read())
        if seen["closed"] >= closed or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


@pytest.mark.server
@pytest.mark.parametrize("param", SERVERS)
def test_a_close_before_the_accept_is_signalled_as_opened_then_closed(
    started: Callable[..., ServerProcess], param: str
) -> None:
    """``close()`` without an accept accepts first, as the default backend does, and
    signals it: ``websocket_closed`` never comes without ``websocket_opened`` (the
    open-connections gauge went below zero)."""
    server = started(param)
    key = f"close-first-{param}"
    with ws(server, f"/close-first/?lazy={key}") as client, pytest.raises(ConnectionClosed):
        client.recv(timeout=TIMEOUT)
    assert client.close_code == 4000
    assert signalled(server, "/close-first/", key, closed=1) == {"opened": 1, "closed": 1}


@pytest.mark.server
def test_sync_close_called_on_the_loop_does_not_wait_for_itself(
    started: Callable[..., ServerProcess],
) -> None:
    server = started("uvicorn-async")
    with ws(server, "/close-from-the-loop/") as client:
        client.send("go")
        with pytest.raises(ConnectionClosedError):
            client.recv(timeout=TIMEOUT)
    assert (client.close_code, client.close_reason) == (4003, "closed from the loop")


#: The close a client gets when the server stops with its session open: uvicorn sends its
#: own (1012, service restart) and then tells the view; hypercorn cancels the scope after
#: its graceful timeout, and dwebsocket says going away (RFC 6455 7.4.1). granian should.
STOPPING_CLOSE = {"uvicorn": 1012, "hypercorn": 1001, "granian-asgi": 1001}
GRANIAN_STOPPING = (
    "granian defect: SIGTERM drops every WebSocket's TCP connection at once, without a "
    "close frame (the client sees 1006) and before the application could say goodbye "
    "(it is told nothing, or websocket.disconnect with 1005)"
)


@pytest.mark.server
@pytest.mark.parametrize(
    "param",
    [
        pytest.param(param, marks=pytest.mark.xfail(strict=True, reason=GRANIAN_STOPPING))
        if param.startswith("granian")
        else param
        for param in SERVERS
        if param.rsplit("-", 1)[0] in STOPPING_CLOSE
    ],
)
def test_a_server_that_stops_ends_open_sessions_going_away(
    started: Callable[..., ServerProcess], param: str
) -> None:
    """SIGTERM with a session open, its view waiting for a message: the client gets a
    going-away close (not 1000 for a sync view, nor 1011 for an async one, as when a
    cancelled scope was taken for a failed view), the session ends once (one
    ``websocket_closed``) and the process exits (no session thread left behind)."""
    server = started(param, WEBSOCKET_CLOSE_TIMEOUT=1.0)
    with ws(server, "/echo/") as client:
        client.send("here")
        assert client.recv(timeout=TIMEOUT) == "here"
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            client.recv(timeout=TIMEOUT)
    server.process.wait(TIMEOUT)
    closes = [line for line in server.log().splitlines() if "WebSocket closed:" in line]
    assert client.close_code == STOPPING_CLOSE[param.rsplit("-", 1)[0]], server.log()
    assert len(closes) == 1 and f"code {client.close_code} " in closes[0], server.log()


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_a_client_gone_while_websocket_opened_runs_is_signalled_closed_after_it(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """As on WSGI (``tests/integration/test_vanished_handshake.py``): a client that
    leaves while ``websocket_opened``'s receivers run gets ``websocket_closed`` once they
    returned, never in the middle (a receiver that registers the connection somewhere,
    users or presence, would register it after the close unregistered it, for good)."""
    server = started(f"{name}-sync")
    key = f"gone-{name}"
    path = f"/opened-while-gone/?id={key}"
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        assert read_http_response(sock)[0] == 101
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + TIMEOUT
    while True:
        with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as response:
            seen = json.loads(response.read())["signals"]
        if any(s.startswith("closed") for s in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # whatever else would come
    with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as response:
        seen = json.loads(response.read())["signals"]
    assert seen[:2] == ["opened", "opened returned"] and len(seen) == 3, seen
    assert seen[2].startswith("closed "), seen


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_an_async_view_sending_without_pause_lets_the_server_serve(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """An ``async def`` view that sends as fast as it can to a client that reads as fast:
    the server's ``send()`` never suspends (its buffer never fills), so ``await
    ws.send()`` must give the loop a turn now and then, or nothing else runs: not the
    client's close (the view sent on for good), nor any other connection's handshake or
    request (the whole process hung)."""
    server = started(f"{name}-async")
    key = f"stream-{name}"
    with ws(server, f"/stream/?id={key}", max_size=None) as client:
        for _ in range(10):
            client.recv(timeout=TIMEOUT)
        with urllib.request.urlopen(server.url("/counts/", "http"), timeout=TIMEOUT) as answer:
            assert answer.status == 200  # the loop serves others meanwhile
        client.close(4001, "enough")
    seen = recorded(server, "/stream/", key)
    assert seen["sent"] >= 10, seen


@pytest.mark.server
@pytest.mark.parametrize(
    "name", [name for name in asgi_servers() if name in ("uvicorn", "granian-asgi")]
)
def test_a_client_that_closes_during_a_send_is_closed_with_its_code(
    started: Callable[..., ServerProcess], name: str
) -> None:
    """The client closes (4001) while the view sends: the server refuses the next send,
    then reports the close. The view and ``websocket_closed`` get 4001, as with a view
    waiting for a message, not the 1006 of a send that failed first. (hypercorn passes on
    no client code, daphne said 1006 itself here: not theirs to show.)"""
    server = started(f"{name}-async")
    key = f"stream-closed-{name}"
    with ws(server, f"/stream/?id={key}", max_size=None) as client:
        for _ in range(10):
            client.recv(timeout=TIMEOUT)
        client.close(4001, "enough")
    seen = recorded(server, "/stream/", key)
    assert seen["code"] == 4001, seen


@pytest.mark.server
@pytest.mark.parametrize("view", ["stream", "close-behind-a-send"])
@pytest.mark.parametrize(
    "name", [name for name in asgi_servers() if name in ("uvicorn", "granian-asgi")]
)
def test_a_client_that_stopped_reading_then_closes_ends_a_send_under_way(
    started: Callable[..., ServerProcess], name: str, view: str
) -> None:
    """tests.asgi.views.stream to a client that reads nothing, whose buffers fill: the
    view's ``await ws.send()`` is with the server, which does not return. The client then
    closes (4001): the server reports it (``websocket.disconnect``), and the send must
    raise ``ConnectionClosed(4001)``. It waited on, the connection closed and its
    watchdog stopped, for as long as the TCP connection stayed (a stopping uvicorn waited
    for it for ever). ``close_behind_a_send``: the view's ``await ws.close(4000)`` waits
    behind such a send; once the client's close is reported, it returns within the close
    timeout (its ``websocket.close`` went to the server and waited ``IO_TIMEOUT``, a
    minute). (hypercorn reads no close while its send waits; daphne's sends never wait.)"""
    server = started(f"{name}-async", WEBSOCKET_CLOSE_TIMEOUT=1.0)
    key = uuid.uuid4().hex
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(upgrade_request(f"/{view}/?id={key}"))
        assert read_http_response(sock)[0] == 101
        time.sleep(1.0)  # the view sends until the buffers are full (and closes at 0.5 s)
        sock.sendall(masked(0x8, struct.pack("!H", 4001)))
        seen = recorded(server, f"/{view}/", key)  # while the client still holds on
    assert seen["code"] == (4001 if view == "stream" else 4000), seen


@pytest.mark.server
@pytest.mark.parametrize("close", ["return", "close"])
@pytest.mark.parametrize("name", asgi_servers())
def test_what_a_group_sent_before_the_close_reaches_the_client_first(
    started: Callable[..., ServerProcess], name: str, close: str
) -> None:
    """tests.asgi.views.goodbye: an async view sends five messages to a group it is in,
    then returns (1000) or closes (4000). The client gets the five, then the close, as
    on the default backend, whose close frame goes out after what is queued. They were
    lost: the close began at once and the group's queue for the connection was dropped
    unsent."""
    server = started(f"{name}-async")
    query = f"id={uuid.uuid4().hex}" + ("&close=1" if close == "close" else "")
    got = []
    with ws(server, f"/goodbye/?{query}") as client:
        client.send("go")
        with pytest.raises(ConnectionClosed):
            while True:
                got.append(client.recv(timeout=TIMEOUT))
    assert got == [f"m{i}" for i in range(5)]
    assert client.close_code == (4000 if close == "close" else 1000)


@pytest.mark.server
@pytest.mark.parametrize("name", asgi_servers())
def test_a_close_the_server_does_not_take_ends_the_session(tmp_path: Path, name: str) -> None:
    """A client that stopped reading: a send the server does not take is given up after
    IO_TIMEOUT (1 s here), and so must a close waiting behind it be. It was not: once the
    send was given up, the close was handed to the server all the same, and uvicorn and
    hypercorn (whose send blocks while the client does not read) never took it either,
    so ``await ws.close()`` never returned: the session held on for as long as the
    client kept the connection open."""
    server = start_server(
        name,
        tmp_path / "server.log",
        settings={"ROOT_URLCONF": KINDS["async"], "WEBSOCKET_CLOSE_TIMEOUT": 1.0},
        env={"DWEBSOCKET_TEST_IO_TIMEOUT": "1.0"},
    )
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
            sock.settimeout(TIMEOUT)
            sock.connect((server.host, server.port))
            sock.sendall(upgrade_request(f"/close-behind-a-send/?id={name}"))
            assert read_http_response(sock)[0] == 101
            # Never read again, while the session ends.
            seen = recorded(server, "/close-behind-a-send/", name)
            assert seen == {"code": 4000, "closed": True}, seen
            assert settle(server, lambda now: now["sessions"] == 0)["sessions"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_scope_the_server_cancels_still_sends_request_finished(kind: str) -> None:
    """A stopping server cancels the scope (hypercorn, after its graceful timeout): the
    session ends (1001), and ``request_finished`` is sent all the same, as Django's own
    handler sends it for a cancelled request. It was not: its receivers (Django's
    ``close_old_connections``, an application's cleanup) never ran for that request.
    In-process, the handler driven through ASGI's callables: a server cancels a scope
    only as it stops."""
    from django.core.signals import request_finished
    from django.test import override_settings

    from dwebsocket.asgi import ASGIHandler

    finished: list[object] = []
    scope = {
        "type": "websocket",
        "path": "/echo/",
        "raw_path": b"/echo/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }

    async def scenario() -> list[dict[str, Any]]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[dict[str, Any]] = []

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)

        for event in ({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}):
            inbox.put_nowait(event)
        task = asyncio.ensure_future(ASGIHandler()(scope, inbox.get, send))
        deadline = time.monotonic() + TIMEOUT
        while not any(e["type"] == "websocket.send" for e in sent):
            assert time.monotonic() < deadline and not task.done(), sent
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        return sent

    request_finished.connect(
        lambda sender, **kwargs: finished.append(sender),
        weak=False,
        dispatch_uid="tests.asgi.cancelled",
    )
    try:
        with override_settings(ROOT_URLCONF=KINDS[kind], WEBSOCKET_CLOSE_TIMEOUT=0.1):
            sent = asyncio.run(scenario())
    finally:
        request_finished.disconnect(dispatch_uid="tests.asgi.cancelled")
    assert {"type": "websocket.close", "code": 1001} in sent, sent
    assert finished == [ASGIHandler], finished


# -- async views without an ASGI server -------------------------------------------------------


def test_the_decorators_keep_async_views_async() -> None:
    from asgiref.sync import iscoroutinefunction

    from tests.asgi import views

    assert iscoroutinefunction(views.echo) and iscoroutinefunction(views.echo_wait)
    assert views.echo.accept_websocket and views.echo_wait.require_websocket  # type: ignore[attr-defined]


@pytest.mark.urls("tests.asgi.async_urls")
@pytest.mark.parametrize(
    ("path", "page"),
    [("/echo/", b"echo: plain HTTP\n"), ("/class-echo/", b"class echo: plain HTTP\n")],
    ids=["function", "class"],
)
def test_an_async_view_under_wsgi_answers_http_and_refuses_websockets_with_501(
    path: str, page: bytes
) -> None:
    """Its page, and 501 naming the fix for a WebSocket request: for a function, and for
    tests.asgi.views.ClassEcho (``async def`` handlers, the decorator on ``dispatch``),
    which got a 500 (the coroutine ``dispatch`` returned was taken for its answer)."""
    client = Client()
    response = client.get(path)
    assert response.status_code == 200 and response.content == page
    response = client.get(
        path,
        HTTP_UPGRADE="websocket",
        HTTP_CONNECTION="Upgrade",
        HTTP_SEC_WEBSOCKET_KEY="dGhlIHNhbXBsZSBub25jZQ==",
        HTTP_SEC_WEBSOCKET_VERSION="13",
    )
    assert response.status_code == 501
    assert b"dwebsocket.asgi.get_asgi_application()" in response.content
    assert b"async def" in response.content
    assert client.get("/echo-wait/").status_code == 400  # require_websocket, plain HTTP


@pytest.mark.server
def test_an_async_class_based_view_decorated_on_dispatch(server: ServerProcess) -> None:
    """The session of tests.asgi.views.ClassEcho runs on every ASGI server (every
    handshake got a 500, and the server logged a never-awaited coroutine)."""
    with urllib.request.urlopen(server.url("/class-echo/", "http"), timeout=TIMEOUT) as page:
        assert page.read() == b"class echo: plain HTTP\n"
    with ws(server, "/class-echo/") as client:
        client.send("hello")
        assert client.recv(timeout=TIMEOUT) == "hello"
    assert "never awaited" not in server.log()


@pytest.mark.server
def test_an_async_view_under_runserver(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("runserver", settings={"ROOT_URLCONF": "tests.asgi.async_urls"})
    with urllib.request.urlopen(server.url("/echo/", "http"), timeout=TIMEOUT) as response:
        assert response.read() == b"echo: plain HTTP\n"
    with pytest.raises(InvalidStatus) as info:
        ws(server, "/echo/").close()
    assert info.value.response.status_code == 501
    assert b"get_asgi_application" in info.value.response.body
    assert "RuntimeWarning" not in server.log() and "never awaited" not in server.log()


@pytest.mark.server
@pytest.mark.parametrize("use", ["accept", "send"])
@pytest.mark.parametrize("param", SERVERS)
def test_a_helper_using_the_connection_after_the_views_answer_is_refused(
    started: Callable[..., ServerProcess], param: str, use: str
) -> None:
    """tests.views.answered_then_a_helper_uses (sync views; async views:
    tests.asgi.views.answered_then_a_task_uses): the view answers 403 unaccepted, and an
    accept() or send() starts as soon as the session returned that answer, before the
    server has it. It raises ConnectionClosed(1006), and the client gets the 403, as
    under WSGI. Before, it sent websocket.accept: the client got a 101 instead (the
    view's answer lost) and the scope closed it with 1000."""
    server = started(param)
    name = param.rsplit("-", 1)[0]
    key = uuid.uuid4().hex
    with pytest.raises(InvalidStatus) as info:
        ws(server, f"/answered-then-a-helper-uses/?id={key}&use={use}&when=returned").close()
    response = info.value.response
    assert response.status_code == 403
    assert response.body == (b"" if name in NO_HTTP_RESPONSE else b"answered\n")
    deadline = time.monotonic() + TIMEOUT
    while True:
        url = server.url(f"/opened-while-gone/?id={key}", "http")
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            signals = json.loads(answer.read())["signals"]
        if signals or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert signals == ["helper: ConnectionClosed 1006"]
