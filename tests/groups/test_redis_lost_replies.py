"""A command whose reply never came back is never sent again: it may have run.

The layer talks to a real (private) redis-server through :class:`ReplyDropper`, a TCP
forwarder on 127.0.0.1 that, once armed, forwards one command to Redis, waits for Redis's
reply (so the command ran), and closes the client's side instead of forwarding it: what
a sender sees of a connection that broke, or of a Redis restarting, right after a command
ran. Another layer ("process") connected straight to the server, a raw subscriber, or the
group's stream count what arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from django.test import override_settings

from dwebsocket.exceptions import GroupsUnavailable
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.presence import Local, load_info
from dwebsocket.groups.redis import RedisLayer
from dwebsocket.websocket import Message
from tests.groups.redis_server import RedisServer
from tests.groups.test_redis_layer import FOREVER, returns, until

WAIT = 10.0  # seconds any wait below may take at most
QUIET = 0.5  # seconds in which a duplicate, if any, would have arrived (loopback)
HOST = "127.0.0.1"


class ReplyDropper:
    """Forwards every connection to Redis; :meth:`arm` makes it drop one reply: that of
    the next command whose bytes contain ``marker``, then close that client's side."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._victim: socket.socket | None = None  # the client whose reply is dropped
        self._before = False
        self._times = 0  # armed commands left to drop
        self.dropped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="dropper", daemon=True)
        self._thread.start()

    def url(self, query: str = "socket_timeout=1&socket_connect_timeout=1") -> str:
        return f"redis://{HOST}:{self.port}/0?{query}"

    def arm(self, marker: bytes, *, before: bool = False, times: int = 1) -> None:
        """``before``: drop the command itself instead (Redis never gets it), as a
        connection that broke while it was being sent; ``times``: so many commands in a
        row, each on its connection (``before`` only)."""
        assert times == 1 or before
        with self._lock:
            self._marker, self._victim, self._before = marker, None, before
            self._times = times
            self.dropped.clear()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(WAIT)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            self._end(sock)

    @staticmethod
    def _end(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self._target), timeout=WAIT)
            except OSError:
                client.close()  # Redis is down: so is the connection
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to Redis: everything, noting the armed command's connection."""
        try:
            while data := client.recv(65536):
                with self._lock:
                    armed = self._marker is not None and self._marker in data
                    if armed:
                        self._times -= 1
                        self._victim = client
                        if not self._times:
                            self._marker = None
                    cut = armed and self._before
                if cut:
                    self.dropped.set()
                    self._end(client)
                    return
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._end(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        """Redis to client: everything but the armed command's reply, which ends the
        client's connection instead (Redis ran the command: here is its reply)."""
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    victim = self._victim is client
                    if victim:
                        self._victim = None
                if victim:
                    self.dropped.set()  # before the client can see it
                    self._end(client)
                    return
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._end(client)


class Inbox:
    """A group member that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()

    def deliver(self, message: Message) -> None:
        self.messages.put(message)

    def is_closed(self) -> bool:
        return False

    def get(self, timeout: float = WAIT) -> Message:
        return self.messages.get(timeout=timeout)

    def assert_empty(self, wait: float = QUIET) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)


@pytest.fixture
def dropper(redis_server: RedisServer) -> Iterator[ReplyDropper]:
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def layers() -> Iterator[Callable[[str], RedisLayer]]:
    made: list[RedisLayer] = []

    def make(url: str) -> RedisLayer:
        layer = RedisLayer(url, Registry())
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


def direct(server: RedisServer) -> str:
    return server.url + "?socket_timeout=1&socket_connect_timeout=1"


def published(server: RedisServer, channel: str) -> Callable[[], int]:
    """Start counting what is published on ``channel`` (a raw redis-py subscriber); the
    count, once nothing more came for :data:`QUIET` seconds."""
    client = redis.Redis(host=HOST, port=server.port, socket_timeout=WAIT)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    confirmed = pubsub.get_message(timeout=WAIT)  # Redis's: subscribed from now on
    assert confirmed is not None and confirmed["type"] == "subscribe"

    def count() -> int:
        seen = 0
        try:
            while pubsub.get_message(timeout=QUIET) is not None:
                seen += 1
        finally:
            pubsub.close()
            client.close()
        return seen

    return count


def test_a_publish_whose_reply_was_lost_is_not_sent_again(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The PUBLISH ran; its reply was lost with the connection. redis-py's retry sent it
    again: every member elsewhere got the message twice. Now it is sent once, and fails
    as one that never reached Redis (its members here get it; GroupsUnavailable if asked)
    -- but Redis still answers, so it is no outage: the next send, at once, reaches the
    other process. (It was held back, lost for the others, with an "unreachable" and a
    "reachable again" WARNING, for a connection closed alone: CLIENT KILL, a proxy.)"""
    sender, other = layers(dropper.url()), layers(direct(redis_server))
    here, there = Inbox(), Inbox()
    sender.join("room", here)
    other.join("room", there)
    sender.send("room", "warm")  # a pooled connection, through the dropper
    assert here.get() == there.get() == "warm"

    caplog.set_level(logging.DEBUG, logger="dwebsocket.groups")
    dropper.arm(b"PUBLISH")
    with pytest.raises(GroupsUnavailable):
        sender.send("room", "once", fail_silently=False)
    assert dropper.dropped.is_set()
    assert there.get() == "once"
    there.assert_empty()
    assert here.get() == "once"
    here.assert_empty()
    assert not sender.outage
    sender.send("room", "next", fail_silently=False)  # not held back
    assert there.get() == here.get() == "next"

    dropper.arm(b"PUBLISH")  # again: logged at DEBUG only
    sender.send("room", "twice")
    assert dropper.dropped.is_set() and not sender.outage
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert not [m for _, m in messages if "unreachable" in m or "reachable again" in m]
    lost = [level for level, m in messages if "not sent again" in m]
    assert lost == [logging.WARNING, logging.DEBUG]


def test_a_kept_send_whose_reply_was_lost_is_kept_and_published_once(
    dropper: ReplyDropper, redis_server: RedisServer, layers: Callable[[str], RedisLayer]
) -> None:
    """The script of a group with history appended and published; its reply was lost.
    Sent again, the message had a second entry in the stream under a new position
    (a member recovering got it twice) and reached every member twice. Redis answering
    still, it is no outage (as above)."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"feed": {"size": 100, "ttl": 600}}):
        sender, other = layers(dropper.url()), layers(direct(redis_server))
        there = Inbox()
        other.join("feed", there)
        assert sender.send("feed", "warm") == f"{sender._kept['feed'].epoch.decode()}:1"
        assert there.get() == "warm"

        dropper.arm(b"EVALSHA")
        assert sender.send("feed", "once") is None  # no answer: no position
        assert dropper.dropped.is_set()
        assert there.get() == "once"
        there.assert_empty()
        assert redis_server.command("XLEN", sender.stream("feed")) == b":2\r\n"
        # Redis answers: no outage, the next send is kept and published at once.
        assert not sender.outage
        assert sender.send("feed", "next", fail_silently=False) is not None
        assert there.get() == "next"


def test_a_connection_broken_by_a_redis_that_is_down_is_an_outage(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis is down, the proxy before it up: each connection is accepted, then closed
    -- a broken connection, as when a reply is lost, but the probe after it gets no
    answer either: the outage of the docstring, one WARNING, sends held back. The
    connections end at once, so the send waits out no timeout: they are made far longer
    than the test's own wait (:data:`FOREVER`), which a send waiting one fails."""
    sender = layers(dropper.url(f"socket_timeout={FOREVER}&socket_connect_timeout={FOREVER}"))
    here = Inbox()
    sender.join("room", here)
    sender.send("room", "warm")
    assert here.get() == "warm"

    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    redis_server.stop()
    returns(lambda: sender.send("room", "down"), WAIT)
    assert sender.outage and here.get() == "down"
    sender.send("room", "held")
    assert here.get() == "held"

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "unreachable" in r.getMessage()]

    # The reader may be the one that found the outage (its connection closed too): it
    # sets ``outage`` first and logs after, so its WARNING may come after the sends.
    until(lambda: bool(warnings()))
    assert len(warnings()) == 1
    assert not [r for r in caplog.records if "not sent again" in r.getMessage()]


