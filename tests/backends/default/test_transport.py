"""Finding the socket and the bytes the server already buffered."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dwebsocket.backends.default import transport as transport_module
from dwebsocket.backends.default.transport import Transport
from tests.requirements import c_extension


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    # wait_readable() gives back the thread's idle database connections before blocking;
    # this thread may hold one from another test, and the database is not the point here.
    monkeypatch.setattr(transport_module, "release_idle_connections", lambda: None)


def test_take_over_drains_what_the_server_buffered(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x05first")
    with server.makefile("rb") as rfile:
        while rfile.readline() not in (b"\r\n", b""):
            pass  # the server parsed the head; the frame sits in its buffer
        transport = Transport(server, server="test", rfile=rfile)
        assert transport.take_over(3.0) == b"\x81\x05first"
        assert server.gettimeout() == 3.0
        assert not transport.wait_readable(0)
        client.sendall(b"more")
        assert transport.wait_readable(1.0)
        assert transport.recv() == b"more"


def test_take_over_with_nothing_buffered(pair) -> None:  # type: ignore[no-untyped-def]
    server, _ = pair
    with server.makefile("rb") as rfile:
        assert Transport(server, server="test", rfile=rfile).take_over(None) == b""
    assert server.gettimeout() is None


def test_shutdown_gives_the_peer_eof_and_is_idempotent(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    transport = Transport(server, server="test")
    transport.shutdown()
    transport.shutdown()
    client.settimeout(1.0)
    assert client.recv(1) == b""
    with pytest.raises(OSError):
        server.sendall(b"the server's late response")


def test_release_hook(pair) -> None:  # type: ignore[no-untyped-def]
    calls = []
    Transport(pair[0], server="test", on_release=lambda: calls.append(1)).release()
    assert calls == [1]


def run_script(source: str) -> None:
    """Run ``source`` in a fresh interpreter (monkey-patching is per process); it must
    print "ok"."""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.stdout.strip() == "ok", result.stderr


_EVENTLET_NO_YIELD = """
import eventlet
eventlet.monkey_patch()
import socket
from dwebsocket.backends.default.transport import Transport

a, b = socket.socketpair()
transport = Transport(a, server="eventlet")
transport.take_over(5.0)
ran = []
eventlet.spawn(ran.append, 1)  # runs at the first switch to the hub
assert transport.try_send(b"x" * 10) == 10
assert transport.try_recv() is None  # nothing to read: no wait for it either
b.sendall(b"pong")
assert transport.try_recv() == b"pong"
assert ran == [], "try_send/try_recv switched to eventlet's hub"
eventlet.sleep(0)
assert ran == [1]
print("ok")
"""


def test_raw_reads_and_writes_never_wait_under_eventlet() -> None:
    # eventlet's monkey-patching makes os.read/os.write wait in its hub before each call:
    # a write that yielded let the session end and the fd be closed under it (EBADF).
    pytest.importorskip("eventlet")
    run_script(_EVENTLET_NO_YIELD)


_GEVENT_WAITER = """
from gevent import monkey
monkey.patch_all()
import socket, time
import gevent
from dwebsocket.backends.default import transport as transport_module
from dwebsocket.backends.default.transport import Transport

transport_module.release_idle_connections = lambda: None  # no database here
if WAITER == "python":
    transport_module._fastpath = None
a, b = socket.socketpair()
transport = Transport(a, server="gevent")
transport.take_over(5.0)
waiter = transport._waiter
assert type(waiter).__name__ == {"c": "Waiter", "python": "_GeventReadWaiter"}[WAITER], waiter

# Readable: the io watcher switches straight back to the waiting greenlet.
gevent.spawn_later(0.05, b.sendall, b"x")
assert transport.wait_readable(5.0) is True and transport.recv() == b"x"
# Nothing comes: False, not before the timeout has passed (a timer due halfway ran).
halfway = gevent.spawn_later(0.05, lambda: None)
assert transport.wait_readable(0.1) is False
assert halfway.ready()

# Readable while the greenlet waits on something else (the C waiter's io watcher stays
# started between waits): that wait is not disturbed, and the next wait ends at once.
gevent.spawn_later(0.01, b.sendall, b"z")
halfway = gevent.spawn_later(0.05, lambda: None)
gevent.sleep(0.1)
assert halfway.ready()  # the sleep was not cut short when "z" came
assert waiter.wait(time.monotonic() + 5.0) is True and transport.recv() == b"z"

# Two greenlets wait at once: the second is refused the waiter (None) and polls; the
# byte wakes both.
results = []
def wait_for(name):
    results.append((name, transport.wait_readable(5.0)))
