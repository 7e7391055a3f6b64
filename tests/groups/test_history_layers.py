"""The same history and recovery scenarios on ``memory://`` and on ``redis://`` (a
private redis-server), through the public API (``groups.send``, ``groups.join(...,
since=)``), so that the two layers are tested against each other: the edges of what a
position may name (another epoch, forged, from the future, at the trim boundary), the
``ttl`` of single messages and of a whole history, a changed setting, and sends from
several threads during a replay. ``test_history.py`` and ``test_history_redis.py`` cover
what only one layer has."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.groups.history import Item, Position, Recovery
from dwebsocket.typing import Message
from tests.groups.test_redis_layer import WAIT, Inbox, until

_names = itertools.count()

SIZE = 5
HISTORY = {"kept.*": {"size": SIZE, "ttl": 60}}


@pytest.fixture(params=["memory", "redis"])
def group(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new history group's name (``kept.<n>``), on the layer of the test's parameter."""
    if request.param == "memory":
        url = "memory://"
    else:
        url = request.getfixturevalue("redis_url") + "?socket_timeout=2&socket_connect_timeout=2"
    groups.reset()
    with override_settings(WEBSOCKET_GROUPS_URL=url, WEBSOCKET_GROUPS_HISTORY=HISTORY):
        try:
            yield f"kept.{next(_names)}"
        finally:
            groups.reset()