@pytest.mark.parametrize("before", [True, False], ids=["cut-before", "reply-lost"])
def test_a_command_whose_connection_broke_is_sent_again(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    before: bool,
) -> None:
    """A command (``users.disconnect``'s close, a session check: kind 3) may run twice --
    a socket closed or checked again is nothing more -- but must not be lost: a revocation
    lost with a broken connection left a banned user's sockets open in the other
    processes. So, unlike a message, it is sent again once: published once if the
    connection broke before Redis had it, twice if only the reply was lost; no outage
    either way. (It failed with GroupsUnavailable, not published when cut before.)"""
    sender = layers(dropper.url())
    sender.control("room", b'{"op": "warm"}')
    count = published(redis_server, "dwebsocket:0:room")
    dropper.arm(b"PUBLISH", before=before)
    sender.control("room", b'{"op": "once"}', fail_silently=False)
    assert dropper.dropped.is_set()
    assert count() == (1 if before else 2)
    assert not sender.outage


def test_a_batch_of_commands_whose_connection_broke_is_sent_again(
    dropper: ReplyDropper, redis_server: RedisServer, layers: Callable[[str], RedisLayer]
) -> None:
    """As above, for ``control_many`` (``clearsessions`` revoking many sessions: one
    script for the batch)."""
    sender = layers(dropper.url())
    sender.control("room", b'{"op": "warm"}')
    count = published(redis_server, "dwebsocket:0:a")
    dropper.arm(b"EVALSHA", before=True)
    sender.control_many(["a", "b"], b'{"op": "once"}', fail_silently=False)
    assert dropper.dropped.is_set()
    assert count() == 1
    assert not sender.outage


