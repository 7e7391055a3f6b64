"""Presence on the Redis layer itself, through a real (private) redis-server: two
``RedisLayer`` objects stand for two processes (``test_redis_layer`` explains). What the
server tests cannot reach easily: a reader's copy kept up to date from the change log,
past the log's length, across a Redis that lost everything, and after leaving while
Redis was unreachable."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket.groups import GroupsUnavailable
from dwebsocket.groups.memory import Registry
from dwebsocket.groups.presence import Local
from dwebsocket.groups.redis import PRESENCE_LOG, RedisLayer
from tests.groups import test_redis_layer
from tests.groups.proxy import Proxy
from tests.groups.redis_server import RedisServer
from tests.groups.test_redis_layer import Inbox, until

pytestmark = pytest.mark.usefixtures("short_heartbeat")
layers = test_redis_layer.layers  # the fixture: layers ("processes") on a private Redis

STALE, EXPIRY = 2000, 4000  # ms, as WEBSOCKET_PRESENCE_HEARTBEAT = 1 gives
WAIT = 10.0


@pytest.fixture
def short_heartbeat() -> Iterator[None]:
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=1.0):
        yield


def join(layer: RedisLayer, member: Inbox, user: str, group: str = "room") -> None:
    info = json.dumps({"name": user})
    entry = Local(f"user:{user}", user, info, {"name": user})
    layer.join(group, member)
    count, shown = layer.registry.presence.add(group, member, entry)
    layer.present(group, entry, count, shown, True)


def leave(layer: RedisLayer, member: Inbox, group: str = "room") -> None:
    layer.leave(group, member)
    removed = layer.registry.presence.remove(group, member)
    assert removed is not None
    entry, left, info = removed
    layer.present(group, entry, left, info, False)


def who(layer: RedisLayer, group: str = "room") -> dict[str, int]:
    return {p.key: p.sockets for p in layer.presence(group)}


def test_copies_follow_every_change_past_the_log(layers: Callable[[], RedisLayer]) -> None:
    one, two, reader = layers(), layers(), layers()
    alice = [Inbox(), Inbox()]
    join(one, alice[0], "alice")
    join(two, alice[1], "alice")
    assert who(reader) == who(one) == {"user:alice": 2}
    many = [Inbox() for _ in range(PRESENCE_LOG + 10)]  # more changes than the log keeps
    for n, member in enumerate(many):
        join(one if n % 2 else two, member, f"u{n}")
    expected = {"user:alice": 2, **{f"user:u{n}": 1 for n in range(len(many))}}
    assert who(reader) == who(two) == expected  # two read all of it from the log's past
    leave(one, alice[0])
    leave(two, many[0])
    del expected["user:u0"]
    expected["user:alice"] = 1
    assert who(reader) == who(one) == who(two) == expected  # these from the log


def test_a_redis_that_lost_everything_is_written_again_by_the_heartbeats(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    one, reader = layers(), layers()
    join(one, Inbox(), "alice")
    assert who(reader) == {"user:alice": 1}
    one._client.flushall()
    assert who(reader) == {}
    one.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:alice": 1}


def test_a_leave_while_redis_is_away_is_written_by_the_next_heartbeat(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    one, reader = layers(), layers()
    alice, bob = Inbox(), Inbox()
    join(one, alice, "alice")
    join(one, bob, "bob")
    assert who(reader) == {"user:alice": 1, "user:bob": 1}
    redis_server.stop()
    leave(one, bob)  # not written: Redis is down
    with pytest.raises(GroupsUnavailable):
        reader.presence("room")
    redis_server.start()
    one.report_up()
    one.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:alice": 1}


def test_presence_writes_redis_refuses_are_no_outage(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refuses the presence writes (``maxmemory`` reached under ``noeviction``):
    one WARNING says so, the next heartbeat after it takes writes again writes the
    entries, and a real outage later is logged as always. (A refused write was taken for
    Redis unreachable, and that outage never ended -- no send or subscription had
    failed to end it -- so the real one after it logged nothing.)"""
    one = layers()
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.command("CONFIG", "SET", "maxmemory", "1")  # below what it uses
    try:
        join(one, Inbox(), "alice")
        one.heartbeat("room", STALE, EXPIRY)
        assert who(one) == {}  # read all the same: what Redis holds
    finally:
        redis_server.command("CONFIG", "SET", "maxmemory", "0")
    one.heartbeat("room", STALE, EXPIRY)
    assert who(one) == {"user:alice": 1}
    redis_server.stop()
    one.send("room", "finds Redis gone")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "dwebsocket.groups"]

    # Whichever thread finds the outage first (the send, or the reader, whose connection
    # closed too) sets ``outage``, then logs: the reader's WARNING may come after the send.
    until(lambda: len(logged()) >= 3)
    said = logged()
    assert len(said) == 3, said
    assert "refuses to write" in said[0]
    assert "takes writes again" in said[1]
    assert "is unreachable" in said[2]


