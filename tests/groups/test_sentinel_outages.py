"""The Redis layer over real Sentinels when a connection breaks, or the master fails, while
sends go on (``redis-sentinel://``; ``test_cluster_layer.py`` has the quiet cases).

The sentinels monitor the master through a :class:`ReplyDropper` in front of it, so that
they name the proxy's address: the layer's connections to the master (sends, the probe,
subscriptions) all go through it, and one of them can be broken alone while the master is
up -- as ``CLIENT KILL``, a proxy or a load balancer resetting one does. The probe that
follows a broken send (``RedisLayer._send_failed``) goes through the Sentinel pool: it
asks the sentinels for the master again, so it tells "that connection broke" from "the
master is down" as it does for one server.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dwebsocket.exceptions import GroupsUnavailable
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_cluster import RedisSentinels, running, wait_for
from tests.groups.test_redis_layer import Inbox, until
from tests.groups.test_redis_lost_replies import QUIET, ReplyDropper

WAIT = 10.0
#: Seconds within which delivery resumes after the promotion (the readers and the held
#: back sends look again at least every second: FAILOVER_BACKOFF_CAP).
RESUME = 5.0

pytestmark = [pytest.mark.server]  # starts Sentinels: seconds, not the unit layer's


@pytest.fixture
def fronted() -> Iterator[tuple[RedisSentinels, list[ReplyDropper]]]:
    """Sentinels whose master is behind a ReplyDropper (the list holds it once started)."""
    droppers: list[ReplyDropper] = []

    def front(port: int) -> int:
        droppers.append(ReplyDropper(port))
        return droppers[-1].port

    try:
        with running(RedisSentinels(front=front)) as setup:
            yield setup, droppers
    finally:
        for dropper in droppers:
            dropper.close()


@pytest.mark.parametrize("before", [True, False], ids=["cut-before", "reply-lost"])
def test_sentinel_a_connection_broken_alone_is_no_outage(
    fronted: tuple[RedisSentinels, list[ReplyDropper]],
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
    before: bool,
) -> None:
    """A send's connection to the master breaks, the master is up: the probe, through the
    sentinels, finds it answering. The message is not sent again (published once if Redis
    got it, not at all if not), it fails as one not sent (its members here get it), and it
    is no outage: the next send reaches the other process at once."""
    sentinels, (dropper,) = fronted
    sender, other = layers(sentinels.url), layers(sentinels.url)
    here, there = Inbox(), Inbox()
    sender.join("room", here)
    other.join("room", there)
    sender.send("room", "warm", fail_silently=False)
    assert here.get() == there.get() == "warm"

    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    dropper.arm(b"PUBLISH", before=before)
    with pytest.raises(GroupsUnavailable):
        sender.send("room", "once", fail_silently=False)
    assert dropper.dropped.is_set()
    assert here.get() == "once"
    if not before:
        assert there.get() == "once"
    there.assert_empty(QUIET)
    here.assert_empty(QUIET)
    assert not sender.outage
    sender.send("room", "next", fail_silently=False)  # not held back
    assert here.get() == there.get() == "next"
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert [r for r in caplog.records if "not sent again" in r.getMessage()]


class Sending:
    """A thread sending "0", "1", ... to ``group`` through ``layer``, as fast as it may."""

    def __init__(self, layer: RedisLayer, group: str) -> None:
        self.layer = layer
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(layer, group), daemon=True)
        self._thread.start()

    def _run(self, layer: RedisLayer, group: str) -> None:
        while not self._stop.is_set():
            layer.send(group, str(self.sent))  # fail_silently: an outage raises nothing
            self.sent += 1
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "a send did not return"
        return self.sent


def received(member: Inbox, last: int) -> list[int]:
    """What ``member`` got: up to message ``last`` (each waited for up to WAIT: a reader
    may be late, the process loaded), then anything more within QUIET (a duplicate).
    (It stopped at the first QUIET without a message: a reader held up longer than that
    -- starved, or still subscribing again after the move -- had everything after it
    counted as lost.)"""
    numbers: list[int] = []
    wait = WAIT
    while True:
        try:
            numbers.append(int(str(member.get(timeout=wait))))
        except queue.Empty:
            return numbers
        if numbers[-1] >= last:
            wait = QUIET


def moved_then_stopped(
    sending: Sending, here: Inbox, there: Inbox, other: RedisLayer
) -> tuple[list[int], int]:
    """Once both processes have moved (both subscribed at the new master, which the caller
    waited for, and neither in an outage any more): 50 sends more, then stop. Each member
    got every message sent since, none twice, in order. Returns what ``here`` got, and how
    many were sent."""
    # Redis counts a subscription (NUMSUB) before the reader has its reply, and only then
    # does a process's outage end (Subscriber._handle): until it has, sends are still held
    # back and reach its own members only.
    until(lambda: not sending.layer.outage and not other.outage, timeout=WAIT)
    # The send numbered ``sent`` may be under way, begun before the outage ended.
    mark = sending.sent + 1
    until(lambda: sending.sent > mark + 50)
    total = sending.stop()
    mine, theirs = received(here, total - 1), received(there, total - 1)
    for numbers in (mine, theirs):
        assert numbers == sorted(set(numbers)), "a message twice, or out of order"
        assert set(range(mark, total)) <= set(numbers), "lost once both had moved"
    return mine, total


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The layer's "unreachable" WARNINGs, and its "reachable again" lines."""
    said = [r.getMessage() for r in caplog.records]
    return [m for m in said if "is unreachable" in m], [m for m in said if "reachable again" in m]