def present(layer: RedisLayer, user: str) -> None:
    """A socket of ``user`` becomes a present member of "room" in ``layer``'s process."""
    info = json.dumps({"name": user})
    entry = Local(f"user:{user}", user, info, load_info(info))
    count, shown = layer.registry.presence.add("room", Inbox(), entry)
    layer.present("room", entry, count, shown, True)


def event(message: Message) -> tuple[str, str]:
    found = json.loads(message)
    return found["presence"], found["key"]


@pytest.mark.parametrize("before", [True, False], ids=["cut-before", "reply-lost"])
def test_a_presence_write_whose_connection_broke_is_written_again_its_event_once(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    before: bool,
) -> None:
    """A join's presence script, whose connection broke while Redis answers, is run
    once more, as a command is: run twice, it changes nothing the second time and
    publishes no second event. It was taken for an outage ("unreachable", the sends held
    back) and its join decided here alone: when Redis had run it (only the reply lost),
    the listeners here got the join twice (from Redis, and from that decision), and
    those of the other processes twice too, once the next heartbeat published it."""
    sender, other = layers(dropper.url()), layers(direct(redis_server))
    here, there = Inbox(), Inbox()
    for layer, inbox in ((sender, here), (other, there)):
        layer.join("room", inbox)
        layer.registry.presence.listen("room", inbox)
    present(sender, "bob")  # the script loaded, a pooled connection through the dropper
    assert event(here.get()) == event(there.get()) == ("join", "user:bob")

    dropper.arm(b"EVALSHA", before=before)
    present(sender, "alice")
    assert dropper.dropped.is_set()
    assert not sender.outage
    assert event(here.get()) == event(there.get()) == ("join", "user:alice")
    deadline = time.monotonic() + WAIT
    while sender._held_back(None):  # (as it was, after the outage it took it for)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sender.heartbeat("room", *sender._times()[1:])  # publishes what was decided here alone
    here.assert_empty()
    there.assert_empty()
    assert sorted(p.key for p in other.presence("room")) == ["user:alice", "user:bob"]


def subscribers(server: RedisServer, channel: str) -> int:
    reply = server.command("PUBSUB", "NUMSUB", channel)
    return int(reply.split(b"\r\n")[-2].lstrip(b":"))