def test_two_tabs_closing_at_once_leave_no_ghost(layers: Callable[[], RedisLayer]) -> None:
    """Two tabs of one user in one process leave at once, and the write of the first
    (1 socket left) reaches Redis after the second's (none left): the user stayed
    present, with one socket, though both were gone."""
    one, reader = layers(), layers()
    tabs, bob = [Inbox(), Inbox()], Inbox()
    for member in tabs:
        join(one, member, "alice")
    join(one, bob, "bob")  # the process stays live: its heartbeats would keep a ghost
    assert who(reader) == {"user:alice": 2, "user:bob": 1}
    script, entered, second_done = one._present, threading.Event(), threading.Event()

    def held_first(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            second_done.wait(2.0)  # the first write is late (bounded: the fix serializes)
        return script(*args, **kwargs)

    def second() -> None:
        leave(one, tabs[1])
        second_done.set()

    one._present = held_first  # type: ignore[method-assign]
    first_thread = threading.Thread(target=leave, args=(one, tabs[0]))
    second_thread = threading.Thread(target=second)
    first_thread.start()
    try:
        assert entered.wait(WAIT)
        second_thread.start()
    finally:
        first_thread.join(WAIT)
        if second_thread.ident is not None:
            second_thread.join(WAIT)
    assert not first_thread.is_alive() and not second_thread.is_alive()
    assert who(reader) == who(one) == {"user:bob": 1}


def listen(layer: RedisLayer, group: str = "room") -> Inbox:
    """A member of ``layer`` that receives ``group``'s join and leave events."""
    listener = Inbox()
    layer.join(group, listener)
    layer.registry.presence.listen(group, listener)
    return listener


def test_a_join_after_redis_lost_the_keys_leaves_no_one_out(
    layers: Callable[[], RedisLayer],
) -> None:
    """Redis restarts without persistence, and a socket joins before the heartbeats: its
    write makes the group's keys again. The heartbeats still write every other entry
    again, its own process's and the others'. (They found the keys there and wrote
    nothing: alice and bob were gone from ``presence`` for good, and their leaves were
    never events.)"""
    one, two, reader = layers(), layers(), layers()
    join(one, Inbox(), "alice")
    join(two, Inbox(), "bob")
    assert who(reader) == {"user:alice": 1, "user:bob": 1}
    one._client.flushall()
    join(one, Inbox(), "carol")
    assert who(reader) == {"user:carol": 1}  # until the heartbeats
    one.heartbeat("room", STALE, EXPIRY)
    two.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:alice": 1, "user:bob": 1, "user:carol": 1}


def test_a_process_counted_dead_comes_back_at_its_next_heartbeat(
    layers: Callable[[], RedisLayer],
) -> None:
    """A process silent for more than twice the heartbeat (a frozen event loop) is counted
    dead and its entries removed; at its next heartbeat they are back (docs/users.rst).
    (They were not: the heartbeat renewed the process, not its entries.)"""
    one, two, reader = layers(), layers(), layers()
    join(one, Inbox(), "alice")
    join(two, Inbox(), "bob")
    procs = one.presence_keys("room")[1]
    one._client.hset(procs, one.process, 1)  # its last heartbeat, long ago
    two.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:bob": 1}
    one.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:alice": 1, "user:bob": 1}


def test_a_leave_whose_entry_redis_lost_is_an_event(layers: Callable[[], RedisLayer]) -> None:
    """A socket leaves after Redis lost the group's keys, before any heartbeat wrote them
    again: the listeners, who saw its join, get its leave. (There was no entry to remove,
    so no event: the user stayed in every page's list.)"""
    one, reader = layers(), layers()
    listener = listen(reader)
    alice = Inbox()
    join(one, alice, "alice")
    assert json.loads(listener.get())["presence"] == "join"
    one._client.flushall()
    leave(one, alice)
    event = json.loads(listener.get())
    assert (event["presence"], event["key"]) == ("leave", "user:alice")


def _race_a_sync(one: RedisLayer, change: Callable[[], None]) -> None:
    """Run ``change`` (a join or a leave, with its write) while a syncing heartbeat of
    ``one`` has taken its entries and not yet written them: the change's write reaches
    Redis first if nothing holds it back."""
    script, entered, go = one._heartbeat, threading.Event(), threading.Event()

    def held_sync(*args: Any, **kwargs: Any) -> Any:
        if "sync" in kwargs.get("args", ()) and not entered.is_set():
            entered.set()
            assert go.wait(WAIT)
        return script(*args, **kwargs)

    one._heartbeat = held_sync  # type: ignore[method-assign]
    syncing = threading.Thread(target=one.heartbeat, args=("room", STALE, EXPIRY, True))
    changing = threading.Thread(target=change)
    syncing.start()
    try:
        assert entered.wait(WAIT)
        changing.start()
        # The change's write either lands now (the race) or waits for the sync: give it
        # the chance, bounded; no assertion on which.
        changing.join(2.0)
    finally:
        go.set()
        syncing.join(WAIT)
        if changing.ident is not None:
            changing.join(WAIT)
    assert not syncing.is_alive() and not changing.is_alive()


@pytest.mark.slow  # waits out heartbeats (2 s): not the unit layer
def test_a_join_during_a_syncing_heartbeat_stays_present(
    layers: Callable[[], RedisLayer],
) -> None:
    """A socket joins while a syncing heartbeat (after a failed write, or keys Redis lost)
    is between taking this process's entries and writing them. (The sync removed the
    new entry as one that had left: bob was missing from ``presence`` in every process
    until some later sync, though his join event had gone out.)"""
    one, reader = layers(), layers()
    join(one, Inbox(), "alice")
    listener = listen(reader)
    _race_a_sync(one, lambda: join(one, Inbox(), "bob"))
    assert who(reader) == who(one) == {"user:alice": 1, "user:bob": 1}
    event = json.loads(listener.get())
    assert (event["presence"], event["key"]) == ("join", "user:bob")
    listener.assert_empty()


@pytest.mark.slow  # waits out heartbeats (2 s): not the unit layer
def test_a_leave_during_a_syncing_heartbeat_leaves_no_ghost(
    layers: Callable[[], RedisLayer],
) -> None:
    """The same race with a leave: the sync wrote the entry back after the leave removed
    it, a ghost until some later sync."""
    one, reader = layers(), layers()
    alice, bob = Inbox(), Inbox()
    join(one, alice, "alice")
    join(one, bob, "bob")
    listener = listen(reader)
    _race_a_sync(one, lambda: leave(one, bob))
    assert who(reader) == who(one) == {"user:alice": 1}
    event = json.loads(listener.get())
    assert (event["presence"], event["key"]) == ("leave", "user:bob")
    listener.assert_empty()


def events(listener: Inbox, count: int) -> list[tuple[str, str]]:
    return [(e["presence"], e["key"]) for e in map(json.loads, listener.get_all(count))]


def test_what_changed_while_redis_was_away_is_an_event_elsewhere_once_it_is_back(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Bob leaves and carol joins in one process while Redis is unreachable: that
    process's listeners get both events at once (decided from its own members), the other
    process's once its heartbeat has written them with Redis back -- each listener each
    event once. (The heartbeat wrote the entries and published nothing: the other
    process's pages showed bob online for good, and never carol.)"""
    one, two = layers(), layers()
    # No heartbeat but the test's own: one running before two subscribed again would
    # publish the events where two's reader cannot get them.
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):
        here, there = listen(one), listen(two)
        join(one, Inbox(), "alice")
        bob = Inbox()
        join(one, bob, "bob")
        for listener in (here, there):
            assert events(listener, 2) == [("join", "user:alice"), ("join", "user:bob")]
        redis_server.stop()
        leave(one, bob)
        join(one, Inbox(), "carol")
        assert events(here, 2) == [("leave", "user:bob"), ("join", "user:carol")]
        # Both readers saw Redis go: until one has, its ``subscribed`` still holds "room"
        # from before, and the wait below could pass before it subscribed again.
        until(lambda: one.subscriber.down and two.subscriber.down)
        redis_server.start()
        until(
            lambda: "room" in one.subscriber.subscribed and "room" in two.subscriber.subscribed,
            timeout=20,
        )
        one.report_up()
        one.heartbeat("room", STALE, EXPIRY)
        assert events(there, 2) == [("leave", "user:bob"), ("join", "user:carol")]
        assert who(two) == {"user:alice": 1, "user:carol": 1}
        here.assert_empty()
        there.assert_empty()


def test_a_dead_process_users_leave_with_their_info_as_it_was_given(
    layers: Callable[[], RedisLayer],
) -> None:
    """The leave event of a user whose process died carries the info of their join, as
    any leave does. (The heartbeat's script decoded the entry and encoded its info again
    with Redis's cjson: an empty list came out as ``{}``, a large integer rounded.)"""
    one, two = layers(), layers()
    listener = listen(two)
    join(two, Inbox(), "bob")
    assert json.loads(listener.get())["key"] == "user:bob"
    info = {"name": "alice", "tags": [], "id": 12345678901234567, "url": "/u/alice/"}
    pk = 'al"i\\ce,1]'  # a string primary key: escapes, and what ends an entry
    entry = Local(f"user:{pk}", pk, json.dumps(info), info)
    alice = Inbox()
    one.join("room", alice)
    count, shown = one.registry.presence.add("room", alice, entry)
    one.present("room", entry, count, shown, True)
    assert json.loads(listener.get())["info"] == info  # the join
    one._client.hset(one.presence_keys("room")[1], one.process, 1)  # last heard long ago
    two.heartbeat("room", STALE, EXPIRY)
    left = json.loads(listener.get())
    assert (left["presence"], left["key"], left["user"]) == ("leave", f"user:{pk}", pk)
    assert left["info"] == info


def test_a_user_present_in_a_live_process_stays_when_another_of_theirs_dies(
    layers: Callable[[], RedisLayer],
) -> None:
    """Two tabs of one user in two processes; one process dies (a crash: nothing left):
    once it counts as dead the user is still present, with one socket and the live tab's
    info, and there is no leave event (a user is present while any socket is)."""
    one, two = layers(), layers()
    listener = listen(two)
    entry = {
        layer: Local("user:alice", "alice", json.dumps({"in": n}), {"in": n})
        for n, layer in enumerate((one, two))
    }
    for layer in (one, two):
        tab = Inbox()
        layer.join("room", tab)
        count, shown = layer.registry.presence.add("room", tab, entry[layer])
        layer.present("room", entry[layer], count, shown, True)
    assert json.loads(listener.get())["presence"] == "join"  # once
    assert who(two) == {"user:alice": 2}
    one._client.hset(one.presence_keys("room")[1], one.process, 1)  # last heard long ago
    two.heartbeat("room", STALE, EXPIRY)
    [alice] = two.presence("room")
    assert (alice.key, alice.info, alice.sockets) == ("user:alice", {"in": 1}, 1)
    listener.assert_empty()


def _restore_the_snapshot(redis_server: RedisServer) -> None:
    """Restart Redis from the snapshot the test's ``SAVE`` took: what a crash with RDB
    (or ``appendfsync everysec``'s last second), or a failover to a replica that lagged,
    leaves -- the group's keys there, the changes since the snapshot gone."""
    redis_server.stop()  # SIGTERM: with --save "" it writes no new snapshot
    redis_server.start()


#: A heartbeat long enough for the keys to outlive the restart (their expiry is 3 x it).
LONG_STALE, LONG_EXPIRY = 1_200_000, 1_801_000


def test_a_redis_restored_from_an_older_snapshot_gets_every_entry_back(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Redis comes back with an older copy of the group: alice's entry, not bob's who
    joined after it, nor carol's leave. The next heartbeat of their process writes its
    entries as they are. (It found the keys and its own heartbeat there and wrote nothing:
    bob was missing from ``presence`` in every process, and carol present, until each of
    them next joined or left.)"""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):
        one, reader = layers(), layers()
        carol = Inbox()
        join(one, Inbox(), "alice")
        join(one, carol, "carol")
        assert redis_server.command("SAVE") == b"+OK\r\n"
        join(one, Inbox(), "bob")
        leave(one, carol)
        _restore_the_snapshot(redis_server)
        assert who(reader) == {"user:alice": 1, "user:carol": 1}  # the snapshot's
        one.heartbeat("room", LONG_STALE, LONG_EXPIRY)
        assert who(reader) == {"user:alice": 1, "user:bob": 1}


def test_a_presence_hash_evicted_alone_is_written_again(
    layers: Callable[[], RedisLayer],
) -> None:
    """Redis evicted a group's presence hash (``allkeys-lru``, say) and kept its version
    and heartbeats: the next heartbeat writes the entries again. (It checked those two
    keys only, and the group stayed empty.)"""
    one, reader = layers(), layers()
    join(one, Inbox(), "alice")
    assert one._client.delete(one.presence_keys("room")[0]) == 1  # as an eviction does
    assert who(layers()) == {}
    one.heartbeat("room", STALE, EXPIRY)
    assert who(reader) == {"user:alice": 1}


def test_a_copy_read_before_redis_went_back_to_an_older_snapshot_follows_it(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """A process read the group's presence, then Redis came back with an older copy (see
    above) and dave joined elsewhere: that process's answer is what Redis holds. (Its
    copy took dave's join, numbered as bob's was before the restart, for one it had
    read: it showed bob, never dave, until the change log no longer reached back to it.)"""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):
        one, two, reader = layers(), layers(), layers()
        join(one, Inbox(), "alice")
        assert redis_server.command("SAVE") == b"+OK\r\n"
        join(one, Inbox(), "bob")
        assert who(reader) == {"user:alice": 1, "user:bob": 1}
        _restore_the_snapshot(redis_server)
        join(two, Inbox(), "dave")
        assert who(layers()) == {"user:alice": 1, "user:dave": 1}  # a new reader's
        assert who(reader) == {"user:alice": 1, "user:dave": 1}


def test_a_user_who_left_a_process_last_while_redis_was_away_is_a_leave_elsewhere(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """Bob, the last present member of a process in the group, leaves while Redis is
    unreachable, and Redis comes back with his entry (its data kept, as after a network
    cut); then alice joins in that process. The other process's listeners get bob's leave
    and ``presence`` has no bob. (The heartbeats forgot the leave the process had decided
    alone, as it had no member there left; alice's join made the process live again, with
    bob's entry: the next heartbeat removed it, and no one else ever got his leave.)"""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):
        one, two = layers(), layers()
        there = listen(two)
        bob = Inbox()
        join(one, bob, "bob")
        assert events(there, 1) == [("join", "user:bob")]
        assert redis_server.command("SAVE") == b"+OK\r\n"
        redis_server.stop()
        leave(one, bob)  # not written: Redis is down
        # Two's reader saw Redis go: until it has, its ``subscribed`` still holds "room"
        # from before, and the wait below could pass before it subscribed again.
        until(lambda: two.subscriber.down)
        redis_server.start()  # with the copy SAVE took: bob's entry there
        # What a process's reader does on reconnecting: the failed leave held this
        # process's calls to Redis back for a while (as a failed send does), and with no
        # member left here it has no subscription to find Redis back by itself.
        one.report_up()
        until(lambda: "room" in two.subscriber.subscribed, timeout=20)
        one._beat_all(LONG_STALE, LONG_EXPIRY)
        join(one, Inbox(), "alice")
        one._beat_all(LONG_STALE, LONG_EXPIRY)
        assert events(there, 2) == [("leave", "user:bob"), ("join", "user:alice")]
        assert who(two) == {"user:alice": 1}
        there.assert_empty()


def test_heartbeats_that_take_long_still_renew_each_group_in_time(
    layers: Callable[[], RedisLayer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round of heartbeats takes a while with many groups (one script each, a round
    trip to Redis apiece: 10,000 groups at 1 ms is 10 s). Each group is still renewed
    within twice the heartbeat while a round takes less, so this process is never
    counted dead. (The heartbeat waited a whole interval after each round: a round of
    more than one heartbeat made every group's renewals more than two apart, and its
    members vanished from every process's ``presence`` and came back, round after
    round.) A fake clock: the rounds take 1.2 heartbeats of it."""
    from dwebsocket.groups import redis as redis_layer

    layer = layers()
    heartbeat = 600.0  # the short_heartbeat fixture's 1.0 is overridden below
    starts: list[float] = []

    class Clock:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds

    clock = Clock()

    def a_round(stale: int, expiry: int) -> None:
        starts.append(clock.now)
        clock.now += 1.2 * heartbeat
        if len(starts) == 4:
            layer.subscriber._stopping = True

    monkeypatch.setattr(redis_layer, "time", clock)
    monkeypatch.setattr(layer, "_beat_all", a_round)
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=heartbeat):
        layer._beat()
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert max(gaps) <= 2 * heartbeat, gaps  # a group's renewals, one round apart


def test_an_ordinary_heartbeat_writes_no_entry_again(layers: Callable[[], RedisLayer]) -> None:
    """The checks above cost nothing while Redis keeps its data: with joins and leaves of
    two processes between them, no heartbeat syncs (sends every entry of its process)."""
    one, two = layers(), layers()
    modes: list[str] = []
    script = one._heartbeat

    def noted(*args: Any, **kwargs: Any) -> Any:
        modes.append(kwargs["args"][6])
        return script(*args, **kwargs)

    one._heartbeat = noted  # type: ignore[method-assign]
    alice, bob = Inbox(), Inbox()
    join(one, alice, "alice")
    join(two, bob, "bob")
    one.heartbeat("room", STALE, EXPIRY)
    join(one, Inbox(), "carol")
    leave(two, bob)
    one.heartbeat("room", STALE, EXPIRY)
    leave(one, alice)
    one.heartbeat("room", STALE, EXPIRY)
    assert modes == ["", "", ""]
    assert who(two) == {"user:carol": 1}


def _dead(layer: RedisLayer, group: str = "room") -> None:
    """``layer``'s process counts as dead in ``group`` (killed: last heard long ago)."""
    layer._client.hset(layer.presence_keys(group)[1], layer.process, 1)


def test_a_user_on_two_processes_that_die_together_is_one_leave(
    layers: Callable[[], RedisLayer],
) -> None:
    """A machine dies with both of its workers, alice having a tab on each: the heartbeat
    that removes their entries sends one leave. (It sent one per entry.)"""
    one, two, three = layers(), layers(), layers()
    listener = listen(three)
    join(three, Inbox(), "bob")
    join(one, Inbox(), "alice")
    join(two, Inbox(), "alice")
    assert events(listener, 2) == [("join", "user:bob"), ("join", "user:alice")]
    _dead(one)
    _dead(two)
    three.heartbeat("room", STALE, EXPIRY)
    assert events(listener, 1) == [("leave", "user:alice")]
    listener.assert_empty()
    assert who(three) == {"user:bob": 1}


def test_a_user_back_before_their_dead_process_is_reaped_leaves_then_joins(
    layers: Callable[[], RedisLayer],
) -> None:
    """Alice's process is killed and she reconnects to another one after it counts as
    dead, before a heartbeat removed its entries: her listeners get a leave (the dead
    entry's, as a heartbeat would send it) and then her join, so that every listener's
    events alternate, whether it saw her first join or read ``presence`` after the
    process counted dead; none when the heartbeat comes. (Those who saw her first join
    got a second one, and never a leave.)"""
    one, two = layers(), layers()
    listener = listen(two)
    join(one, Inbox(), "alice")
    assert events(listener, 1) == [("join", "user:alice")]
    _dead(one)
    join(two, Inbox(), "alice")
    assert events(listener, 2) == [("leave", "user:alice"), ("join", "user:alice")]
    assert who(two) == {"user:alice": 1}
    two.heartbeat("room", STALE, EXPIRY)
    listener.assert_empty()
    assert who(two) == {"user:alice": 1}


def test_a_user_leaving_beside_their_dead_process_is_one_leave(
    layers: Callable[[], RedisLayer],
) -> None:
    """Alice has tabs in two processes; one is killed, and once it counts as dead, before
    a heartbeat removed its entries, she closes the other: one leave. (One came at the
    close, and another when the dead entry was removed.)"""
    one, two, three = layers(), layers(), layers()
    listener = listen(three)
    join(three, Inbox(), "bob")
    alice = Inbox()
    join(one, Inbox(), "alice")
    join(two, alice, "alice")
    assert events(listener, 2) == [("join", "user:bob"), ("join", "user:alice")]
    _dead(one)
    leave(two, alice)
    three.heartbeat("room", STALE, EXPIRY)
    assert events(listener, 1) == [("leave", "user:alice")]
    listener.assert_empty()
    assert who(three) == {"user:bob": 1}


def test_a_process_judges_the_others_heartbeats_by_its_own_setting(
    layers: Callable[[], RedisLayer],
) -> None:
    """What docs/users.rst warns of: a process whose ``WEBSOCKET_PRESENCE_HEARTBEAT`` is
    shorter than the others' takes them for dead sooner (here at once), in its answers."""
    one, reader = layers(), layers()
    join(one, Inbox(), "alice")
    assert who(reader) == {"user:alice": 1}
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=0.001):  # dead after 2 ms
        until(lambda: who(reader) == {})


def test_presence_does_not_wait_on_a_redis_that_failed_moments_ago(
    redis_server: RedisServer,
) -> None:
    """Sends stop trying a Redis that just failed them for a while (backing off, up to
    5 s) so that views do not each wait a timeout; presence wrote on regardless, one
    script per join or close and per group at each heartbeat, each waiting the socket
    timeout: during an outage every closing socket held its thread that long (under
    ASGI, the few signal threads for all the sockets). Held back as sends are now, and
    a failed write holds sends back too. Nothing here waits on the clock: the layer is
    held back for its longest delay before the calls."""
    proxy = Proxy(redis_server.port)  # counts the connections that reach Redis
    layer = RedisLayer(
        f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.5&socket_connect_timeout=0.5",
        Registry(),
    )
    try:
        for _ in range(8):  # as eight failed sends in a row leave it: held back 5 s
            layer._publish_failed(ConnectionError("down"))
        member = Inbox()
        entry = Local("user:alice", "alice", "{}", {})
        count, shown = layer.registry.presence.add("room", member, entry)
        layer.present("room", entry, count, shown, True)
        layer.heartbeat("room", STALE, EXPIRY)
        with pytest.raises(GroupsUnavailable):
            layer.presence("room")
        assert "room" in layer._unsynced  # written by the first heartbeat Redis answers
    finally:
        layer.close()
        proxy.close()
    assert proxy.forwarded == 0  # not even a connection


@pytest.mark.usefixtures("long_first_pause")  # the check below falls in it
def test_a_presence_write_that_fails_holds_the_next_calls_back(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """A presence write that finds Redis gone counts as a failed send would: the next
    calls (sends too) do not try it again at once. ``report_up`` (the reader's
    reconnection) ends it, as it ends a send's."""
    one = layers()
    redis_server.stop()
    member = Inbox()
    entry = Local("user:bob", "bob", "{}", {})
    count, shown = one.registry.presence.add("room", member, entry)
    one.present("room", entry, count, shown, True)
    assert one._held_back(None)
    redis_server.start()
    one.report_up()
    assert not one._held_back(None)
    one.heartbeat("room", STALE, EXPIRY)
    assert {p.key for p in one.presence("room")} == {"user:bob"}


def test_a_key_with_a_newline_or_a_bar_reaches_the_other_processes_as_it_is(
    layers: Callable[[], RedisLayer],
) -> None:
    """A user whose primary key (a string, as ``str(user.pk)`` gives it) holds a newline
    and a ``|``: the other processes' copies, read from the change log, show their key
    as it is, and drop it when they leave. (The log entry ``n\\nfield\\nvalue`` was split
    at the key's newline: every later ``presence()`` of the group raised a
    ``JSONDecodeError`` there, until a thousand changes pushed the entry out of the log.)"""
    one, reader = layers(), layers()
    join(one, Inbox(), "bob")
    assert who(reader) == {"user:bob": 1}  # a full read: the next ones read the log
    pk = "a\nb|c\n"
    odd = Inbox()
    join(one, odd, pk)
    assert who(reader) == {"user:bob": 1, f"user:{pk}": 1}
    [alice] = [p for p in reader.presence("room") if p.user == pk]
    assert (alice.key, alice.info) == (f"user:{pk}", {"name": pk})
    leave(one, odd)
    assert who(reader) == {"user:bob": 1}


@pytest.mark.parametrize("first", ["leave", "join"])
def test_a_users_events_while_redis_is_away_follow_the_order_of_its_changes(
    layers: Callable[[], RedisLayer], redis_server: RedisServer, first: str
) -> None:
    """While Redis is unreachable, two threads change one user's presence at once in one
    process (alice's only tab closes as another opens, or a tab opens and closes at
    once): thread A's change is made in the registry, and A pauses before its write
    while thread B's change runs to its end. The changes overlap, so no event (as with
    Redis up, and on ``memory://``); the user is as the registry says, here and, once
    Redis is back, elsewhere. (Each thread decided its event from the count its own
    change gave: the listeners here got a join, then a leave while alice was present --
    or a leave for a user never announced, then a join while she was gone.)"""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):  # the test's beats only
        one, two = layers(), layers()
        here, there = listen(one), listen(two)
        join(one, Inbox(), "bob")  # another user: events flow before the outage
        tabs = [Inbox(), Inbox()]
        if first == "leave":
            join(one, tabs[0], "alice")
        expected = [("join", "user:bob")] + [("join", "user:alice")] * (first == "leave")
        for listener in (here, there):
            assert events(listener, len(expected)) == expected
        redis_server.stop()
        present_then, armed = one.present, [True]
        held, opened = threading.Event(), threading.Event()

        def deciding(*args: Any) -> None:
            if armed:
                armed.clear()
                held.set()
                opened.wait(WAIT)  # bounded: the test opens it once B is done
            present_then(*args)

        one.present = deciding  # type: ignore[method-assign]
        if first == "leave":  # the open tab closes as a new one opens
            change_a = functools.partial(leave, one, tabs[0])
            change_b = functools.partial(join, one, tabs[1], "alice")
            now = {"user:alice": 1, "user:bob": 1}
        else:  # a tab opens and closes
            change_a = functools.partial(join, one, tabs[0], "alice")
            change_b = functools.partial(leave, one, tabs[0])
            now = {"user:bob": 1}
        thread_a = threading.Thread(target=change_a, name="change A", daemon=True)
        thread_a.start()
        try:
            assert held.wait(WAIT), "thread A never reached its write"
            change_b()
        finally:
            opened.set()
            thread_a.join(WAIT)
        assert not thread_a.is_alive()
        assert {p.key: p.sockets for p in one.registry.presence.present("room")} == now
        join(one, Inbox(), "carol")  # an event after them: the ones before it came first
        assert events(here, 1) == [("join", "user:carol")]
        # Both readers saw Redis go: until one has, its ``subscribed`` still holds "room"
        # from before, and the wait below could pass before it subscribed again.
        until(lambda: one.subscriber.down and two.subscriber.down)
        redis_server.start()
        until(
            lambda: "room" in one.subscriber.subscribed and "room" in two.subscriber.subscribed,
            timeout=20,
        )
        one.report_up()
        one.heartbeat("room", STALE, EXPIRY)  # syncs: publishes what it decided alone
        assert events(there, 1) == [("join", "user:carol")]
        assert who(two) == {**now, "user:carol": 1}
        here.assert_empty()
        there.assert_empty()


def test_a_listener_whose_deliver_changes_presence_while_redis_is_away_is_not_stuck(
    layers: Callable[[], RedisLayer], redis_server: RedisServer
) -> None:
    """While Redis is unreachable the events are delivered by the thread that decided
    them; a listener's deliver() may call back into the groups: here it closes the tab
    whose join it gets. The join's thread returns, and the listeners get the join, then
    the leave."""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):
        one = layers()
        tab = Inbox()

        class Closing(Inbox):
            def deliver(self, message: Any) -> None:
                super().deliver(message)
                if '"presence":"join","key":"user:alice"' in message and not tab.closed:
                    tab.closed = True
                    leave(one, tab)

        closing = Closing()
        one.join("room", closing)
        one.registry.presence.listen("room", closing)
        watcher = listen(one)
        join(one, Inbox(), "bob")
        assert events(closing, 1) == events(watcher, 1) == [("join", "user:bob")]
        redis_server.stop()
        joining = threading.Thread(target=join, args=(one, tab, "alice"), daemon=True)
        joining.start()
        joining.join(WAIT)
        assert not joining.is_alive(), "the join's thread is stuck"
        expected = [("join", "user:alice"), ("leave", "user:alice")]
        assert events(closing, 2) == events(watcher, 2) == expected
        assert one.registry.presence.present("room")[0].key == "user:bob"


def test_a_presence_key_of_another_type_is_no_outage(
    layers: Callable[[], RedisLayer],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key of another type where a group's presence hash goes: Redis answers WRONGTYPE
    to that group's presence writes alone. One ERROR names the group; the process's other
    groups go on (their sends reach the other processes, their presence is written), and
    nothing says Redis is unreachable. (Each write and heartbeat was taken for an outage,
    holding back every group's sends.)"""
    one, two = layers(), layers()
    there = Inbox()
    two.join("other", there)
    caplog.set_level(logging.WARNING, logger="dwebsocket.groups")
    redis_server.command("SET", one.presence_keys("room")[0], "foreign")
    join(one, Inbox(), "alice")
    one.heartbeat("room", STALE, EXPIRY)
    one.send("other", "goes on", fail_silently=False)
    assert there.get() == "goes on"
    join(one, Inbox(), "bob", group="other")
    assert who(two, "other") == {"user:bob": 1}
    assert not one.outage
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dwebsocket.groups"]
    assert [level for level, _ in said] == ["ERROR"], said
    assert "'room'" in said[0][1] and "WRONGTYPE" in said[0][1]
