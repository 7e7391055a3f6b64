"""Long-lived connections through real servers: many at once, graceful stop (1001), views
killed the way servers kill them, gunicorn's sync worker, servers that cannot work, and
database connections held across ``wait()``.

The basic behaviour (echo, buffered first frame, closing from either side, nothing after
the close frame) is in ``tests/integration/``, over the same ``server`` matrix.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.sync.client import connect

from dwebsocket.protocol.connection import Close
from tests.servers import STOP_TIMEOUT, ServerProcess, start_server
from tests.wire import (
    TIMEOUT,
    RawClient,
    masked,
    read_http_response,
    read_until_eof,
    split_frames,
    upgrade_request,
)

pytestmark = pytest.mark.server

#: The servers of the default backend and the signal their docs stop them with.
STOPS = [
    ("runserver", signal.SIGINT),
    ("gevent", signal.SIGTERM),
    ("gevent", signal.SIGINT),
    ("gunicorn-gevent", signal.SIGTERM),
    ("gunicorn-gevent", signal.SIGINT),
    ("gunicorn-gthread", signal.SIGTERM),
    ("gunicorn-gthread", signal.SIGINT),
    ("eventlet", signal.SIGTERM),
    ("eventlet", signal.SIGINT),
    # uWSGI --die-on-term: SIGTERM and SIGINT both stop it ("killing workers"); with the
    # default backend (the recommended recipe) and with the uwsgi backend.
    ("uwsgi-takeover", signal.SIGTERM),
    ("uwsgi-takeover", signal.SIGINT),
    ("uwsgi-gevent", signal.SIGTERM),
]

#: What shows that a server wrote to a socket dwebsocket had shut down, and complained.
WRITE_ERRORS = ("Broken pipe", "EPIPE", "Bad file descriptor", "EBADF")

CLIENTS = 20
MESSAGES = 5


def raw_client(server: ServerProcess, path: str) -> RawClient:
    client = RawClient(socket.create_connection((server.host, server.port), timeout=TIMEOUT))
    try:
        client.handshake(path)
    except BaseException:
        client.close()  # a failed test, not a leaked socket as well
        raise
    return client


def expect_close_then_eof(client: RawClient, code: int) -> None:
    """The next thing from the server is a close frame with ``code`` (the client's core
    answers it), then EOF: no byte after the close frame."""
    event = client.recv()
    assert isinstance(event, Close), event
    assert event.code == code, event
    assert read_until_eof(client.sock) == b""


def echo_once_serving(server: ServerProcess, text: str) -> None:
    """``text`` echoed by a worker that is not stopping: a connection a stopping worker
    still accepted (gunicorn's accept loop runs for up to a second after SIGTERM) gets
    1001 as it opens, and the client tries again, as a browser would (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with raw_client(server, "/echo/") as client:
            if not client.events:  # else the goodbye came with the 101: nothing to send to
                client.send(text)
            event = client.recv()
        if event != Close(1001, "server shutting down") or time.monotonic() > deadline:
            assert event == text, event
            return
        time.sleep(0.1)


def assert_no_write_errors(log: str) -> None:
    for needle in WRITE_ERRORS:
        assert needle not in log, f"the server wrote to a shut-down socket:\n{log}"


def assert_one_clean_goodbye(server: ServerProcess) -> None:
    """The stop said its goodbye once (one "Server stopping" line) and wrote nothing to a
    shut-down socket."""
    assert_no_write_errors(server.log())
    assert server.log().count("Server stopping") == 1, server.log()  # one goodbye


def test_many_clients_at_once(server: ServerProcess) -> None:
    """CLIENTS connections open together, each echoing text and binary in turn."""
    barrier = threading.Barrier(CLIENTS, timeout=TIMEOUT * 3)

    def session(n: int) -> list[object]:
        with connect(
            server.url("/echo/"), open_timeout=TIMEOUT * 3, close_timeout=TIMEOUT, proxy=None
        ) as ws:
            barrier.wait()  # every connection is open before any talks
            got: list[object] = []
            for i in range(MESSAGES):
                ws.send(f"client {n} message {i}")
                got.append(ws.recv(timeout=TIMEOUT))
                ws.send(bytes([n, i]) * 100)
                got.append(ws.recv(timeout=TIMEOUT))
        assert ws.close_code == 1000
        return got

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(session, range(CLIENTS)))
    for n, got in enumerate(results):
        expected: list[object] = []
        for i in range(MESSAGES):
            expected += [f"client {n} message {i}", bytes([n, i]) * 100]
        assert got == expected


@pytest.mark.parametrize(("name", "sig"), STOPS, ids=[f"{n}-{s.name}" for n, s in STOPS])
def test_graceful_stop_sends_1001(
    make_server: Callable[..., ServerProcess], name: str, sig: signal.Signals
) -> None:
    """The clients answer the 1001 only once the server has exited: it exits after
    WEBSOCKET_CLOSE_TIMEOUT (1 s here) nevertheless, without being killed."""
    server = make_server(name, settings={"WEBSOCKET_CLOSE_TIMEOUT": 1})
    clients = [raw_client(server, "/lifecycle/wait/") for _ in range(3)]
    try:
        for client in clients:
            assert client.recv() == "ready"
        clients[0].send("still here")
        assert clients[0].recv() == "still here"
        status = server.stop(sig)
        for client in clients:
            expect_close_then_eof(client, 1001)
    finally:
        for client in clients:
            client.close()
    assert status != -signal.SIGKILL, f"{name} had to be killed:\n{server.log()}"
    assert_no_write_errors(server.log())


@pytest.mark.parametrize(("name", "sig"), STOPS, ids=[f"{n}-{s.name}" for n, s in STOPS])
def test_a_stop_lets_the_views_finish(
    make_server: Callable[..., ServerProcess], tmp_path: Path, name: str, sig: signal.Signals
) -> None:
    """The views' ``finally`` blocks run before the server exits, also one that takes a
    moment after the connection closed (a database write): a server may exit, or kill
    what still runs, as soon as the goodbyes return. The clients answer the 1001 at
    once, as browsers do."""
    server = make_server(name)
    done = [tmp_path / f"done-{n}" for n in range(2)]
    clients = [raw_client(server, f"/lifecycle/cleanup/?done={path}") for path in done]
    try:
        for client in clients:
            assert client.recv() == "ready"
        server.process.send_signal(sig)
        for client in clients:
            expect_close_then_eof(client, 1001)
        server.process.wait(STOP_TIMEOUT)  # not stop(), whose second signal cuts it short
    finally:
        for client in clients:
            client.close()
    assert [path.exists() for path in done] == [True, True], server.log()


#: The servers whose stop waits for the views (gunicorn for ``--graceful-timeout``, 30 s;
#: eventlet for ever) and SIGTERM, what stops them.
LATE_STOPS = ["gunicorn-gevent", "gunicorn-gthread", "eventlet"]

#: Long enough for a server process to have run its stop signal's handlers.
SIGNAL_HANDLED = 0.5


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_during_runservers_goodbyes_ends_it_quietly(
    make_server: Callable[..., ServerProcess], second: signal.Signals
) -> None:
    """Ctrl-C, then Ctrl-C again (or SIGTERM) while the exit hook waits for a goodbye to
    be answered: runserver exits at once, without the exit hook's traceback ("Exception
    ignored in atexit callback ... KeyboardInterrupt") it printed before."""
    server = make_server("runserver")
    with raw_client(server, "/lifecycle/wait/") as client:  # answers nothing until read
        assert client.recv() == "ready"
        server.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + TIMEOUT
        while "Server stopping" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        # The goodbye has gone out (the line is logged before the close frames are
        # written: on a loaded machine a second signal could come in between, and
        # the client got EOF without one), and is not answered: the hook waits.
        readable, _, _ = select.select([client.sock], [], [], TIMEOUT)
        assert readable, server.log()
        server.process.send_signal(second)
        status = server.process.wait(STOP_TIMEOUT)
        expect_close_then_eof(client, 1001)
    assert status == 0, f"exit {status}:\n{server.log()}"
    assert "Traceback" not in server.log(), server.log()


def test_a_second_signal_ends_eventlets_wait_for_its_requests(
    make_server: Callable[..., ServerProcess],
) -> None:
    """After the goodbyes, eventlet.wsgi waits for its requests as long as they run: a
    view whose ``finally`` outlasts any stop keeps it alive. A second SIGTERM ends that
    wait, as it does without ``install()``; it was ignored, leaving only SIGKILL."""
    server = make_server("eventlet")
    with raw_client(server, "/lifecycle/stubborn/?seconds=60") as client:
        assert client.recv() == "ready"
        server.process.send_signal(signal.SIGTERM)
        expect_close_then_eof(client, 1001)
    time.sleep(SIGNAL_HANDLED)  # the first signal has been handled
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(STOP_TIMEOUT)
    assert status == 128 + signal.SIGTERM, f"exit {status}:\n{server.log()}"  # SystemExit


@pytest.mark.parametrize("name", LATE_STOPS)
def test_a_handshake_in_progress_at_a_stop_gets_1001(
    make_server: Callable[..., ServerProcess], tmp_path: Path, name: str
) -> None:
    """A stop signal while a view has not accepted its connection yet: once it does, the
    connection gets 1001 as the others did, and the server exits promptly rather than
    waiting for that view (until gunicorn's --graceful-timeout, or for ever on eventlet)."""
    server = make_server(name)
    mark, go = tmp_path / "in-the-view", tmp_path / "go"
    path = f"/lifecycle/late/?mark={mark}&go={go}"
    stop_while_held(server, path, mark, go, "the view never ran")


@pytest.mark.parametrize("name", LATE_STOPS)
def test_a_first_handshake_in_progress_at_a_stop_gets_1001(
    make_server: Callable[..., ServerProcess], tmp_path: Path, name: str
) -> None:
    """As above, with the stop before dwebsocket has seen any WebSocket request in the
    worker (the request is in a middleware, the registry of open connections not even
    imported): that connection gets 1001 as it opens too."""
    server = make_server(name, settings={"MIDDLEWARE": ["tests.lifecycle.HoldBeforeTheView"]})
    mark, go = tmp_path / "in-the-middleware", tmp_path / "go"
    path = f"/lifecycle/wait/?hold=1&mark={mark}&go={go}"
    stop_while_held(server, path, mark, go, "no request came")


@pytest.mark.parametrize("first", [False, True], ids=["in-the-view", "first-in-the-middleware"])
@pytest.mark.parametrize("name", ["uwsgi-takeover", "uwsgi-gevent"])
def test_a_handshake_in_progress_at_a_uwsgi_reload_gets_1001(
    make_server: Callable[..., ServerProcess], tmp_path: Path, name: str, first: bool
) -> None:
    """uWSGI's graceful reload (SIGHUP) waits for the worker's requests: a handshake
    under way gets 1001 as it opens, also when it is the worker's first WebSocket (the
    registry of open connections not imported yet when the goodbyes were said)."""
    mark, go = tmp_path / "held", tmp_path / "go"
    if first:
        server = make_server(name, settings={"MIDDLEWARE": ["tests.lifecycle.HoldBeforeTheView"]})
        path = f"/lifecycle/wait/?hold=1&mark={mark}&go={go}"
    else:
        server = make_server(name)
        path = f"/lifecycle/late/?mark={mark}&go={go}"
    stop_while_held(server, path, mark, go, "no request came", signal.SIGHUP)


def test_a_stop_handled_on_a_views_greenlet_still_gets_1001_on_eventlet(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Python runs a signal handler on whichever greenlet runs when the signal lands:
    usually eventlet's hub (waiting in epoll), but a view busy in Python code gets it on
    its own greenlet. The stop must not be raised there, where it would end that request
    without an answer (EOF during the handshake): the view goes on, and its connection
    gets 1001 as it opens, as when the hub handles the signal."""
    server = make_server("eventlet")
    mark, go = tmp_path / "in-the-view", tmp_path / "go"
    path = f"/lifecycle/late/?mark={mark}&go={go}&busy=1.5"
    stop_while_held(server, path, mark, go, "the view never ran")


def test_a_stop_callable_under_eventlet_runs_at_once(
    make_server: Callable[..., ServerProcess],
) -> None:
    """``install(stop)`` under eventlet: the signal handler spawns the goodbyes, usually
    on the hub's greenlet while it waits in epoll. Python retries that wait when the
    handler returns (PEP 475), for as long as the hub had reckoned, so the goodbyes
    waited for the hub's next timer: 60 s with none (no pings and no metrics' flush
    here; 5 s with the flush, 20 s with pings alone). They go out at once, and the
    server exits."""
    server = make_server(
        "eventlet-stop", settings={"WEBSOCKET_PING_INTERVAL": None, "WEBSOCKET_METRICS": False}
    )
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        time.sleep(SIGNAL_HANDLED)  # the server is idle: its hub waits in epoll
        server.process.send_signal(signal.SIGTERM)
        expect_close_then_eof(client, 1001)  # within TIMEOUT (10 s)
    status = server.process.wait(STOP_TIMEOUT)
    assert status == 0, f"exit {status}:\n{server.log()}"
    assert_no_write_errors(server.log())
    assert "Server stopping" in server.log()


def stop_while_held(
    server: ServerProcess,
    path: str,
    mark: Path,
    go: Path,
    absent: str,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Open ``path``, whose request makes ``mark`` and then waits for ``go``; SIGTERM (or
    ``sig``) the server once ``mark`` is there, then let the request go on: its
    connection gets 1001 as it opens, and the server exits promptly (with SIGHUP, a
    reload: serves again). ``absent``: what a missing ``mark`` means."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(raw_client, server, path)  # returns at the 101
        deadline = time.monotonic() + TIMEOUT
        while not mark.exists():
            assert time.monotonic() < deadline and not pending.done(), absent
            time.sleep(0.02)
        server.process.send_signal(sig)
        time.sleep(SIGNAL_HANDLED)  # the goodbyes to what was open (nothing) have begun
        go.touch()
        client = pending.result(TIMEOUT)
    with client:
        event = client.recv()
        if event == "ready":  # the view may speak before the goodbye
            event = client.recv()
        assert isinstance(event, Close) and event.code == 1001, event
        assert read_until_eof(client.sock) == b""
    if sig == signal.SIGHUP:
        echo_once_serving(server, "after the reload")
    else:
        status = server.process.wait(STOP_TIMEOUT)
        assert status == 0 or status == -signal.SIGTERM, f"exit {status}:\n{server.log()}"
    assert_no_write_errors(server.log())


@pytest.mark.parametrize(
    ("name", "exc", "code"),
    [
        ("gevent", "GreenletExit", 1001),
        ("gunicorn-gevent", "GreenletExit", 1001),
        ("gunicorn-gthread", "SystemExit", 1001),
        ("eventlet", "Timeout", 1011),
    ],
)
def test_killed_view_ends_cleanly(tmp_path: Path, name: str, exc: str, code: int) -> None:
    """A view ended by the exception its server kills with: a close frame, EOF, and
    nothing else on the wire; no write error in the log. (eventlet logs the traceback
    of a Timeout that escapes a view, as of any application error: that one is
    expected.)"""
    server = start_server(name, tmp_path / "server.log")
    try:
        with raw_client(server, f"/lifecycle/die/?exc={exc}") as client:
            assert client.recv() == "ready"
            client.send("die now")
            expect_close_then_eof(client, code)
        # The server is still serving (gthread: SystemExit ends the worker, which gunicorn
        # replaces).
        echo_once_serving(server, "after")
    finally:
        server.stop()
    log = server.log()
    assert_no_write_errors(log)
    expected = 1 if exc == "Timeout" else 0
    assert log.count("Traceback (most recent call last)") == expected, log
    if expected:
        assert "eventlet.timeout.Timeout" in log


def test_gunicorn_sync_serves_one_connection_and_warns(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server("gunicorn-sync")
    with raw_client(server, "/echo/") as client:
        client.send("hello")
        assert client.recv() == "hello"
        client.send(b"\x00\x01")
        assert client.recv() == b"\x00\x01"
        client.sock.sendall(masked(0x8, b"\x03\xe8"))
        frames, trailing = split_frames(read_until_eof(client.sock))
    assert frames == [(0x88, b"\x03\xe8")] and trailing == b""
    log = server.log()
    assert "dwebsocket.W002" in log
    assert "dwebsocket.W007" not in log  # the recipe's -c python:dwebsocket.contrib.gunicorn


def test_a_quick_stop_of_a_sync_worker_subclass_says_goodbye_at_once(tmp_path: Path) -> None:
    """SIGINT (quick stop) of a worker whose class derives from gunicorn's sync worker:
    the 1001 goes out at once and the worker exits, as for the sync worker itself. The
    hook told the two apart by the class's name: for a subclass it waited for the view
    to return -- the view this very signal handler interrupted -- so the client got its
    1001 after WEBSOCKET_CLOSE_TIMEOUT (5 s) and the worker exited a second later.
    Here that timeout outlasts the client's own wait (``TIMEOUT``) and the wait for the
    exit: a goodbye waiting it fails them. (gunicorn logs the SystemExit that ends the
    request, as for any sync worker stopped mid-request: that traceback is expected.)"""
    server = start_server(
        "gunicorn-sync-subclass",
        tmp_path / "server.log",
        settings={"WEBSOCKET_CLOSE_TIMEOUT": 6 * TIMEOUT},
    )
    try:
        with raw_client(server, "/lifecycle/wait/") as client:
            assert client.recv() == "ready"
            server.process.send_signal(signal.SIGINT)
            expect_close_then_eof(client, 1001)
        server.process.wait(STOP_TIMEOUT)
    finally:
        server.stop()
    log = server.log()
    assert_no_write_errors(log)
    assert log.count("Traceback (most recent call last)") == 1, log
    assert "SystemExit: 0" in log


def test_gunicorn_sync_timeout_kill_ends_cleanly(tmp_path: Path) -> None:
    """gunicorn's --timeout aborts the worker (SystemExit inside the view): the client
    gets 1001 and EOF, not the 500 page gunicorn writes after a timeout. (gunicorn logs
    the timeout, with the SystemExit's traceback: that one is expected.)"""
    server = start_server(
        "gunicorn-sync", tmp_path / "server.log", env={"GUNICORN_CMD_ARGS": "--timeout 2"}
    )
    try:
        with raw_client(server, "/lifecycle/wait/") as client:
            assert client.recv() == "ready"
            client.sock.settimeout(TIMEOUT * 3)  # the arbiter notices within a few seconds
            event = client.recv()
            assert event == Close(1001, ""), event
            assert read_until_eof(client.sock) == b""
    finally:
        server.stop()
    log = server.log()
    assert "WORKER TIMEOUT" in log
    assert_no_write_errors(log)
    assert log.count("Traceback (most recent call last)") == 1, log
    assert "SystemExit: 1" in log


@pytest.mark.parametrize("name", ["waitress", "granian"])
def test_server_without_a_socket_refuses_with_501(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    pytest.importorskip(name, reason=f"{name} is not installed (pip install {name})")
    server = make_server(name)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/echo/"))
        status, _headers, body = read_http_response(sock)
    assert status == 501
    assert b"WebSockets are not available on this server" in body
    assert "WebSockets are not available on this server" in server.log()
    # Plain HTTP on the same view works.
    with urllib.request.urlopen(server.url("/echo/", "http"), timeout=TIMEOUT) as response:
        assert response.read() == b"echo: plain HTTP\n"


@pytest.mark.parametrize(
    ("conn_max_age", "atomic", "open_after_wait"),
    [(0, False, False), (None, False, True), (0, True, True)],
    ids=["max-age-0-closed", "persistent-kept", "in-atomic-kept"],
)
def test_wait_releases_database_connections(
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
    conn_max_age: int | None,
    atomic: bool,
    open_after_wait: bool,
) -> None:
    """Blocking in wait() applies Django's end-of-request rule (CONN_MAX_AGE) outside
    transactions; a connection inside atomic() is left alone."""
    databases = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(tmp_path / "db.sqlite3"),
            "CONN_MAX_AGE": conn_max_age,
        }
    }
    server = make_server("runserver", settings={"DATABASES": databases})
    path = "/lifecycle/db/" + ("?atomic=1" if atomic else "")
    with raw_client(server, path) as client:
        assert client.recv() == "ready"
        client.send("go on")
        report = client.recv()
        assert isinstance(report, str)
        assert json.loads(report) == {"open_after_wait": open_after_wait}


@pytest.mark.parametrize("name", ["gunicorn-gevent", "gunicorn-gthread"])
def test_gunicorn_reload_sends_1001_and_keeps_serving(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """HUP: gunicorn starts new workers and stops the old ones with SIGTERM; their open
    WebSockets get 1001, new connections reach the new workers. Those are tried once both
    old workers ("--workers 2") have exited: the one without a WebSocket found nothing to
    say goodbye to at its SIGTERM and, in the second it still accepts, could take the
    connection and say its own (per worker) goodbye to it -- a second "Server stopping"
    line in the server's log."""
    server = make_server(name)
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        server.process.send_signal(signal.SIGHUP)
        expect_close_then_eof(client, 1001)
    deadline = time.monotonic() + TIMEOUT
    while server.log().count("Worker exiting") < 2:
        assert time.monotonic() < deadline, f"the old workers did not exit:\n{server.log()}"
        time.sleep(0.1)
    echo_once_serving(server, "after the reload")
    assert_one_clean_goodbye(server)


@pytest.mark.parametrize("stop", ["reload", "SIGQUIT"])
def test_a_gevent_workers_goodbye_from_worker_int_is_said_once(
    make_server: Callable[..., ServerProcess], tmp_path: Path, stop: str
) -> None:
    """``--reload`` (a watched file changed) and the quick stop (SIGQUIT) call the
    ``worker_int`` hook, whose goodbye waits for the connections to close. Meanwhile
    gevent's worker, no longer alive, waits for its requests and tells the arbiter each
    second that it lives: the goodbye chained there did not know ``worker_int`` had said
    it, and said it again -- two "Server stopping" lines for one stop. Here the client
    answers the 1001 only once the worker gave up waiting for it, so that the connection is still
    open at that notice (WEBSOCKET_CLOSE_TIMEOUT, 2 s, outlasts its 1 s period)."""
    watched = tmp_path / "watched.py"
    watched.write_text("VERSION = 1\n")
    args = f"--reload --reload-extra-file {watched}" if stop == "reload" else ""
    server = make_server(
        "gunicorn-gevent",
        settings={"WEBSOCKET_CLOSE_TIMEOUT": 2},
        env={"GUNICORN_CMD_ARGS": args},
    )
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        if stop == "reload":
            # The reloader compares modification times (each second, or inotify's events):
            # write until it has noticed, in case the first write fell in the second of
            # the file's first look.
            deadline = time.monotonic() + TIMEOUT
            version = 1
            while "Worker reloading" not in server.log():
                assert time.monotonic() < deadline, server.log()
                version += 1
                watched.write_text(f"VERSION = {version}\n")
                time.sleep(1.1)
        else:
            server.process.send_signal(signal.SIGQUIT)
        deadline = time.monotonic() + TIMEOUT
        while "WebSocket closed" not in server.log():  # unanswered, after the close timeout
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        expect_close_then_eof(client, 1001)
    assert_one_clean_goodbye(server)


@pytest.mark.parametrize("name", ["gunicorn-gevent", "gunicorn-gthread"])
def test_a_gunicorn_reload_past_its_graceful_timeout_says_goodbye_once(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """A ``HUP`` reload whose old worker outlives ``--graceful-timeout`` (here 1 s, under
    WEBSOCKET_CLOSE_TIMEOUT: a client that does not answer the 1001, a dead link): the
    arbiter then sends that worker SIGTERM again each second, and each said the goodbye
    again; so did the exit hook, as the worker left its wait for the requests -- up to
    five "Server stopping" lines for one connection. The client answers only once the
    worker gave up waiting for it."""
    server = make_server(
        name,
        settings={"WEBSOCKET_CLOSE_TIMEOUT": 3},
        env={"GUNICORN_CMD_ARGS": "--graceful-timeout 1"},
    )
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while "WebSocket closed" not in server.log():  # unanswered, after the close timeout
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        expect_close_then_eof(client, 1001)
    echo_once_serving(server, "after the reload")
    assert_one_clean_goodbye(server)


@pytest.mark.parametrize("name", ["uwsgi-takeover", "uwsgi-gevent"])
def test_uwsgi_reload_sends_1001_and_keeps_serving(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """HUP: uWSGI's graceful reload waits --worker-reload-mercy (60 s) for each worker's
    requests, which for WebSockets never end by themselves, then kills the worker: its
    open WebSockets were cut without a close frame a minute later, and the new workers
    started only then. They get 1001 at once, and the reload goes on."""
    server = make_server(name)
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        server.process.send_signal(signal.SIGHUP)
        expect_close_then_eof(client, 1001)
    echo_once_serving(server, "after the reload")
    assert_one_clean_goodbye(server)


@pytest.mark.parametrize("name", ["gunicorn-gevent", "gunicorn-gthread"])
def test_gunicorn_max_requests_recycling_sends_1001(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """--max-requests: a worker that took its last request stops accepting and exits
    once its requests are over, which for a WebSocket is at --graceful-timeout (gunicorn
    replaces it only then). Its open WebSockets get 1001 at once instead, and it exits.
    (The WebSocket is that last request here: the limit is 1. So it opens in a stopping
    worker, and gets 1001 as it opens: the goodbye, on a thread (greenlet) of its own,
    goes out before the view's "ready" or after it.)"""
    server = make_server(name, env={"GUNICORN_CMD_ARGS": "--max-requests 1 --graceful-timeout 60"})
    with raw_client(server, "/lifecycle/wait/") as client:
        event = client.recv()
        if event == "ready":
            event = client.recv()
        assert event == Close(1001, "server shutting down"), event
        assert read_until_eof(client.sock) == b""
    deadline = time.monotonic() + TIMEOUT
    while "Worker exiting" not in server.log():
        assert time.monotonic() < deadline, f"the worker did not exit:\n{server.log()}"
        time.sleep(0.1)
    with urllib.request.urlopen(server.url("/echo/", "http"), timeout=TIMEOUT) as response:
        assert response.read() == b"echo: plain HTTP\n"
    assert_no_write_errors(server.log())


@pytest.mark.parametrize("name", ["gunicorn-gevent", "gunicorn-gthread"])
def test_gunicorn_workers_left_by_a_dead_arbiter_send_1001(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """The arbiter killed (the OOM killer, SIGKILL): each worker sees its parent gone and
    stops by itself, waiting --graceful-timeout for its requests. Its open WebSockets get
    1001 at once instead. (make_server's stop kills the workers left, if any.)"""
    server = make_server(name, env={"GUNICORN_CMD_ARGS": "--graceful-timeout 60"})
    with raw_client(server, "/lifecycle/wait/") as client:
        assert client.recv() == "ready"
        server.process.kill()
        expect_close_then_eof(client, 1001)
    assert_no_write_errors(server.log())


@pytest.mark.parametrize(
    "name",
    ["runserver", "gevent", "eventlet", "gunicorn-gthread", "gunicorn-gevent", "uwsgi-takeover"],
)
def test_a_client_that_reads_nothing_delays_a_stop_once(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """A client that stopped reading (its view blocked sending): its goodbye cannot go
    out. The stop gives up on it after WEBSOCKET_CLOSE_TIMEOUT (1 s here), once -- not a
    second time in the exit hook, which made the stop twice as long (past STOP_TIMEOUT,
    and past the 10 s docker stop allows) -- and shuts the connection down, which ends
    the view's write at once: eventlet, gunicorn (whose stops wait for the views) and a
    stop callable waited for that write's own timeout (WEBSOCKET_PING_TIMEOUT, 20 s)."""
    server = make_server(name, settings={"WEBSOCKET_CLOSE_TIMEOUT": 1})
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with RawClient(sock) as client:
        client.handshake(f"/big/?size={64 << 20}")  # then reads nothing
        time.sleep(SIGNAL_HANDLED)  # the view is sending
        status = server.stop(signal.SIGTERM)
    assert status != -signal.SIGKILL, f"{name} had to be killed:\n{server.log()}"
    assert_one_clean_goodbye(server)