@pytest.mark.parametrize("how", ["killed", "failover"])
def test_sentinel_failover_while_sends_go_on(
    fronted: tuple[RedisSentinels, list[ReplyDropper]],
    layers: Callable[[str], RedisLayer],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """The master fails (killed: SIGKILL; or ``SENTINEL FAILOVER``: demoted alive, its
    connections closed) while a process sends without pause. No member gets a message
    twice, or out of the order it was sent; a killed master's sends fail, so the sender's
    own members get every message (a demoted one takes them, and its subscribers have
    them, until it closes its connections: what a process sent to the promoted replica
    before its own subscription moved there is lost, as the docs say); a killed master is
    one outage per process (one WARNING, and one when it is back); once both processes
    are subscribed at the promoted replica every message reaches every member."""
    sentinels, _ = fronted
    sender, other = layers(sentinels.url), layers(sentinels.url)
    here, there = Inbox(), Inbox()
    sender.join("room", here)
    other.join("room", there)
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    sending = Sending(sender, "room")
    until(lambda: sending.sent > 20)
    old = sentinels.current_master()
    if how == "killed":
        new = sentinels.kill_master()
    else:
        sentinels.sentinels[0].command("SENTINEL", "FAILOVER", sentinels.NAME)
        until(lambda: sentinels.current_master() is not old, timeout=WAIT)
        new = sentinels.current_master()
        wait_for("promoted", lambda: new.command("ROLE")[0] == "master", WAIT)
        # The sentinels make the old master a replica of the new one some seconds later:
        # it closes its connections then, and they all move to the new one.
        # (wait_for: the demotion's CLIENT KILL may reset the very connection asking)
        wait_for("demoted", lambda: old.command("ROLE")[0] == "slave", 3 * WAIT)
    # Delivery resumes at the new master: both processes subscribed there.
    channel = other.channel("room").decode()
    wait_for(
        "both subscribed there",
        lambda: new.command("PUBSUB", "NUMSUB", channel)[1] == 2,
        RESUME + WAIT,
    )
    mine, total = moved_then_stopped(sending, here, there, other)
    if how == "killed":
        assert mine == list(range(total)), "the sender's own member missed a message"
    assert not sender.outage and not other.outage
    down, up = outage_lines(caplog)
    assert len(down) <= 2 and len(up) == len(down)  # at most one each per process
    if how == "killed":
        assert down, "a killed master is an outage"