def test_the_send_after_a_restart_is_not_lost(
    redis_server: RedisServer, layers: Callable[[str], RedisLayer]
) -> None:
    """Redis restarted between two sends: the pooled connection is closed, and the next
    send must go out on a new one (the pool finds the old one closed when it hands it
    out), not fail, nor be taken for an outage; a group with history too (its script
    is loaded again)."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"feed": {"size": 100, "ttl": 600}}):
        sender, other = layers(direct(redis_server)), layers(direct(redis_server))
        room, feed = Inbox(), Inbox()
        other.join("room", room)
        other.join("feed", feed)
        sender.send("room", "before", fail_silently=False)
        assert sender.send("feed", "before", fail_silently=False) is not None
        assert room.get() == feed.get() == "before"

        redis_server.restart()  # empty: subscribed again once it counts the subscriber
        deadline = time.monotonic() + 20
        while not all(subscribers(redis_server, f"dwebsocket:0:{g}") for g in ("room", "feed")):
            assert time.monotonic() < deadline, "the other process did not subscribe again"
            time.sleep(0.01)
        sender.send("room", "after", fail_silently=False)
        assert sender.send("feed", "after", fail_silently=False) is not None
        assert room.get() == feed.get() == "after"
        assert not sender.outage


def test_a_command_whose_connection_broke_twice_while_redis_answers_is_no_outage(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A command's connection broke, and so did the one it was sent again on, while Redis
    was up (a proxy resetting them, ``CLIENT KILL``). That was taken for an outage with
    no question asked -- "unreachable" logged, every send and command of the process
    held back, lost for the other processes, for a Redis that answered all along. Now
    Redis is asked (a PING) before the second try, as after a message's broken
    connection: it answers, so the command fails alone (GroupsUnavailable; the caller,
    ``users.disconnect``, says the other processes were not told), and the next one goes
    out at once."""
    sender = layers(dropper.url())
    sender.control("room", b'{"op": "warm"}', fail_silently=False)
    count = published(redis_server, "dwebsocket:0:room")
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    dropper.arm(b"PUBLISH", before=True, times=2)
    with pytest.raises(GroupsUnavailable):
        sender.control("room", b'{"op": "once"}', fail_silently=False)
    assert dropper.dropped.is_set()
    assert not sender.outage
    sender.control("room", b'{"op": "next"}', fail_silently=False)  # not held back
    assert count() == 1
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


@pytest.mark.usefixtures("long_first_pause")  # the next command falls in it
def test_a_command_to_a_redis_that_is_down_is_an_outage_at_once(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis is down behind a proxy that closes each connection: a command's connection
    breaks, the PING finds no Redis, and the command is an outage (one WARNING, the next
    calls held back) without being sent a second time into a closed connection."""
    sender = layers(dropper.url())
    sender.control("room", b'{"op": "warm"}', fail_silently=False)
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    redis_server.stop()
    with pytest.raises(GroupsUnavailable):
        sender.control("room", b'{"op": "down"}', fail_silently=False)
    assert sender.outage
    with pytest.raises(GroupsUnavailable, match="not retried yet"):
        sender.control("room", b'{"op": "held"}', fail_silently=False)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


@pytest.mark.parametrize("before", [True, False], ids=["cut-before", "reply-lost"])
def test_a_heartbeat_whose_connection_broke_is_no_outage(
    dropper: ReplyDropper,
    redis_server: RedisServer,
    layers: Callable[[str], RedisLayer],
    before: bool,
) -> None:
    """A presence heartbeat whose connection broke while Redis answers (a proxy resetting
    it, ``CLIENT KILL``) was taken for an outage: "unreachable" logged and the process's
    group messages held back from the other processes, for a Redis that answered. A plain
    heartbeat is sent once more (run twice, it changes nothing more: the dead processes'
    entries it removes are gone the second time); no outage either way."""
    sender = layers(dropper.url())
    present(sender, "bob")  # the scripts loaded, a pooled connection through the dropper
    dropper.arm(b"EVALSHA", before=before)
    sender.heartbeat("room", *sender._times()[1:])
    assert dropper.dropped.is_set()
    assert not sender.outage
    assert not sender._held_back(None)
    assert "room" not in sender._unsynced  # the second run went through


def test_a_sync_heartbeat_whose_connection_broke_is_no_outage_and_not_run_twice(
    dropper: ReplyDropper, redis_server: RedisServer, layers: Callable[[str], RedisLayer]
) -> None:
    """A sync (after a failed write) publishes the events its process decided alone: run
    twice, it would publish them twice. Its broken connection, Redis answering, is no
    outage; it is not run again there, and the next heartbeat syncs."""
    sender, other = layers(dropper.url()), layers(direct(redis_server))
    there = Inbox()
    other.join("room", there)
    other.registry.presence.listen("room", there)
    present(sender, "bob")
    assert event(there.get()) == ("join", "user:bob")
    dropper.arm(b"EVALSHA", before=False)  # the sync ran, its reply lost
    sender.heartbeat("room", *sender._times()[1:], sync=True)
    assert dropper.dropped.is_set()
    assert not sender.outage
    assert not sender._held_back(None)
    assert "room" in sender._unsynced
    sender.heartbeat("room", *sender._times()[1:])
    assert "room" not in sender._unsynced
    there.assert_empty()