first = gevent.spawn(wait_for, "first")
gevent.sleep(0.01)
assert waiter.wait(time.monotonic() + 1.0) is None  # busy: first holds it
second = gevent.spawn(wait_for, "second")
gevent.sleep(0.01)
b.sendall(b"y")
gevent.joinall([first, second], timeout=5)
assert sorted(results) == [("first", True), ("second", True)], results
assert transport.recv() == b"y"

# A real thread (with a hub of its own) is refused the waiter too, and polls.
seen = []
# An OS lock: the original threading.Event is built on the patched module's Condition,
# and gevent before 26.8 never wakes a greenlet waiting on it from another thread.
done = monkey.get_original("_thread", "allocate_lock")()
done.acquire()
def in_thread():
    seen.append(waiter.wait(time.monotonic() + 0.05))
    seen.append(transport.wait_readable(0.05))
    done.release()
monkey.get_original("_thread", "start_new_thread")(in_thread, ())
assert done.acquire(timeout=5)
assert seen == [None, False], seen

# Between waits the io watcher does not keep the loop alive (gevent.wait() returns).
gevent.spawn_later(0.01, b.sendall, b"w")
assert waiter.wait(time.monotonic() + 5.0) is True and transport.recv() == b"w"
assert gevent.wait(timeout=5) is True

# Closed (by release()) while a greenlet waits: that wait ends with False, and later
# ones are refused (None) so that callers poll.
waiting = gevent.spawn(waiter.wait, None)
gevent.sleep(0.01)
waiter.close()
assert waiting.get(timeout=5) is False
assert waiter.wait(None) is None

# close() of a waiter whose greenlet is readable in the same turn of the loop: that wait
# ends False (never True after close), and the wake-up scheduled by close() does not
# switch into the greenlet later, when it waits on something else (a stray switch).
import gevent.event
pairs = [socket.socketpair() for _ in range(2)]
transports = [Transport(server_end, server="gevent") for server_end, _ in pairs]
for each in transports:
    each.take_over(5.0)
waiters = [each._waiter for each in transports]
outcome = {}
def waits_then_closes_the_other(i):
    readable = waiters[i].wait(None)
    waiters[1 - i].close()  # the other may still be waiting, and readable too
    try:
        outcome[i] = (readable, gevent.event.Event().wait(0.2))
    except BaseException as exc:  # a stray switch
        outcome[i] = (readable, repr(exc))
greenlets = [gevent.spawn(waits_then_closes_the_other, i) for i in range(2)]
gevent.sleep(0.05)
for _, client_end in pairs:
    client_end.sendall(b"!")  # both readable before the hub runs again
gevent.joinall(greenlets, timeout=5)
assert sorted(outcome.values()) == [(False, False), (True, False)], outcome

# close() from another OS thread (the hub may be inside libev without the GIL): the
# watchers are freed in the hub's thread, and the wait in progress ends (False).
get_ident = monkey.get_original("_thread", "get_ident")
c3, d3 = socket.socketpair()
t3 = Transport(c3, server="gevent")
t3.take_over(5.0)
w3 = t3._waiter
closed_in = []
if WAITER == "python":
    close_io = w3._close_io
    w3._close_io = lambda: (closed_in.append(get_ident()), close_io())
waiting = gevent.spawn(w3.wait, None)
gevent.sleep(0.01)
monkey.get_original("_thread", "start_new_thread")(w3.close, ())
assert waiting.get(timeout=5) is False
assert w3.wait(None) is None
if WAITER == "python":
    assert closed_in == [get_ident()], closed_in
print("ok")
"""


@pytest.mark.parametrize("waiter", ["c", "python"])
def test_the_gevent_waiter(waiter: str) -> None:
    pytest.importorskip("gevent")
    if waiter == "c":
        c_extension(transport_module._fastpath, "_fastpath")
    run_script(f"WAITER = {waiter!r}\n" + _GEVENT_WAITER)


_WHILE_A_WAIT_BEGINS = """
from gevent import monkey
monkey.patch_all()
import socket, time
import gevent
from dwebsocket.backends.default import transport as transport_module

hub = gevent.get_hub()
armed = []


class Loop:
    # The hub's loop, with Python code run while a wait arms its timer (the C waiter may
    # run Python there in any case: a garbage collection's finalizers). That code ends
    # the session: Transport.release() closes the waiter.
    def __getattr__(self, name):
        return getattr(hub.loop, name)

    def timer(self, *args, **kwargs):
        if armed:
            armed.pop()()
        return hub.loop.timer(*args, **kwargs)


class Hub:
    loop = Loop()
    switch = hub.switch