class Reader(Inbox):
    """A member whose client speaks ``dws``: each message comes with its position."""

    dws = True

    def joined(self) -> dict[str, Any]:
        """The ``joined`` envelope (the messages replayed before it are skipped)."""
        while True:
            envelope = json.loads(self.get())
            if envelope["dws"] == "joined":
                return envelope  # type: ignore[no-any-return]

    def next_messages(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` group messages as ``(position, text)``, skipping the rest."""
        found: list[tuple[str, str]] = []
        while len(found) < count:
            envelope = json.loads(self.get())
            if envelope["dws"] == "msg":
                found.append((envelope["p"], envelope["d"]))
        return found


def sent(group: str, count: int, prefix: str = "m") -> list[str]:
    """Send ``count`` messages (``m1``, ``m2``...); their positions."""
    positions = [groups.send(group, f"{prefix}{i}") for i in range(1, count + 1)]
    assert None not in positions
    return positions  # type: ignore[return-value]


def join(group: str, since: str | None) -> tuple[Reader, Recovery]:
    reader = Reader()
    return reader, groups.join(group, reader, since=since)


def epoch_of(position: str) -> str:
    parsed = Position.parse(position)
    assert parsed is not None
    return parsed.epoch


# -- what a position may name -----------------------------------------------------------------


def test_the_position_of_the_newest_message_recovers_nothing_missed(group: str) -> None:
    newest = sent(group, 3)[-1]
    reader, recovery = join(group, newest)
    assert recovery == Recovery(since=newest, position=newest, recovered=True, missed=0)
    assert groups.send(group, "live") == f"{epoch_of(newest)}:4"
    assert reader.next_messages(1) == [(f"{epoch_of(newest)}:4", "live")]


def test_a_position_at_the_start_of_an_untrimmed_history_recovers_all(group: str) -> None:
    positions = sent(group, 3)
    epoch = epoch_of(positions[0])
    reader, recovery = join(group, f"{epoch}:0")
    assert recovery.recovered and recovery.missed == 3 and recovery.position == positions[-1]
    assert reader.next_messages(3) == list(zip(positions, ["m1", "m2", "m3"], strict=True))


@pytest.mark.parametrize("ahead", [1, 2, 2**64 - 4])
def test_a_position_newer_than_the_newest_fails_and_goes_live_from_the_head(
    group: str, ahead: int
) -> None:
    newest = sent(group, 3)[-1]
    epoch = epoch_of(newest)
    since = f"{epoch}:{3 + ahead}"
    reader, recovery = join(group, since)
    assert recovery == Recovery(since=since, position=newest, recovered=False)
    reader.joined()
    # The next message comes once, live (not held back behind the position asked for).
    live = groups.send(group, "live")
    assert reader.next_messages(1) == [(live, "live")]


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "x",
        "{epoch}",
        "{epoch}:",
        ":2",
        "{epoch}:-1",
        "{epoch}:2x",
        "{epoch}:+2",
        "{epoch}: 2",
        "{epoch}:²",
        "{epoch}:18446744073709551616",
        "{epoch}-2",
        "{epoch}:2:2",
        "{epoch}x:2",
        "{upper}:2",
        "0{epoch}:2",
        "{epoch}:2" + " " * 64,
    ],
)
def test_a_malformed_or_forged_position_fails_with_the_groups_position(
    group: str, forged: str
) -> None:
    newest = sent(group, 3)[-1]
    epoch = epoch_of(newest)
    since = forged.format(epoch=epoch, upper=epoch.upper() if epoch.upper() != epoch else "A")
    reader, recovery = join(group, since)
    assert recovery == Recovery(since=since, position=newest, recovered=False)
    joined = reader.joined()
    assert joined["p"] == newest and joined["recovered"] is False
    reader.assert_empty()  # nothing replayed


def test_a_position_with_leading_zeros_names_the_same_message(group: str) -> None:
    positions = sent(group, 3)
    since = f"{epoch_of(positions[0])}:0001"
    reader, recovery = join(group, since)
    assert recovery.recovered and recovery.missed == 2
    assert reader.next_messages(2) == [(positions[1], "m2"), (positions[2], "m3")]


def test_a_position_of_another_epoch_fails(group: str) -> None:
    newest = sent(group, 3)[-1]
    for since in ["1:3", "abcdef012345:3", "1700000000000000:3"]:
        reader, recovery = join(group, since)
        assert recovery == Recovery(since=since, position=newest, recovered=False)
        groups.leave(group, reader)


def test_a_position_of_a_group_that_never_sent_fails_with_a_new_epoch(group: str) -> None:
    reader, recovery = join(group, "abcdef012345:0")
    assert recovery.failed and recovery.position is not None
    epoch, offset = Position.parse(recovery.position)  # type: ignore[misc]
    assert offset == 0 and epoch != "abcdef012345"
    # That epoch is the one the first message is sent in.
    assert groups.send(group, "first") == f"{epoch}:1"
    assert reader.next_messages(1) == [(f"{epoch}:1", "first")]


# -- the trim boundary --------------------------------------------------------------------------


def test_the_message_before_the_oldest_kept_is_the_oldest_position_to_recover_from(
    group: str,
) -> None:
    """``size`` 5, 12 sent: 8 to 12 are kept, so 7 (the one before the oldest kept) still
    recovers every message after it, and 6 does not (7 is gone)."""
    positions = sent(group, 12)
    epoch = epoch_of(positions[0])
    reader, recovery = join(group, f"{epoch}:7")
    assert recovery.recovered and recovery.missed == SIZE
    assert [text for _, text in reader.next_messages(SIZE)] == [f"m{i}" for i in range(8, 13)]
    groups.leave(group, reader)
    reader, recovery = join(group, f"{epoch}:6")
    assert recovery.failed and recovery.missed == 0 and recovery.position == positions[-1]
    reader.joined()
    reader.assert_empty()


def test_the_trim_boundary_moves_with_each_message(group: str) -> None:
    positions = sent(group, SIZE)
    epoch = epoch_of(positions[0])
    assert join(group, f"{epoch}:0")[1].recovered  # 1 to 5: all kept
    groups.send(group, "m6")
    assert join(group, f"{epoch}:0")[1].failed  # 1 is gone
    assert join(group, f"{epoch}:1")[1].missed == SIZE


# -- ttl ------------------------------------------------------------------------------------


def test_a_message_older_than_the_ttl_is_gone_while_newer_ones_stay(group: str) -> None:
    """Each message is kept ``ttl`` seconds: the group's first has expired, its second
    (sent later) has not, so the history still reaches back to the first but not before."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 50, "ttl": 3}}):
        first = groups.send(group, "m1")
        assert first is not None
        time.sleep(2)
        second = groups.send(group, "m2")
        time.sleep(1.5)  # m1 3.5 s old, m2 1.5 s
        epoch = epoch_of(first)
        reader, recovery = join(group, f"{epoch}:0")
        assert recovery.failed and recovery.position == second
        reader, recovery = join(group, first)
        assert recovery.recovered and recovery.missed == 1
        assert reader.next_messages(1) == [(second, "m2")]


def test_a_group_silent_for_longer_than_its_ttl_starts_a_new_epoch(group: str) -> None:
    """Past ``ttl`` plus a second (Redis's stream lives that second more: see
    ``docs/recovery.rst``), on both layers."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 50, "ttl": 0.5}}):
        newest = sent(group, 2)[-1]
        time.sleep(1.8)
        reader, recovery = join(group, newest)
        assert recovery.failed
        assert recovery.position is not None and epoch_of(recovery.position) != epoch_of(newest)
        after = groups.send(group, "new epoch")
        assert after == f"{epoch_of(recovery.position)}:1"
        assert reader.next_messages(1) == [(after, "new epoch")]


# -- a changed setting ----------------------------------------------------------------------


def test_a_smaller_size_in_a_new_setting_applies_to_the_next_join(group: str) -> None:
    """The history keeps its last ``size`` messages under the setting in force when read:
    after the setting goes from 5 to 2, a client 3 messages behind cannot recover."""
    positions = sent(group, 5)
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 2, "ttl": 60}}):
        reader, recovery = join(group, positions[1])  # after m2: m3, m4, m5
        assert recovery.failed and recovery.position == positions[-1]
        reader.joined()
        reader.assert_empty()
        reader, recovery = join(group, positions[2])  # after m3: m4, m5
        assert recovery.recovered and recovery.missed == 2


def test_messages_sent_while_history_was_off_are_missing_from_a_recovery(group: str) -> None:
    """History turned off for a group and on again within its ``ttl``: the history goes
    on in its epoch without the messages sent while it was off (they got no position),
    and a position from before them recovers "successfully" without them (as
    ``docs/recovery.rst`` says: a change of the setting is deployed like one of schema)."""
    before = sent(group, 1)[0]
    with override_settings(WEBSOCKET_GROUPS_HISTORY={}):
        assert groups.send(group, "while off") is None
    reader, recovery = join(group, before)
    assert recovery.recovered and recovery.missed == 0 and recovery.position == before
    after = groups.send(group, "on again")
    assert after == f"{epoch_of(before)}:2"
    assert reader.next_messages(1) == [(after, "on again")]
    reader.assert_empty()


def test_a_reordered_setting_is_a_new_one(group: str) -> None:
    """Patterns are tried in the order written: the same patterns in another order give
    the group another size, from the next join on."""
    wide, narrow = "kept.*", f"{group}*"
    first = {wide: {"size": 2, "ttl": 60}, narrow: {"size": SIZE, "ttl": 60}}
    reordered = {narrow: {"size": SIZE, "ttl": 60}, wide: {"size": 2, "ttl": 60}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=reordered):
        positions = sent(group, 5)
        assert join(group, positions[1])[1].recovered  # size 5: m3 to m5 kept
    with override_settings(WEBSOCKET_GROUPS_HISTORY=first):
        assert join(group, positions[1])[1].failed  # size 2: m3 is past it
        assert join(group, positions[2])[1].recovered


def test_the_first_pattern_a_group_matches_decides_its_history(group: str) -> None:
    other = f"{group}x"  # matches "kept.*" and, later, "kept.<n>x*"
    setting = {
        "kept.*": {"size": 2, "ttl": 60},
        f"{other}*": {"size": 9, "ttl": 60},
        group: {"size": 4, "ttl": 60},  # listed last, but an exact name
    }
    with override_settings(WEBSOCKET_GROUPS_HISTORY=setting):
        exact = sent(group, 6)
        assert join(group, exact[1])[1].recovered  # the exact name: 4 kept
        assert join(group, exact[0])[1].failed
        patterned = sent(other, 6)
        assert join(other, patterned[3])[1].recovered  # "kept.*", listed first: 2 kept
        assert join(other, patterned[2])[1].failed


# -- a group emptied and refilled -----------------------------------------------------------


def test_a_group_emptied_of_members_keeps_its_history(group: str) -> None:
    reader, _ = join(group, None)
    seen = sent(group, 2)[-1]
    groups.leave(group, reader)
    missed = sent(group, 3, "n")
    reader, recovery = join(group, seen)
    assert recovery.recovered and recovery.missed == 3 and recovery.position == missed[-1]
    assert reader.next_messages(3) == list(zip(missed, ["n1", "n2", "n3"], strict=True))
    live = groups.send(group, "live")
    assert reader.next_messages(1) == [(live, "live")]


# -- concurrency ----------------------------------------------------------------------------


@contextlib.contextmanager
def sending(group: str, threads: int, each: int) -> Iterator[None]:
    """``threads`` threads each sending ``each`` messages (``t<thread>.<i>``) to ``group``,
    started together with the ``with`` body, which runs while they send; each thread is
    joined, and its failure raised, when the body is done."""
    start = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def send_all(name: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(each):
                assert groups.send(group, f"t{name}.{i}", fail_silently=False) is not None
        except BaseException as exc:  # raised below, not lost in the thread
            failures.append(exc)

    senders = [threading.Thread(target=send_all, args=(n,)) for n in range(threads)]
    for thread in senders:
        thread.start()
    start.wait(WAIT)
    try:
        yield
    finally:
        for thread in senders:
            thread.join(WAIT)
    assert not failures, failures


def test_sends_from_several_threads_during_a_replay_come_once_in_order(group: str) -> None:
    """Four threads send while a member recovers from the group's first position: it gets
    every later message once, in position order, the replayed and the live ones."""
    threads, each = 4, 300
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 10_000, "ttl": 60}}):
        since = sent(group, 200)[0]
        with sending(group, threads, each):
            reader, recovery = join(group, since)
        assert recovery.recovered
        got = reader.next_messages(199 + threads * each)
        reader.assert_empty()
        epoch = epoch_of(since)
        assert [p for p, _ in got] == [f"{epoch}:{n}" for n in range(2, 201 + threads * each)]
        for name in range(threads):  # each thread's messages in the order it sent them
            mine = [text for _, text in got if text.startswith(f"t{name}.")]
            assert mine == [f"t{name}.{i}" for i in range(each)]


def test_a_join_without_since_during_sends_gets_every_message_after_its_position(
    group: str,
) -> None:
    """The position a first visit gets is where its live messages begin: every later
    message comes once, none before it, while four threads send."""
    threads, each = 4, 300
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 10_000, "ttl": 60}}):
        sent(group, 1)
        with sending(group, threads, each):
            reader, recovery = join(group, None)
        assert recovery.position is not None
        epoch, offset = Position.parse(recovery.position)  # type: ignore[misc]
        last = 1 + threads * each
        got = reader.next_messages(last - offset)
        reader.assert_empty()
        assert [p for p, _ in got] == [f"{epoch}:{n}" for n in range(offset + 1, last + 1)]


def test_a_replay_racing_the_trimming_recovers_all_or_fails_and_then_misses_nothing(
    group: str,
) -> None:
    """A small history (``size`` 20) trimmed by four sending threads while a member
    recovers from its oldest kept position: either the member got every later message,
    or it is told the recovery failed; either way none twice, and every message after
    the position the join returned."""
    threads, each = 4, 200
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 20, "ttl": 60}}):
        since = sent(group, 40)[19]  # 21 to 40 are kept
        with sending(group, threads, each):
            reader, recovery = join(group, since)
        assert recovery.position is not None
        epoch, offset = Position.parse(recovery.position)  # type: ignore[misc]
        last = 40 + threads * each
        got: list[int] = []
        while not got or got[-1] != last:
            envelope = json.loads(reader.get())
            if envelope["dws"] == "msg":
                position = Position.parse(envelope["p"])
                assert position is not None and position.epoch == epoch
                got.append(position.offset)
        reader.assert_empty()
        assert got == sorted(set(got))  # in order, none twice
        if recovery.recovered:
            assert got == list(range(21, last + 1))
        assert set(range(offset + 1, last + 1)) <= set(got)


class StalledReader(Reader):
    """A :class:`Reader` whose replay waits in its first ``send`` until ``release`` is set
    (a client reading slowly: the view's thread blocked in the replay), so that what
    comes live meanwhile is held back."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def send(self, message: Message) -> None:
        if not self.stalled.is_set():
            self.stalled.set()
            assert self.release.wait(WAIT)
        self.deliver(message)


def test_what_comes_live_during_a_replay_is_held_back_up_to_the_send_queue_size(
    group: str,
) -> None:
    """Live messages held back while a member is replayed to take at most
    ``WEBSOCKET_SEND_QUEUE_SIZE`` bytes (not 10,000 messages of up to 8 MiB each): the
    oldest are dropped and read again from the history, so the member still gets every
    message once, in order, and recovers."""
    limit, size, live = 64 * 1024, 16 * 1024, 32
    with override_settings(
        WEBSOCKET_GROUPS_HISTORY={"kept.*": {"size": 1000, "ttl": 60}},
        WEBSOCKET_SEND_QUEUE_SIZE=limit,
    ):
        since = sent(group, 2)[0]
        reader = StalledReader()
        joined: list[Recovery] = []
        joining = threading.Thread(target=lambda: joined.append(groups.join(group, reader, since)))
        joining.start()
        try:
            assert reader.stalled.wait(WAIT)
            texts = [f"{i:04}".ljust(size, "x") for i in range(live)]
            positions = [groups.send(group, text, fail_silently=False) for text in texts]
            follower = groups._registry.followers.get(group)[id(reader)]  # type: ignore[index]

            def held() -> list[Item]:
                with follower.lock:
                    return list(follower.buffer or ())

            until(lambda: bool(held()) and str(held()[-1].position) == positions[-1])
            assert sum(len(item.message) for item in held()) <= limit
        finally:
            reader.release.set()
            joining.join(WAIT)
        assert joined and joined[0].recovered and joined[0].missed == 1 + live
        got = reader.next_messages(1 + live)  # all replayed: the joined envelope follows
        assert reader.joined()["recovered"]
        reader.assert_empty()
        assert got[1:] == list(zip(positions, texts, strict=True))
        assert [p for p, _ in got] == [f"{epoch_of(since)}:{n}" for n in range(2, 3 + live)]
