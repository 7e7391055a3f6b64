"""The Redis layer on its own, through a real (private) redis-server.

Each ``RedisLayer`` here has its own registry, subscription and origin, exactly as one per
process would, so two of them stand for two processes. Members are :class:`Inbox` objects:
the layer's member interface is only ``deliver()`` + ``is_closed()`` (real WebSockets are
used by the server tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from django.test import override_settings

from dwebsocket.exceptions import InvalidSetting
from dwebsocket.groups import GroupsUnavailable, control
from dwebsocket.groups import redis as redis_layer
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.presence import Local
from dwebsocket.groups.redis import RedisLayer, decode, encode, redact
from dwebsocket.websocket import Message
from tests.groups.redis_server import RedisServer

T = TypeVar("T")

WAIT = 10.0  # seconds any wait below may take at most
FOREVER = 6 * WAIT  # socket timeouts a call must never wait out: it outlasts WAIT


class Inbox:
    """A group member that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.closed = False

    def deliver(self, message: Message) -> None:
        if not self.closed:
            self.messages.put(message)

    def is_closed(self) -> bool:
        return self.closed

    def get(self, timeout: float = WAIT) -> Message:
        return self.messages.get(timeout=timeout)

    def get_all(self, count: int) -> list[Message]:
        return [self.get() for _ in range(count)]

    def assert_empty(self, wait: float = 0.2) -> None:
        """Nothing more arrives within ``wait`` (a negative check: bounded, never timed)."""
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)


def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def returns(call: Callable[[], T], within: float = WAIT) -> T:
    """``call()``'s result (or exception), the call run in a thread and given ``within``
    seconds: one still waiting then fails the test. For a call that must wait out no
    timeout: the test sets that timeout far above ``within``, so that a call waiting it
    is told from one that did not by whether it returned, not by how long it took."""
    outcome: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def run() -> None:
        try:
            outcome.put((True, call()))
        except BaseException as exc:  # handed to the test's thread
            outcome.put((False, exc))

    threading.Thread(target=run, name="returns", daemon=True).start()
    try:
        ok, value = outcome.get(timeout=within)
    except queue.Empty:
        pytest.fail(f"{call!r} still waiting after {within} s: it waited out a timeout")
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def two_in_room(layers: Callable[[], RedisLayer]) -> tuple[RedisLayer, RedisLayer, Inbox, Inbox]:
    """Two processes' layers, each with a member in group "room", which a message has
    reached both: ``(a, b, a's member, b's member)``."""
    a, b = layers(), layers()
    here, there = Inbox(), Inbox()
    a.join("room", here)
    b.join("room", there)
    a.send("room", "before")
    assert here.get() == there.get() == "before"
    return a, b, here, there


@pytest.fixture
def layers(redis_server: RedisServer) -> Iterator[Callable[..., RedisLayer]]:
    """Make layers ("processes") on the private Redis, with socket timeouts of 1 s unless
    ``timeout`` says; all closed after the test."""
    made: list[RedisLayer] = []

    def make(timeout: float = 1.0) -> RedisLayer:
        query = f"?socket_timeout={timeout}&socket_connect_timeout={timeout}"
        layer = RedisLayer(redis_server.url + query, Registry())
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


@pytest.fixture
def acl_layer(redis_server: RedisServer) -> Iterator[Callable[..., RedisLayer]]:
    """Make a layer ("process") logged in as ACL user "app", made with ``rules`` (ACL
    SETUSER's: "resetchannels", "&pattern"...); closed after the test."""
    made: list[RedisLayer] = []

    def make(*rules: str) -> RedisLayer:
        redis_server.command("ACL", "SETUSER", "app", "on", ">pw", "+@all", *rules)
        url = redis_server.url.replace("://", "://app:pw@")
        made.append(RedisLayer(f"{url}?socket_timeout=1&socket_connect_timeout=1", Registry()))
        return made[-1]

    yield make
    for layer in made:
        layer.close()


def numsub(server: RedisServer, channel: str) -> int:
    reply = server.command("PUBSUB", "NUMSUB", channel)
    return int(reply.split(b"\r\n")[-2].lstrip(b":"))


# -- the wire format ---------------------------------------------------------------------