a, b = socket.socketpair()
if WAITER == "c":
    waiter = transport_module._fastpath.Waiter(Hub(), a.fileno())
else:
    waiter = transport_module._GeventReadWaiter(a, Hub())
gevent.spawn_later(0.01, b.sendall, b"x")
assert waiter.wait(None) is True and a.recv(1) == b"x"  # the greenlet's first wait

if SCENARIO == "another greenlet waits":
    # Another greenlet's wait meanwhile (the Python code yields): one of the two is
    # refused (None: its caller polls) and the other is woken; neither waits for ever.
    results = {}

    def wait(name, deadline):
        results[name] = waiter.wait(deadline)

    armed.append(lambda: (gevent.spawn(wait, "second", None), gevent.sleep(0.01)))
    first = gevent.spawn(wait, "first", time.monotonic() + 60)
    gevent.sleep(0.05)
    b.sendall(b"x")
    gevent.joinall([first], timeout=5)
    gevent.sleep(0.05)
    assert sorted(map(repr, results.values())) == ["None", "True"], results
    assert a.recv(1) == b"x"
    waiter.close()
    print("ok")
    raise SystemExit

armed.append(waiter.close)
try:
    result = gevent.with_timeout(10, waiter.wait, time.monotonic() + 60)
except gevent.Timeout:
    result = "still waiting after close()"
assert armed == [], "the wait armed no timer"
assert result is False, result  # ended by close(), as a wait in progress is
b.sendall(b"y")  # a watcher left started would switch into this greenlet now
gevent.sleep(0.05)
assert waiter.wait(None) is None
assert gevent.wait(timeout=5) is True  # and no watcher keeps the loop alive
print("ok")
"""


@pytest.mark.parametrize("scenario", ["closed", "another greenlet waits"])
@pytest.mark.parametrize("waiter", ["c", "python"])
def test_what_comes_while_a_wait_begins(waiter: str, scenario: str) -> None:
    # The C waiter crashed on a close() there (its wake-up target cleared) once the socket
    # was readable, and both waited on the closed waiter until the deadline; with another
    # greenlet's wait there, one of the two greenlets was never woken.
    pytest.importorskip("gevent")
    if waiter == "c":
        c_extension(transport_module._fastpath, "_fastpath")
    run_script(f"WAITER = {waiter!r}\nSCENARIO = {scenario!r}\n" + _WHILE_A_WAIT_BEGINS)


def test_a_socket_opened_at_takeover_is_ours(pair) -> None:  # type: ignore[no-untyped-def]
    # uWSGI's takeover: a dup of the server's fd, made only once the WebSocket is accepted.
    opened: list[socket.socket] = []

    def open_socket() -> socket.socket:
        opened.append(socket.socket(fileno=os.dup(pair[0].fileno())))
        return opened[-1]

    transport = Transport(None, server="test", open_socket=open_socket)
    assert "fd=-" in repr(transport) and opened == []
    transport.shutdown()  # never opened: nothing to shut down, nothing opened
    assert opened == []
    assert transport.take_over(1.0) == b""
    assert transport.sock is opened[0]
    transport.release()
    assert opened[0].fileno() == -1  # ours: closed
    pair[0].send(b"x")  # the server's: still open


def test_a_socket_or_open_socket(pair) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        Transport(None, server="test")
    with pytest.raises(TypeError):
        Transport(pair[0], server="test", open_socket=lambda: pair[0])


def test_the_python_wait_gives_database_connections_back_once_a_second(
    pair,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """The Python twin of the C path's rule (``test_fastpath.py``,
    ``test_database_connections_are_released_once_a_second``): the first blocking wait
    releases, the next ones within the second do not, and an idle wait is cut at the
    second for the next release, then goes on."""
    import threading
    import time

    server, client = pair
    releases: list[float] = []
    monkeypatch.setattr(
        transport_module, "release_idle_connections", lambda: releases.append(time.monotonic())
    )
    transport = Transport(server, server="test")
    assert transport.take_over(3.0) == b""
    client.sendall(b"a")
    assert transport.wait_readable(1.0) and transport.recv() == b"a"
    client.sendall(b"b")
    assert transport.wait_readable(1.0) and transport.recv() == b"b"
    assert len(releases) == 1
    idle_from = time.monotonic()
    timer = threading.Timer(1.3, client.sendall, (b"c",))
    timer.start()
    try:
        assert transport.wait_readable(5.0) and transport.recv() == b"c"
    finally:
        timer.cancel()
    assert len(releases) == 2
    assert releases[1] - releases[0] >= 0.99 and releases[1] - idle_from < 1.1