def test_wire_format_bytes() -> None:
    origin = b"ORIGIN42"
    assert encode("é", origin, 7) == b"\x01ORIGIN42" + (7).to_bytes(8, "big") + "é".encode()
    assert encode(b"\x00\xff", origin, 2**64 - 1) == b"\x02ORIGIN42" + b"\xff" * 8 + b"\x00\xff"
    assert encode(bytearray(b"ab"), origin, 1)[17:] == b"ab"
    assert decode(encode("é", origin, 7)) == (origin, 7, "é")
    assert decode(encode(b"x", origin, 8)) == (origin, 8, b"x")
    assert decode(encode("", origin, 9)) == (origin, 9, "")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01short", b"\x03" + b"o" * 8 + b"\0" * 8, b"\x01" + b"o" * 8 + b"\0" * 8 + b"\xff"],
    ids=["empty", "short", "kind", "utf8"],
)
def test_wire_format_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_redact() -> None:
    assert redact("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    # A URL urlsplit cannot read (check dwebsocket.E020 quotes it) keeps no credentials.
    assert redact("redis://u:secret@[::1/0") == "redis://***@[::1/0"


# -- delivery ----------------------------------------------------------------------------


def test_round_trip_between_processes(layers: Callable[[], RedisLayer]) -> None:
    a, b = layers(), layers()
    member = Inbox()
    a.join("room", member)  # returns once Redis confirmed the subscription
    b.send("room", "hello")
    b.send("room", b"\x00\x01")
    assert member.get_all(2) == ["hello", b"\x00\x01"]


def test_own_messages_once(layers: Callable[[], RedisLayer]) -> None:
    a = layers()
    here = Inbox()
    a.join("room", here)
    for i in range(50):
        a.send("room", f"m{i}")
    assert here.get_all(50) == [f"m{i}" for i in range(50)]
    here.assert_empty()


def test_exactly_once_in_sender_order(layers: Callable[[], RedisLayer]) -> None:
    processes = [layers() for _ in range(3)]
    inboxes = []
    for layer in processes:
        for _ in range(3):
            inbox = Inbox()
            layer.join("room", inbox)
            inboxes.append(inbox)
    for i in range(100):
        for n, layer in enumerate(processes):
            layer.send("room", f"{n}:{i}")
    for inbox in inboxes:
        got = inbox.get_all(300)
        for n in range(3):
            assert [m for m in got if str(m).startswith(f"{n}:")] == [
                f"{n}:{i}" for i in range(100)
            ]
        inbox.assert_empty(0.05)


def test_only_members_receive(layers: Callable[[], RedisLayer]) -> None:
    a, b = layers(), layers()
    inside, outside, left = Inbox(), Inbox(), Inbox()
    a.join("room", inside)
    b.join("other", outside)
    b.join("room", left)
    b.leave("room", left)
    a.send("room", "for room")
    assert inside.get() == "for room"
    outside.assert_empty()
    left.assert_empty(0)


def test_one_subscription_per_process_and_per_group(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    a = layers()
    members = [Inbox() for _ in range(20)]
    for i, member in enumerate(members):
        a.join(f"g{i % 4}", member)
    a.join("g0", members[1])
    clients = redis_server.command("CLIENT", "LIST").decode().splitlines()
    assert [line for line in clients if " sub=0 " not in line and "sub=" in line] == [
        next(line for line in clients if " sub=4 " in line)
    ]
    assert numsub(redis_server, "dwebsocket:0:g0") == 1


def test_last_leave_unsubscribes(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    a = layers()
    one, two = Inbox(), Inbox()
    a.join("room", one)
    a.join("room", two)
    a.leave("room", one)
    assert "room" in a.subscriber.subscribed
    a.leave_all(two)
    until(lambda: "room" not in a.subscriber.subscribed)
    # The reader takes the group out of ``subscribed`` before it writes the UNSUBSCRIBE
    # ("surely subscribed" ends first): Redis may still count it for a moment.
    until(lambda: numsub(redis_server, "dwebsocket:0:room") == 0)
    a.join("room", one)  # and back
    assert "room" in a.subscriber.subscribed
    assert numsub(redis_server, "dwebsocket:0:room") == 1


def test_closed_members_are_dropped_at_delivery(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    a, b = layers(), layers()
    gone, staying = Inbox(), Inbox()
    a.join("room", gone)
    a.join("room", staying)
    gone.closed = True  # closed without anyone telling the layer
    b.send("room", "one")
    assert staying.get() == "one"
    assert a.registry.members("room") == [staying]
    staying.closed = True
    b.send("room", "two")
    until(lambda: "room" not in a.registry)
    until(lambda: numsub(redis_server, "dwebsocket:0:room") == 0)


def test_database_number_separates_sites(redis_server: RedisServer) -> None:
    one = RedisLayer(redis_server.url.replace("/0", "/1"), Registry())
    two = RedisLayer(redis_server.url.replace("/0", "/2"), Registry())
    try:
        member = Inbox()
        one.join("room", member)
        two.send("room", "other site")
        one.send("room", "same site")
        assert member.get() == "same site"
        member.assert_empty()
    finally:
        one.close()
        two.close()


def test_claims_are_bounded(layers: Callable[[], RedisLayer]) -> None:
    a = layers()
    member = Inbox()
    a.join("room", member)
    for i in range(5000):
        a.send("room", str(i))
    assert member.get_all(5000)[-1] == "4999"
    assert len(a._claims) <= 4096


# -- Redis faults ----------------------------------------------------------------------------


def test_outage_local_delivery_loss_elsewhere_and_resume(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The documented outage semantics, exactly: while Redis is down each process's own
    members still get its messages, other processes lose them (pub/sub has no history), no
    error reaches the sender, one WARNING per outage; afterwards delivery resumes by itself.
    """
    a, b, here, there = two_in_room(layers)

    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    redis_server.stop()
    until(lambda: not a.subscriber.connected and not b.subscriber.connected)
    for i in range(20):
        a.send("room", f"during {i}")  # neither raises nor blocks for long
    assert here.get_all(20) == [f"during {i}" for i in range(20)]

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "unreachable" in r.getMessage()]

    # b's reader says it once its first attempt to subscribe again fails (a closed
    # connection alone is no outage), a moment after the loss.
    until(lambda: len(warnings()) >= 2)
    time.sleep(0.3)  # the reader's next attempts: no more WARNINGs (a negative check)
    assert len(warnings()) == 2  # one per process, not one per message
    with pytest.raises(GroupsUnavailable):
        a.send("room", "strict", fail_silently=False)
    assert here.get() == "strict"

    redis_server.start()  # same port, empty: no subscriptions, no history
    until(
        lambda: "room" in a.subscriber.subscribed and "room" in b.subscriber.subscribed, timeout=20
    )
    a.send("room", "after")
    b.send("room", "after b")
    assert here.get_all(2) == ["after", "after b"]
    # "there" lost everything sent during the outage, and got what came after.
    assert there.get_all(2) == ["after", "after b"]
    there.assert_empty()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


class Held(Inbox):
    """A member whose first delivery holds the reader that makes it until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def deliver(self, message: Message) -> None:
        if not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(WAIT)
        super().deliver(message)


def test_messages_read_before_the_connection_broke_are_delivered(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Messages that reached the reader whole, in the same read as the connection's end
    (Redis restarting, a failover, a cut): the members get them. (The reader dropped
    the messages of its batch when the connection broke: lost for every member of the
    process, and, in a history group, a gap closing each dws member with 4003.)"""
    here, other = layers(), layers()
    held, member = Held(), Inbox()
    here.join("room", held)  # first: it holds the reader before the member gets anything
    here.join("room", member)
    other.send("room", "first")
    assert held.holding.wait(WAIT)
    for message in ("a", "b", "c"):
        other.send("room", message)  # in this process's socket, behind "first"
    until(lambda: b"omem=0" in redis_server.command("CLIENT", "LIST", "TYPE", "pubsub"))
    redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")  # their end, right after them
    held.release.set()
    assert member.get_all(4) == ["first", "a", "b", "c"]
    assert held.get_all(4) == ["first", "a", "b", "c"]


def test_the_outage_ends_before_a_group_counts_as_subscribed_again(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Whoever sees a group subscribed again (a ``join()`` waiting for it, the test above)
    must find sends published again, not held back by the outage's backoff: the reader
    ends the outage first. In the other order, a send in between reached only this
    process's members (it failed the test above once, on a loaded machine)."""
    a, b = layers(), layers()
    here, there = Inbox(), Inbox()
    a.join("room", here)
    b.join("room", there)
    redis_server.stop()
    # Both readers saw the connection go: until b's has, its ``subscribed`` still holds
    # "room" from before, and the wait for both below could pass before b subscribed again
    # (a send then misses b's member: failed once in CI, on a loaded machine).
    until(lambda: a.subscriber.down and b.subscriber.down)
    a.send("room", "during")  # starts the sends' backoff
    assert a.outage and here.get() == "during"
    seen: list[bool] = []  # at the outage's end: did "room" already count as subscribed?
    report_up = a.report_up

    def observed() -> None:
        if a.outage:
            seen.append("room" in a.subscriber.subscribed)
        report_up()

    a.report_up = observed  # type: ignore[method-assign]
    redis_server.start()
    until(
        lambda: "room" in a.subscriber.subscribed and "room" in b.subscriber.subscribed, timeout=20
    )
    assert seen == [False]
    a.send("room", "after")
    assert there.get() == "after"


def _running_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside ``function`` now (one of its frames runs it)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_the_outage_s_lines_come_in_the_order_of_its_state(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing send says "unreachable" while the reader ends the outage at the same
    moment: the lines must come in the order the state changed, the last one saying the
    state the layer is left in. (Each was logged after the state lock was let go: a send
    whose logging was slow -- here a filter on the logger, as a handler doing I/O is --
    had its "unreachable" written after the reader's "reachable again", and an
    operator's log said Redis was still down for good.)"""
    a = layers()
    a.join("room", Inbox())
    assert a.subscriber._thread is not None
    reader: threading.Thread = a.subscriber._thread
    sender = threading.Thread(target=lambda: a.send("room", "during"))
    joiner = threading.Thread(target=lambda: a.join("other", Inbox()))

    class Slow(logging.Filter):
        """The sender's "unreachable" is held until the reader ends the outage (old
        code: it logs "reachable again" meanwhile) or waits to (now)."""

        def filter(self, record: logging.LogRecord) -> bool:
            if threading.current_thread() is sender and "unreachable" in record.getMessage():
                redis_server.command("CLIENT", "UNPAUSE")
                joiner.start()  # its SUBSCRIBE has the reader find Redis answering
                deadline = time.monotonic() + WAIT
                while a.outage and not _running_in(reader, "report_up"):
                    if time.monotonic() > deadline:
                        break  # the test fails below, on what was said
                    time.sleep(0.01)
            return True

    slow = Slow()
    logger = logging.getLogger("dwebsocket.groups")
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    logger.addFilter(slow)
    try:
        redis_server.command("CLIENT", "PAUSE", str(int(WAIT * 1000)), "WRITE")
        sender.start()  # its PUBLISH waits: a timeout (1 s), an outage
        sender.join(WAIT * 2)
        joiner.join(WAIT * 2)
    finally:
        logger.removeFilter(slow)
        redis_server.command("CLIENT", "UNPAUSE")
    assert not sender.is_alive() and not joiner.is_alive()
    said = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [("unreachable" in line, "reachable again" in line) for line in said] == [
        (True, False),
        (False, True),
    ], said
    assert not a.outage


def test_send_from_a_process_without_members(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """A management command or task worker only publishes: it never starts a reader."""
    a, command = layers(), layers()
    member = Inbox()
    a.join("room", member)
    command.send("room", "from a command")
    assert member.get() == "from a command"
    assert command.subscriber._thread is None
    redis_server.stop()
    with pytest.raises(GroupsUnavailable):
        command.send("room", "lost", fail_silently=False)
    command.send("room", "lost too")  # silently


@pytest.mark.usefixtures("long_first_pause")  # the 100 sends below all fall in it
def test_sends_do_not_wait_while_redis_is_down(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    a = layers()
    member = Inbox()
    a.join("room", member)
    redis_server.stop()
    a.send("room", "first")  # finds out
    assert a.outage
    calls = 0
    original = a._client.publish

    def counting(*args: object) -> int:
        nonlocal calls
        calls += 1
        return original(*args)  # type: ignore[arg-type]

    a._client.publish = counting  # type: ignore[method-assign,assignment]
    for _ in range(100):
        a.send("room", "more")
    assert calls <= 2  # the backoff holds sends back from Redis
    assert len(member.get_all(101)) == 101


def test_join_while_down_subscribes_on_reconnect(
    layers: Callable[..., RedisLayer], redis_server: RedisServer
) -> None:
    """A join while Redis is down waits no socket timeout (``a``'s are longer than the
    test's own wait: one waited fails it), and subscribes once Redis is back."""
    a, b = layers(FOREVER), layers()
    first = Inbox()
    a.join("first", first)
    redis_server.stop()
    until(lambda: a.subscriber.down)
    late = Inbox()
    returns(lambda: a.join("late", late))  # does not wait for Redis
    redis_server.start()
    until(lambda: {"first", "late"} <= a.subscriber.subscribed, timeout=20)
    b.send("late", "found you")
    assert late.get() == "found you"


def test_join_during_the_backoff_after_redis_is_back_misses_nothing(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis is back, but this process's reader still waits out its backoff (up to 5 s in
    production; 10 s or more here, so the window is certain): a plain member joining then
    must get what other processes send once ``join`` returned. (``join`` returned at once
    while the reader was down, and every message another process sent before the backoff
    ended missed the member, with nothing to tell it: no history, no close code.)"""
    monkeypatch.setattr("dwebsocket.groups.redis.BACKOFF_BASE", 20.0)
    a, b = layers(), layers()
    first = Inbox()
    a.join("first", first)
    redis_server.stop()
    until(lambda: a.subscriber.down)
    redis_server.start()  # the reader sleeps on: 10 to 20 s
    late = Inbox()
    a.join("late", late)
    b.send("late", "right after the join")
    assert late.get() == "right after the join"
    b.send("first", "and the others")
    assert first.get() == "and the others"


def test_join_while_redis_is_still_down_returns_after_one_attempt(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The join's attempt fails (Redis refuses): the join returns, unsubscribed, and the
    member is served once the reader is back."""
    monkeypatch.setattr("dwebsocket.groups.redis.BACKOFF_BASE", 0.5)
    a, b = layers(), layers()
    a.join("first", Inbox())
    redis_server.stop()
    until(lambda: a.subscriber.down)
    late = Inbox()
    a.join("late", late)
    assert "late" not in a.subscriber.subscribed
    redis_server.start()
    until(lambda: "late" in a.subscriber.subscribed, timeout=20)
    b.send("late", "found you")
    assert late.get() == "found you"


def test_keepalive_pings_an_idle_subscription(
    layers: Callable[[], RedisLayer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dwebsocket.groups.redis.KEEPALIVE", 0.05)
    a, b = layers(), layers()
    member = Inbox()
    a.join("room", member)
    time.sleep(0.5)  # several keepalive rounds on the idle subscription
    assert a.subscriber.connected
    b.send("room", "still here")
    assert member.get() == "still here"


def test_a_hung_redis_is_detected_by_timeouts(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stops answering without closing anything (SIGSTOP): every call is bounded by
    the socket timeout (1 s here), the reader notices through its keepalive, sends
    fall back to local delivery; SIGCONT and it all resumes."""
    monkeypatch.setattr("dwebsocket.groups.redis.KEEPALIVE", 0.2)
    a, b = layers(), layers()
    here, there = Inbox(), Inbox()
    a.join("room", here)
    b.join("room", there)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        until(lambda: a.subscriber.down and b.subscriber.down)
        a.send("room", "hung")  # waits at most the socket timeout, then delivers here
        assert here.get() == "hung"
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    until(
        lambda: "room" in a.subscriber.subscribed and "room" in b.subscriber.subscribed, timeout=20
    )
    a.send("room", "resumed")
    assert here.get() == there.get() == "resumed"


def test_a_redis_refusing_writes_delivers_a_history_group_whose_stream_is_gone(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """As below, for a history group with no stream in Redis (its ttl ran out in a quiet
    group, or Redis was flushed): the script took the refused append for an older epoch
    and asked Redis about a stream that is not there ("no such key"), so the send counted
    as Redis unreachable: the message reached no other process, and the backoff then held
    back every group's sends."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept": {"size": 10, "ttl": 60}}):
        a, b = layers(), layers()
        kept, plain = Inbox(), Inbox()
        b.join("kept", kept)
        b.join("plain", plain)
        assert a.send("kept", "before") is not None
        assert kept.get() == "before"
        redis_server.command("DEL", a.stream("kept"))  # as its ttl would
        redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis_server.command("CONFIG", "SET", "maxmemory", "1")  # below what it uses
        try:
            assert a.send("kept", "not kept", fail_silently=False) is None
            assert kept.get() == "not kept"
            a.send("plain", "other groups go on", fail_silently=False)
            assert plain.get() == "other groups go on"
        finally:
            redis_server.command("CONFIG", "SET", "maxmemory", "0")
        assert a.send("kept", "kept again") is not None
        assert kept.get() == "kept again"


def test_a_redis_refusing_writes_still_delivers_everywhere(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis answers but will not write (``maxmemory`` reached under ``noeviction``): a
    history group's message cannot be kept, a command cannot be remembered. That is no
    outage: both reach every process (the message without a position), the process's
    other groups go on, and one WARNING says so. (The failed script was taken for Redis
    unreachable: the message and the command, a ``users.disconnect``, reached this process
    only, and the backoff then held back every group's sends, lost elsewhere.)"""
    commands: queue.Queue[dict[str, object]] = queue.Queue()
    monkeypatch.setitem(control._handlers, "probe", lambda g, m, command: commands.put(command))
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept": {"size": 10, "ttl": 60}}):
        a, b = layers(), layers()
        kept, plain, closable = Inbox(), Inbox(), Inbox()
        b.join("kept", kept)
        b.join("plain", plain)
        b.join("users", closable)
        b.join("users-2", Inbox())
        assert a.send("kept", "before") is not None
        assert kept.get() == "before"
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis_server.command("CONFIG", "SET", "maxmemory", "1")  # below what it uses
        try:
            assert a.send("kept", "not kept", fail_silently=False) is None
            assert kept.get() == "not kept"
            a.send("plain", "other groups go on")
            assert plain.get() == "other groups go on"
            a.control("users", control.encode("probe", n=1), fail_silently=False)
            assert commands.get(timeout=WAIT) == {"op": "probe", "n": 1}
            # Several at once (clearsessions): published without being remembered too.
            a.control_many(["users", "users-2"], control.encode("probe", n=2), fail_silently=False)
            assert [commands.get(timeout=WAIT) for _ in range(2)] == [{"op": "probe", "n": 2}] * 2
        finally:
            redis_server.command("CONFIG", "SET", "maxmemory", "0")
        assert a.send("kept", "kept again") is not None
        assert kept.get() == "kept again"
    said = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.groups"]
    assert len(said) == 2, said
    assert "refuses to write" in said[0] and "maxmemory" in said[0]
    assert "takes writes again" in said[1]


def test_a_key_of_another_type_at_a_group_s_name_is_that_group_s_problem_alone(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key of another type where a group's history stream or command set goes (another
    application's key, one set by hand): Redis answers WRONGTYPE to that group's calls
    alone. That is no outage: the group's messages reach every process without history,
    its commands without being remembered, the process's other groups go on, and one
    ERROR names the group, not "unreachable". (Taken for Redis unreachable: the group's
    messages and commands -- a ``users.disconnect`` -- reached this process only, and each
    held back every group's sends, lost for the other processes.)"""
    commands: queue.Queue[dict[str, object]] = queue.Queue()
    monkeypatch.setitem(control._handlers, "probe", lambda g, m, command: commands.put(command))
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept": {"size": 10, "ttl": 60}}):
        a, b = layers(), layers()
        kept, plain = Inbox(), Inbox()
        b.join("kept", kept)
        b.join("plain", plain)
        b.join("users", Inbox())
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        redis_server.command("SET", a.stream("kept"), "foreign")
        redis_server.command("SET", a.control_key("users"), "foreign")
        for n in range(3):
            assert a.send("kept", f"not kept {n}", fail_silently=False) is None
            assert kept.get() == f"not kept {n}"
            a.send("plain", f"other groups go on {n}", fail_silently=False)
            assert plain.get() == f"other groups go on {n}"
            a.control("users", control.encode("probe", n=n), fail_silently=False)
            assert commands.get(timeout=WAIT) == {"op": "probe", "n": n}
        # Several at once (clearsessions): the script stops at the foreign key.
        a.control_many(["users", "plain"], control.encode("probe", n=9), fail_silently=False)
        assert [commands.get(timeout=WAIT) for _ in range(2)] == [{"op": "probe", "n": 9}] * 2
        assert not a.outage
        redis_server.command("DEL", a.stream("kept"))
        assert a.send("kept", "kept again") is not None
        assert kept.get() == "kept again"
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR", "ERROR"], said
    assert "'kept'" in said[0][1] and "WRONGTYPE" in said[0][1]
    assert "'users'" in said[1][1] and "WRONGTYPE" in said[1][1]
    assert not any("unreachable" in text for _, text in said), said


def test_an_acl_refusing_a_group_s_channel_or_keys_is_that_group_s_problem_alone(
    layers: Callable[[], RedisLayer],
    acl_layer: Callable[..., RedisLayer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ACL user whose ``&`` channels or ``~`` keys leave out some groups: Redis answers
    NOPERM to those groups' calls alone. That is no outage, as WRONGTYPE is not: a group
    whose keys are refused has its messages published without history, one whose channel
    is refused has them reach this process only, the other groups go on, and one ERROR
    per group and outcome names the group. (Taken for Redis unreachable: a message to a
    refused channel held back every group's sends, lost for the other processes; a
    refused history key said "refuses to write", and the next kept message "takes writes
    again", at each message.)"""
    commands: queue.Queue[dict[str, object]] = queue.Queue()
    monkeypatch.setitem(control._handlers, "probe", lambda g, m, command: commands.put(command))
    history = {group: {"size": 10, "ttl": 60} for group in ("open", "open-keyless")}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=history):
        b = layers()  # all rights
        members = {group: Inbox() for group in ("open", "open-keyless", "shut")}
        for group, member in members.items():
            b.join(group, member)
        a = acl_layer("resetchannels", "&dwebsocket:0:open*", "resetkeys", "~dwebsocket:0:{open}:*")
        here = Inbox()
        a.join("open-keyless", here)
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        for n in range(3):
            assert a.send("open", f"kept {n}", fail_silently=False) is not None
            assert members["open"].get() == f"kept {n}"
            assert a.send("open-keyless", f"not kept {n}", fail_silently=False) is None
            assert members["open-keyless"].get() == here.get() == f"not kept {n}"
            with pytest.raises(GroupsUnavailable):
                a.send("shut", f"refused {n}", fail_silently=False)
            a.send("shut", f"refused too {n}")
            a.control("open-keyless", control.encode("probe", n=n), fail_silently=False)
            # Its members here and in b's process.
            assert [commands.get(timeout=WAIT) for _ in range(2)] == [{"op": "probe", "n": n}] * 2
            with pytest.raises(GroupsUnavailable):
                a.control("shut", control.encode("probe", n=-1), fail_silently=False)
            # Several at once (clearsessions): the script's keys are refused.
            with pytest.raises(GroupsUnavailable):
                a.control_many(
                    ["shut", "open", "open-keyless"],
                    control.encode("probe", n=10 + n),
                    fail_silently=False,
                )
            assert [commands.get(timeout=WAIT) for _ in range(3)] == [
                {"op": "probe", "n": 10 + n}
            ] * 3
            assert not a.outage
        members["shut"].assert_empty()
        assert commands.empty()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR"] * 4, said
    assert "'open-keyless'" in said[0][1] and "without history" in said[0][1]
    assert "'shut'" in said[1][1] and "channels" in said[1][1]
    assert "'open-keyless'" in said[2][1] and "without being remembered" in said[2][1]
    assert "'shut'" in said[3][1] and "command was not published" in said[3][1]


def test_an_acl_refusing_a_group_s_presence_keys_refuses_that_group_s_alone(
    layers: Callable[[], RedisLayer],
    acl_layer: Callable[..., RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ACL user whose ``~`` keys leave out a group's presence keys: its presence is not
    written, one ERROR names the group, and the other groups' presence is. (Taken for
    Redis refusing every write: "refuses to write", then "takes writes again" at the next
    group's write.)"""
    a = acl_layer("allchannels", "resetkeys", "~dwebsocket:0:{open}:*")
    b = layers()  # all rights

    def present(group: str, user: str) -> None:
        member, info = Inbox(), json.dumps({"name": user})
        entry = Local(f"user:{user}", user, info, {"name": user})
        a.join(group, member)
        count, shown = a.registry.presence.add(group, member, entry)
        a.present(group, entry, count, shown, True)

    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    present("shut", "alice")
    present("open", "bob")
    a.heartbeat("shut", 2000, 4000)
    assert [p.key for p in b.presence("open")] == ["user:bob"]
    assert not a.outage
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR"], said
    assert "'shut'" in said[0][1] and "presence is not written" in said[0][1]


def test_an_acl_refusing_a_group_s_channel_leaves_the_other_subscriptions_alone(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    acl_layer: Callable[..., RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member joins a group whose channel the process's ACL user may not use: Redis
    refuses that SUBSCRIBE alone. ``join`` returns, the member gets this process's
    messages to the group (as while unsubscribed), the process's other groups go on, and
    one ERROR names the group. (The refusal ended the subscription connection: one
    "unreachable" WARNING, then every group subscribed again in one SUBSCRIBE, refused
    whole, ten times a second: no group's messages from other processes reached this
    one.)"""
    a = acl_layer("resetchannels", "&dwebsocket:0:open*", "~*")
    b = layers()  # all rights
    opened, there = Inbox(), Inbox()
    a.join("open", opened)
    b.join("open", there)

    def subscription() -> list[str]:  # a's subscription connection: its id
        listed = redis_server.command("CLIENT", "LIST", "TYPE", "pubsub").decode()
        return [line.split()[0] for line in listed.splitlines() if " user=app " in line]

    connection = subscription()
    assert len(connection) == 1
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    shut = [Inbox(), Inbox()]
    a.join("shut", shut[0])  # returns: refused
    assert "shut" not in a.subscriber.subscribed
    for n in range(3):
        a.send("shut", f"here only {n}")
        assert shut[0].get() == f"here only {n}"
        b.send("open", f"from b {n}")
        assert opened.get() == there.get() == f"from b {n}"
    a.join("shut", shut[1])  # asked again, refused again: no second ERROR
    a.join("open-too", here := Inbox())  # subscribed on the same connection
    b.send("open-too", "still subscribing")
    assert here.get() == "still subscribing"
    a.send("shut", "both")
    assert [member.get() for member in shut] == ["both", "both"]
    a.leave("shut", shut[0])
    a.leave("shut", shut[1])  # no UNSUBSCRIBE of what was never subscribed
    a.send("open", "after")
    assert opened.get() == there.get() == "after"
    assert not a.outage and subscription() == connection  # never connected again
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR", "ERROR"], said
    assert "'shut'" in said[0][1] and "channels" in said[0][1] and "subscri" in said[0][1]
    assert "'shut'" in said[1][1] and "message was not published" in said[1][1]


def test_an_acl_refusing_a_history_group_s_channel_keeps_none_of_its_messages(
    layers: Callable[[], RedisLayer],
    acl_layer: Callable[..., RedisLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ACL user that may write a history group's stream but not use its channel: the
    group's messages reach this process's members only, and its history keeps none of
    them (a client recovering would get what no other process had live), nor skips their
    offsets (the next message, one past the last kept, is no gap to the members). One
    ERROR per group. (The script appended the entry, then its PUBLISH was refused: the
    error ended the script and the entry stayed.)"""
    history = {group: {"size": 10, "ttl": 60} for group in ("shut", "shut-new")}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=history):
        b = layers()  # all rights
        there = Inbox()
        b.join("shut", there)
        first = b.send("shut", "first")
        assert first is not None and there.get() == "first"
        epoch = first.partition(":")[0]
        a = acl_layer("resetchannels", "&dwebsocket:0:open*", "~*")
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        here = Inbox()
        a.join("shut", here)  # returns: refused
        for n in range(2):
            with pytest.raises(GroupsUnavailable):
                a.send("shut", f"here only {n}", fail_silently=False)
            assert here.get() == f"here only {n}"
        a.send("shut-new", "refused")  # no stream yet: the script makes it
        assert b.send("shut", "second") == f"{epoch}:2"
        assert there.get() == "second"
        page = b.read("shut", 0, 10)
        assert (page.epoch, page.head, page.entries) == (epoch, 2, [(1, "first"), (2, "second")])
        page = b.read("shut-new", 0, 10)
        assert (page.head, page.entries) == (0, [])
        assert b.send("shut-new", "kept") == f"{page.epoch}:1"
        assert not a.outage
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR"] * 3, said
    assert "'shut'" in said[0][1] and "subscri" in said[0][1]
    assert "'shut'" in said[1][1] and "message was not published" in said[1][1]
    assert "'shut-new'" in said[2][1] and "message was not published" in said[2][1]
    there.assert_empty()


def patient_layers(redis_server: RedisServer) -> tuple[RedisLayer, RedisLayer]:
    """Two layers ("processes") whose calls wait up to WAIT: while Redis loads its data it
    answers clients only between chunks of its file (every KiB in :func:`restart_loading`),
    some 0.1 s apart but more than the usual 1 s socket timeout on a loaded machine, and a
    send that times out is an outage, lost for the other process (failed once in CI: "is
    unreachable (Timeout reading ...)"). Close them."""
    url = f"{redis_server.url}?socket_timeout={WAIT}&socket_connect_timeout={WAIT}"
    return RedisLayer(url, Registry()), RedisLayer(url, Registry())


def restart_loading(redis_server: RedisServer, reader: RedisLayer) -> None:
    """Restart Redis with 20,000 keys to load at 1 ms each: loading for 20 s, longer than a
    test needs, answering clients every KiB read (every 80-odd keys). Waits until
    ``reader``'s reader saw Redis go: until it has, its ``subscribed`` still holds its
    groups from before, and a wait for them could pass before it subscribed again."""
    script = "for i = 1, 20000 do redis.call('SET', 'k' .. i, i) end"
    redis_server.command("EVAL", script, "0")
    redis_server.command("SAVE")
    redis_server.stop()
    until(lambda: reader.subscriber.down)
    loading = ("--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024")
    redis_server.start(options=loading)


def test_a_redis_loading_its_data_still_delivers_everywhere(redis_server: RedisServer) -> None:
    """A Redis restarted with its data answers LOADING to scripts until it has read it
    (seconds, minutes for a large one) while pub/sub already works: a history group's
    message is published without being kept, and the process's other groups go on.
    (The refused script was taken for Redis unreachable: the message reached this process
    only, and the backoff held back the other groups' sends, lost elsewhere.)"""
    a, b = patient_layers(redis_server)
    with (
        contextlib.closing(a),
        contextlib.closing(b),
        override_settings(WEBSOCKET_GROUPS_HISTORY={"kept": {"size": 10, "ttl": 60}}),
    ):
        kept, plain = Inbox(), Inbox()
        b.join("kept", kept)
        b.join("plain", plain)
        restart_loading(redis_server, b)
        assert redis_server.command("PING").startswith(b"-LOADING")
        until(lambda: {"kept", "plain"} <= b.subscriber.subscribed, timeout=20)
        a.send("kept", "not kept")
        assert kept.get() == "not kept"
        a.send("plain", "other groups go on")
        assert plain.get() == "other groups go on"
        assert redis_server.command("PING").startswith(b"-LOADING")  # all while loading


def test_a_redis_loading_its_data_keeps_the_subscription(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription's keepalive is one that Redis answers while it loads its data, as
    it goes on with pub/sub meanwhile: the connection stays. (It was a PING, which Redis
    refuses with LOADING: the reader took the refusal for the connection's end and
    subscribed again at every keepalive for as long as the load lasted -- minutes for a
    large dataset: a WARNING each time, what was published in between lost for this
    process's members, and in a history group every dws member closed with 4003.)"""
    monkeypatch.setattr(redis_layer, "KEEPALIVE", 0.2)
    keepalives = 0
    command = redis_layer._command

    def counted(connection: redis.Connection, *args: str | bytes) -> None:
        nonlocal keepalives
        keepalives += args == redis_layer.KEEPALIVE_COMMAND
        command(connection, *args)

    monkeypatch.setattr(redis_layer, "_command", counted)
    a, b = patient_layers(redis_server)
    with contextlib.closing(a), contextlib.closing(b):
        member = Inbox()
        b.join("room", member)
        restart_loading(redis_server, b)
        until(lambda: "room" in b.subscriber.subscribed, timeout=20)
        caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
        caplog.clear()  # the restart's own "subscribed again"
        started = keepalives
        until(lambda: keepalives >= started + 3)  # each answered in time, or the reader gave up
        a.send("room", "goes on")
        assert member.get() == "goes on"
        assert redis_server.command("PING").startswith(b"-LOADING")  # all while loading
    said = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.groups"]
    assert not [m for m in said if "subscription" in m], said


def test_a_password_redis_does_not_ask_for_fails_sends_and_subscriptions_alike(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL with a password for a Redis that has none: each connection is refused alike,
    so a strict send raises and the cause is logged once. (redis-py 8 speaks RESP3 unless
    told otherwise and authenticates by ``HELLO 3 AUTH default <password>``, which such a
    Redis accepts, while the subscription, RESP2, sends ``AUTH <password>``, refused:
    sends went out, returning as if delivered, and no process ever received one.)"""
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    url = f"redis://:secret@127.0.0.1:{redis_server.port}/0?socket_timeout=1"
    layer = RedisLayer(url, Registry())
    try:
        member = Inbox()
        layer.join("room", member)  # returns after the reader's one attempt
        with pytest.raises(GroupsUnavailable, match="without any password configured"):
            layer.send("room", "strict", fail_silently=False)
        assert member.get() == "strict"  # this process's members, as in any outage
    finally:
        layer.close()
    said = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.groups"]
    assert len(said) == 1 and "without any password configured" in said[0], said
    assert "secret" not in said[0]


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("password=s3cret", "without any password configured"),  # redis-py reads it
        # The Sentinels' own, documented (docs/groups.rst): the layer is asked nothing of
        # them here, but every line that names the URL names it.
        ("sentinel_password=s3cret", "unreachable"),
    ],
    ids=["password", "sentinel_password"],
)
def test_a_password_in_the_url_s_query_is_never_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, query: str, said: str
) -> None:
    """A password given as a query parameter (redis-py takes ``?password=`` as the user
    part's; ``sentinel_password`` is the Sentinels') is hidden as the user part's is, in
    the outage's WARNING and in the check's message. (Each was logged, and quoted by
    ``dwebsocket.E020``, in clear.)"""
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    if query.startswith("sentinel"):
        url = f"redis-sentinel://127.0.0.1:{redis_server.port}/nomaster?{query}"
    else:
        url = f"redis://127.0.0.1:{redis_server.port}/0?{query}"
    layer = RedisLayer(f"{url}&socket_timeout=1&socket_connect_timeout=1", Registry())
    try:
        member = Inbox()
        layer.join("room", member)  # returns after the reader's one attempt
        with pytest.raises(GroupsUnavailable):
            layer.send("room", "strict", fail_silently=False)
        assert member.get() == "strict"
        until(lambda: said in caplog.text)
    finally:
        layer.close()
    assert "s3cret" not in caplog.text
    assert redact(url).endswith("?" + query.replace("s3cret", "***"))
    with pytest.raises(InvalidSetting) as raised:
        RedisLayer(f"{url}&nosuchoption=1", Registry())
    assert "s3cret" not in str(raised.value) and "nosuchoption" in str(raised.value)


def test_an_acl_user_and_a_database_in_the_url(redis_server: RedisServer) -> None:
    """``redis://user:password@host/db``: the publishing connections and the subscription
    authenticate as that ACL user; a wrong password is refused alike, not retried in a
    loop of tracebacks (the reader's attempts are DEBUG lines)."""
    redis_server.command("ACL", "SETUSER", "site", "on", ">right", "~*", "&*", "+@all")
    good = f"redis://site:right@127.0.0.1:{redis_server.port}/3?socket_timeout=1"
    a, b = RedisLayer(good, Registry()), RedisLayer(good, Registry())
    wrong = RedisLayer(good.replace(":right@", ":wrong@"), Registry())
    try:
        member, refused = Inbox(), Inbox()
        a.join("room", member)
        assert b"user=site" in redis_server.command("CLIENT", "LIST", "TYPE", "pubsub")
        b.send("room", "as site", fail_silently=False)
        assert member.get() == "as site"
        wrong.join("room", refused)
        with pytest.raises(GroupsUnavailable, match="invalid username-password"):
            wrong.send("room", "refused", fail_silently=False)
        assert refused.get() == "refused"  # its own members, as in any outage
        member.assert_empty()
    finally:
        for layer in (a, b, wrong):
            layer.close()


def test_a_subscription_redis_refuses_is_retried_with_backoff(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ACL user without the SUBSCRIBE command: Redis takes the connection and refuses
    the SUBSCRIBE. The reader backs off as from a refused connection. (A connection
    counted as a success and started the backoff over: every process reconnected, logged
    in and was refused some fourteen times a second, for ever.) One without the channels
    (Redis 7 gives a new user none, unless ``acl-pubsub-default allchannels``) has each
    group refused alone, and no reconnection: see
    test_an_acl_refusing_a_group_s_channel_leaves_the_other_subscriptions_alone."""
    redis_server.command(
        "ACL", "SETUSER", "site", "on", ">pw", "~*", "allchannels", "+@all", "-subscribe"
    )
    layer = RedisLayer(f"redis://site:pw@127.0.0.1:{redis_server.port}/0", Registry())
    pauses: list[float] = []
    sleep = layer.subscriber._sleep

    def recorded(seconds: float) -> None:
        pauses.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(layer.subscriber, "_sleep", recorded)
    try:
        layer.join("room", Inbox())  # returns after the refused attempt
        until(lambda: len(pauses) >= 4)
    finally:
        layer.close()
    # Equal jitter: the n-th pause is in [d/2, d] for d = 0.1 * 2**n; the fourth past 0.1.
    assert pauses[3] > 0.1, pauses


def test_rejoin_right_after_the_last_leave(layers: Callable[[], RedisLayer]) -> None:
    """Leaving (UNSUBSCRIBE on its way) and joining again at once must end subscribed:
    every message sent after the join returns arrives."""
    a, b = layers(), layers()
    member = Inbox()
    for i in range(50):
        a.join("room", member)
        b.send("room", f"m{i}")
        assert member.get() == f"m{i}"
        a.leave("room", member)
    member.assert_empty(0.1)


def test_concurrent_churn_ends_consistent(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Threads joining and leaving groups at random: afterwards exactly the groups with
    local members are subscribed, and every member receives."""
    a, b = layers(), layers()
    groups = [f"g{i}" for i in range(5)]
    members = [Inbox() for _ in range(8)]

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        member = members[seed]
        for _ in range(100):
            group = rng.choice(groups)
            if rng.random() < 0.5:
                a.join(group, member)
            else:
                a.leave(group, member)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(len(members))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for group in groups:
        expected = 1 if a.registry.members(group) else 0
        until(lambda g=group, e=expected: numsub(redis_server, f"dwebsocket:0:{g}") == e)
    for member in members:
        while not member.messages.empty():
            member.messages.get_nowait()
    for group in groups:
        b.send(group, group)
    for member in members:
        expected_groups = sorted(a.registry.groups_of(member))
        assert sorted(str(m) for m in member.get_all(len(expected_groups))) == expected_groups
        member.assert_empty(0.05)


def answers(server: RedisServer) -> bool:
    """Whether ``server`` answers a PING within 0.2 s (on a new connection)."""
    client = redis.Redis("127.0.0.1", server.port, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["WRITE", "ALL"])
def test_a_paused_redis_bounds_every_wait_and_delivers_once(
    layers: Callable[[], RedisLayer], redis_server: RedisServer, mode: str
) -> None:
    """``CLIENT PAUSE`` (a manual failover, an operator): Redis keeps the connections and
    holds their commands (WRITE: PUBLISH and the scripts; ALL: every command, PING too).
    A send waits at most the socket timeout (1 s here) and counts as failed: its members
    here get it, once, even when Redis runs the held PUBLISH after the pause (it comes
    back through the subscription then, and is dropped); another process gets it once at
    most. A join returns within the socket timeout too. After the pause, everything
    goes on by itself."""
    a, b, here, there = two_in_room(layers)

    # ALL holds CLIENT UNPAUSE too: that pause runs out by itself instead.
    redis_server.command("CLIENT", "PAUSE", "20000" if mode == "WRITE" else "3000", mode)
    # Each wait bounded: a call waiting the pause's end (20 s) fails this wait (10 s).
    # (ALL's 3 s pause, shorter, proves the rest: nothing is delivered twice, all resumes.)
    returns(lambda: (a.send("room", "paused"), a.join("other", Inbox())), WAIT)
    assert here.get() == "paused"
    if mode == "WRITE":
        redis_server.command("CLIENT", "UNPAUSE")
    else:
        until(lambda: answers(redis_server), 20)
    until(lambda: "room" in a.subscriber.subscribed and "room" in b.subscriber.subscribed, 20)
    until(lambda: not a._held_back(None), 20)
    a.send("room", "after")
    assert here.get() == "after"
    here.assert_empty()
    seen = [there.get()]
    while seen[-1] != "after":
        seen.append(there.get())
    assert seen in (["paused", "after"], ["after"])
    there.assert_empty()


def test_a_subscription_closed_alone_is_no_outage(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis closes the subscription connections while it is up: ``CLIENT KILL TYPE
    pubsub`` (Sentinel does it to a demoted master), or a subscriber past its
    ``client-output-buffer-limit pubsub``. Each process said "Redis is unreachable ...
    group messages reach this process's members only" and then "reachable again": false
    -- sends were published all along -- and it sent the operator after a Redis that was
    fine, not after what was lost. Now the readers subscribe again at once, and one
    WARNING per process says what happened: the subscription was closed and made again,
    and what was published in between did not reach its members."""
    a, b, here, there = two_in_room(layers)

    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    admin = redis.Redis("127.0.0.1", redis_server.port, socket_timeout=WAIT)
    try:
        killed = {c["id"] for c in admin.client_list(_type="pubsub")}
        assert admin.client_kill_filter(_type="pubsub") == 2

        def subscribed_again() -> bool:
            clients = admin.client_list(_type="pubsub")
            return len(clients) == 2 and all(
                c["id"] not in killed and c["sub"] == "1" for c in clients
            )

        until(subscribed_again)
    finally:
        admin.close()
    until(lambda: "room" in a.subscriber.subscribed and "room" in b.subscriber.subscribed)
    a.send("room", "after", fail_silently=False)
    assert here.get() == there.get() == "after"
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "unreachable" in m or "reachable again" in m], said
    closed = [m for m in said if "subscription" in m and "subscribed again" in m]
    assert len(closed) == 2, said  # one per process
    assert not a.outage and not b.outage


def test_a_burst_longer_than_a_batch_reaches_the_members_at_once(
    layers: Callable[[], RedisLayer], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader hands at most ``BATCH`` messages on at a time, then waited for its socket.
    redis-py reads the socket in chunks, so the messages after the batch could all be in
    its buffer already and none in the socket: they waited for the next message, or for
    the keepalive (10 s; found by bench/history_xread.py, FINDINGS 29: bursts of 2,500
    complete after 10.9 s). Here the keepalive is out of reach: they would wait for ever."""
    monkeypatch.setattr(redis_layer, "KEEPALIVE", 3600.0)
    a, b = layers(), layers()
    entered, gate = threading.Event(), threading.Event()

    class Held(Inbox):
        def deliver(self, message: Message) -> None:
            if message == "first":  # the reader waits here while the burst piles up
                entered.set()
                gate.wait(WAIT)
            super().deliver(message)

    member = Held()
    a.join("room", member)
    b.send("room", "first")
    until(entered.is_set)
    count = redis_layer.BATCH + 10
    for n in range(count):
        b.send("room", str(n))

    def written() -> bool:  # Redis has written the burst to the reader's socket
        listed = redis_server.command("CLIENT", "LIST", "TYPE", "pubsub").decode()
        return "omem=0 " in listed and " oll=0 " in listed

    until(written)
    gate.set()
    assert member.get_all(count + 1) == ["first", *map(str, range(count))]
