"""Group history and recovery in one process (``memory://``), with real WebSockets:
``dwebsocket.testing`` runs ``tests/groups/views.py``'s ``follower`` view over a socket pair
with the default backend. The Redis layer's twin of these tests is ``test_history_redis.py``."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks
from django.test import RequestFactory, override_settings

from dwebsocket import groups
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.groups.batch import Batch
from dwebsocket.groups.history import (
    GAP_CLOSE,
    PAGE,
    PAGE_BYTES,
    Follower,
    Item,
    Items,
    Policy,
    Position,
    Recovery,
    go_live,
    parse_setting,
    policy,
)
from dwebsocket.testing import WebSocketClient
from dwebsocket.typing import Message
from tests.groups.test_redis_layer import WAIT, Inbox, until

HISTORY = {"room": {"size": 50, "ttl": 60}, "kept.*": {"size": 5, "ttl": 60}}


@pytest.fixture(autouse=True)
def history() -> Iterator[None]:
    groups.reset()
    with override_settings(WEBSOCKET_GROUPS_HISTORY=HISTORY):
        yield
    groups.reset()


def follow(
    group: str, since: str | None = None, dws: bool = False, **query: str
) -> WebSocketClient:
    """A client of the ``follower`` view, for ``with``."""
    params = dict(query)
    if dws:
        params["dws"] = "1"
    if since is not None:
        params["dws_since"] = json.dumps({group: since})
    suffix = "?" + urllib.parse.urlencode(params) if params else ""
    return WebSocketClient(f"/group/{group}/follow/{suffix}", timeout=10)


def recovery_of(ws: WebSocketClient) -> dict[str, Any]:
    """The ``recovery`` report the view sends after its join."""
    while True:
        message = ws.receive_json()
        if "recovery" in message:
            report: dict[str, Any] = message["recovery"]
            return report


def receive(ws: WebSocketClient, count: int) -> list[Message]:
    return [ws.receive() for _ in range(count)]


# -- settings and positions --------------------------------------------------------------------


def test_policy_exact_name_first_then_patterns_in_order() -> None:
    setting = {
        "a.*": {"size": 1, "ttl": 1},
        "*": {"size": 2, "ttl": 2},
        "a.b": {"size": 3, "ttl": 3},
    }
    with override_settings(WEBSOCKET_GROUPS_HISTORY=setting):
        assert policy("a.b").size == 3  # type: ignore[union-attr]
        assert policy("a.c").size == 1  # type: ignore[union-attr]
        assert policy("z").size == 2  # type: ignore[union-attr]
    with override_settings(WEBSOCKET_GROUPS_HISTORY={}):
        assert policy("a.b") is None
    assert policy("other") is None
    assert policy("kept.x") is not None


def test_policy_follows_a_setting_changed_in_place() -> None:
    """The setting's dict changed in place (or an override reusing one object) is read
    again, as every setting is. (Answers and the check were cached by the identity of the
    value: the old policy went on, and a wrong value went unreported.)"""
    setting: dict[str, dict[str, Any]] = {"room": {"size": 10, "ttl": 60}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=setting):
        assert policy("room") == Policy(10, 60.0)
        assert policy("other") is None
        setting["room"]["size"] = 20
        setting["other"] = {"size": 5, "ttl": 1}
        assert policy("room") == Policy(20, 60.0)
        assert policy("other") == Policy(5, 1.0)
        del setting["room"]
        assert policy("room") is None
        setting["other"]["ttl"] = 0
        with pytest.raises(InvalidSetting) as wrong:
            policy("other")
        assert wrong.value.check_id == "dwebsocket.E023"
        setting["other"]["ttl"] = 2
        assert policy("other") == Policy(5, 2.0)


def test_policy_follows_a_setting_reordered() -> None:
    """Patterns are tried in the order written: the same patterns in another order (an
    override, the dict rebuilt in place) are a new setting. (The last value was compared
    as dicts compare, ignoring order: the old order's answers went on.)"""
    first = {"a*": {"size": 1, "ttl": 1}, "ab*": {"size": 2, "ttl": 2}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=first):
        assert policy("abc") == Policy(1, 1.0)
    reordered = {"ab*": {"size": 2, "ttl": 2}, "a*": {"size": 1, "ttl": 1}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=reordered):
        assert policy("abc") == Policy(2, 2.0)
        reordered["ab*"] = reordered.pop("ab*")  # moved last, in place
        assert policy("abc") == Policy(1, 1.0)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("x", "must be a dict"),
        ({"": {"size": 1, "ttl": 1}}, "non-empty str"),
        ({"g": 5}, "expected"),
        ({"g": {"size": 0, "ttl": 1}}, "'size' must be an int from 1 to 2**62"),
        ({"g": {"size": True, "ttl": 1}}, "'size' must be an int from 1 to 2**62"),
        ({"g": {"size": 2**63, "ttl": 1}}, "'size' must be an int from 1 to 2**62"),
        ({"g": {"size": 1, "ttl": 0}}, "'ttl' must be a number of seconds > 0"),
        ({"g": {"size": 1, "ttl": "1"}}, "'ttl' must be a number of seconds > 0"),
        ({"g": {"size": 1, "ttl": float("inf")}}, "at most 315360000 (ten years)"),
        ({"g": {"size": 1, "ttl": 1, "maxlen": 3}}, "unknown option"),
    ],
)
def test_setting_problems_are_system_check_errors(value: object, problem: str) -> None:
    assert problem in parse_setting(value)[1][0]
    with override_settings(WEBSOCKET_GROUPS_HISTORY=value):
        errors = [m for m in checks.run_checks() if m.id == "dwebsocket.E023"]
    assert len(errors) == 1 and problem in errors[0].msg


def test_a_good_setting_passes_the_check() -> None:
    assert parse_setting(HISTORY)[1] == []
    assert not [m for m in checks.run_checks() if m.id == "dwebsocket.E023"]


@pytest.mark.parametrize(
    "text",
    [
        None,
        5,
        "",
        "abc",
        ":5",
        "ab:",
        "ab:-1",
        "ab:1.5",
        "a b:1",
        "ab:\u0661",
        "é:1",
        "a:" + "9" * 70,
        "a:18446744073709551616",  # past a Redis stream's 64-bit sequence numbers
    ],
)
def test_malformed_positions_parse_as_none(text: object) -> None:
    assert Position.parse(text) is None


def test_positions_round_trip_and_order() -> None:
    position = Position.parse("0a1b2c:42")
    assert position == Position("0a1b2c", 42) and str(position) == "0a1b2c:42"
    assert Position("e", 9) < Position("e", 10)


def test_since_reads_the_clients_query_parameter() -> None:
    factory = RequestFactory()
    asked = factory.get("/", {"dws_since": json.dumps({"room": "e:3", "other": 5})})
    assert groups.since(asked, "room") == "e:3"
    assert groups.since(asked, "other") is None  # not a str
    assert groups.since(asked, "missing") is None
    for raw in ["", "not json", "[1]", "x" * 70000]:
        assert groups.since(factory.get("/", {"dws_since": raw}), "room") is None
    assert groups.since(factory.get("/"), "room") is None


@pytest.mark.parametrize("raw", ["[" * 5000, '{"room":' * 2000])
def test_a_dws_since_nested_too_deep_to_parse_joins_without_a_position(raw: str) -> None:
    """A ``dws_since`` nested deeper than ``json`` decodes (RecursionError, not
    ValueError) is malformed like any other: the client joins without a position. Before,
    the RecursionError escaped ``groups.since``: the view's 500, from any client's URL."""
    assert groups.since(RequestFactory().get("/", {"dws_since": raw}), "room") is None
    with follow("room", dws_since=raw) as ws:
        report = recovery_of(ws)
        assert report["since"] is None and report["failed"] is False


def test_a_query_django_will_not_read_asks_for_no_position() -> None:
    """A URL with more fields than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` makes ``request.GET``
    raise ``TooManyFieldsSent``: ``groups.since`` (documented "never raises") let it out,
    a 1011 for a view that asks after its accept. As ``dws.announced``, it reads as none."""
    query = "&".join(f"f{n}=1" for n in range(1001)) + '&dws_since={"room":"e:3"}'
    assert groups.since(RequestFactory().get("/?" + query), "room") is None


# -- send and join -----------------------------------------------------------------------------


def test_send_returns_ordered_positions_for_history_groups_only() -> None:
    first = Position.parse(groups.send("room", "one"))
    second = Position.parse(groups.send("room", b"two"))
    assert first is not None and second is not None
    assert first.epoch == second.epoch and (first.offset, second.offset) == (1, 2)
    assert groups.send("plain", "x") is None
    other = Position.parse(groups.send("kept.a", "x"))
    assert other is not None and other.offset == 1 and other.epoch != first.epoch


def test_join_without_since_gets_the_position_and_live_messages() -> None:
    groups.send("room", "before")
    with follow("room") as ws:
        report = recovery_of(ws)
        assert report["recovered"] is False and report["failed"] is False
        assert Position.parse(report["position"]).offset == 1  # type: ignore[union-attr]
        ws.send("live")
        assert ws.receive() == "live"


def test_join_since_replays_what_was_missed_then_live_in_order() -> None:
    with follow("room") as ws:
        start = recovery_of(ws)["position"]
    for i in range(20):
        groups.send("room", f"missed {i}")
    with follow("room", since=start) as ws:
        assert receive(ws, 20) == [f"missed {i}" for i in range(20)]
        report = recovery_of(ws)
        assert report == {
            "since": start,
            "position": f"{start.split(':')[0]}:20",
            "recovered": True,
            "failed": False,
            "missed": 20,
        }
        groups.send("room", "live")
        assert ws.receive() == "live"


def test_join_since_the_last_position_recovers_nothing_missed() -> None:
    position = groups.send("room", "x")
    with follow("room", since=position) as ws:
        report = recovery_of(ws)
        assert report["recovered"] is True and report["missed"] == 0
        assert report["position"] == position


@pytest.mark.parametrize(
    "since",
    [
        "garbage",
        "otherepoch:1",
        "{epoch}:99",
        "{epoch}:1",
        "{epoch}:18446744073709551615",
        "{epoch}:" + "9" * 40,
    ],
)
def test_recovery_fails_explicitly(since: str) -> None:
    """Another epoch, a position from the future, one trimmed away (size 5), garbage, a
    hostile offset. (One past the process's word size raised ValueError from the history
    read: the view's 500, its socket dropped.)"""
    for i in range(10):
        position = groups.send("kept.a", f"m{i}")
    epoch = Position.parse(position).epoch  # type: ignore[union-attr]
    since = since.format(epoch=epoch)
    with follow("kept.a", since=since) as ws:
        report = recovery_of(ws)
        assert report["failed"] is True and report["recovered"] is False
        assert report["position"] == f"{epoch}:10"
        groups.send("kept.a", "live")
        assert ws.receive() == "live"


def test_a_since_utf8_cannot_encode_fails_explicitly_for_a_dws_client() -> None:
    """A ``dws_since`` naming a lone surrogate (``"\\ud800"`` is valid JSON) from a client
    that speaks the envelope: "recovery failed", the ``joined`` envelope echoing it
    escaped. (The envelope carried it raw: UTF-8 could not encode it, and the join's
    first frame raised -- the view's 500 with a traceback, from any client's URL.)"""
    position = groups.send("room", "x")
    with follow("room", dws=True, dws_since='{"room":"\\ud800"}') as ws:
        joined = ws.receive_json()
        assert joined["dws"] == "joined" and joined["since"] == "\ud800"
        assert joined["recovered"] is False and joined["p"] == position
        report = recovery_of(ws)
        assert report["failed"] is True and report["since"] == "\ud800"


def test_the_last_size_messages_are_recoverable() -> None:
    for i in range(10):
        groups.send("kept.a", f"m{i}")
    epoch = Position.parse(groups.send("kept.a", "m10")).epoch  # type: ignore[union-attr]
    with follow("kept.a", since=f"{epoch}:6") as ws:
        assert receive(ws, 5) == ["m6", "m7", "m8", "m9", "m10"]
        assert recovery_of(ws)["recovered"] is True


def test_expired_messages_make_recovery_fail() -> None:
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"room": {"size": 50, "ttl": 0.2}}):
        position = groups.send("room", "old")
        groups.send("room", "older than the ttl soon")
        time.sleep(0.3)
        with follow("room", since=position) as ws:
            assert recovery_of(ws)["failed"] is True


def test_a_group_without_history_fails_any_since() -> None:
    with follow("plain", since="e:1") as ws:
        report = recovery_of(ws)
        assert report["failed"] is True and report["position"] is None


def test_a_since_for_a_group_without_history_warns_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ``since`` comes from the client: after a deploy that takes a group's history
    away, every reconnection of every client with an old position joined with one, and
    each logged a WARNING (a view naming its group from the URL: one per connection, as
    many as a client cares to open). The first says what is wrong; the others are DEBUG."""
    with caplog.at_level("DEBUG", logger="dwebsocket"):
        for name in ("plain", "plain", "other"):
            with follow(name, since="e:1") as ws:
                assert recovery_of(ws)["failed"] is True
    found = [r for r in caplog.records if "keeps no history" in r.getMessage()]
    assert [r.levelname for r in found] == ["WARNING", "DEBUG", "DEBUG"]


def test_join_rejects_a_since_that_is_not_a_str() -> None:
    class Closed:
        def deliver(self, message: Message) -> None:
            pass

        def is_closed(self) -> bool:
            return True

    with pytest.raises(TypeError):
        groups.join("room", Closed(), since=5)  # type: ignore[arg-type]
    assert groups.join("room", Closed(), since="e:1") == Recovery("e:1", None, False)


def test_live_messages_during_a_long_replay_are_neither_lost_nor_doubled() -> None:
    """Messages sent while a member replays 2,000 missed ones come after them, once."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"big": {"size": 5000, "ttl": 60}}):
        start = groups.send("big", "start")
        for i in range(2000):
            groups.send("big", f"m{i}")
        with follow("big", since=start) as ws:
            for i in range(2000, 2100):  # while the view replays (its thread)
                groups.send("big", f"m{i}")
            got = [m for m in receive(ws, 2101) if not str(m).startswith('{"recovery"')]
            assert got[:2100] == [f"m{i}" for i in range(2100)]


def test_what_came_during_a_replay_goes_at_the_clients_pace_not_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that missed little, and reads only as fast as its link lets it (here:
    not at all until the replay is done), while the group got more than
    ``WEBSOCKET_SEND_QUEUE_SIZE`` during its replay: what came meanwhile is sent as the
    replay is, at the client's pace, before it goes live. (It was handed to the send queue
    all at once when the member went live: closed with 1008 "send queue overflow", and
    again at each reconnection of a busy group.) The Redis layer's twin is in
    ``test_history_redis.py``."""
    replay_under_load(monkeypatch)


def replay_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above, with the current layer."""
    layer = groups.get_layer()
    read, reading, gate = layer.read, threading.Event(), threading.Event()
    reads: list[int] = []

    def held_read(group: str, after: int, count: int) -> Any:
        page = read(group, after, count)
        reads.append(after)
        if not reading.is_set():  # the replay has read: what comes now is held back
            reading.set()
            assert gate.wait(WAIT)
        return page

    monkeypatch.setattr(layer, "read", held_read)
    noise = [secrets.token_hex(4096) for _ in range(100)]  # 800 KB deflate cannot shrink
    with override_settings(
        WEBSOCKET_GROUPS_HISTORY={"big": {"size": 5000, "ttl": 60}},
        WEBSOCKET_SEND_QUEUE_SIZE=65536,
    ):
        start = groups.send("big", "start")
        groups.send("big", "m0")
        ws = follow("big", since=start)
        connecting = threading.Thread(target=ws.connect)  # the 101 comes with the replay
        connecting.start()
        try:
            assert reading.wait(WAIT)
            for i, text in enumerate(noise, 1):
                newest = groups.send("big", f"m{i} {text}")
            followers = groups._registry.followers.get("big")
            assert followers is not None
            follower = next(iter(followers.values()))

            def held_newest() -> bool:  # Redis: through its reader
                with follower.lock:  # (the oldest dropped past WEBSOCKET_SEND_QUEUE_SIZE)
                    buffer = follower.buffer
                    return bool(buffer) and str(buffer[-1].position) == newest  # type: ignore[index]

            until(held_newest)
            gate.set()
            connecting.join(WAIT)
            # Gone live (handed over at once), or reading the history again to send it.
            until(lambda: follower.buffer is None or len(reads) > 1)
            with follower.lock:  # the hand-over to live holds it while it delivers
                pass
            got = [str(m) for m in receive(ws, 102)]
        finally:
            ws.close()
    assert [m.split(" ")[0] for m in got[:101]] == [f"m{i}" for i in range(101)]
    assert json.loads(got[101])["recovery"]["recovered"] is True


def test_a_replay_reads_big_messages_a_bounded_amount_at_a_time() -> None:
    """A replay reads the history a page at a time, and a page of big messages is bounded
    in bytes (about ``PAGE_BYTES``), not only in count: it read up to 1,000 messages at
    once, whatever their size (up to 8 MiB each), and held them until the client had
    taken them, so every client recovering from far back -- any client can ask to, and
    read slowly -- held up to gigabytes of the server's memory (and on Redis had it read
    in one reply). All the messages still come, in order, once. The Redis layer's twin is
    in ``test_history_redis.py``."""
    replay_of_big_messages()


def replay_of_big_messages() -> None:
    """The test above, with the current layer."""
    noise = [secrets.token_hex(32768) for _ in range(48)]  # 64 KB each: 3 MiB
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"big": {"size": 100, "ttl": 60}}):
        start = groups.send("big", "start")
        for i, text in enumerate(noise):
            groups.send("big", f"m{i} {text}")
        page = groups.get_layer().read("big", 0, PAGE)
        held = sum(len(message) for _, message in page.entries)
        assert 0 < len(page.entries) < len(noise)
        assert held < PAGE_BYTES + 70_000  # the budget, and the message that crossed it
        with follow("big", since=start) as ws:
            got = [str(m) for m in receive(ws, len(noise) + 1)]
    assert [m.split(" ")[0] for m in got[:-1]] == [f"m{i}" for i in range(len(noise))]
    report = json.loads(got[-1])["recovery"]
    assert report["recovered"] is True and report["missed"] == len(noise)


# -- the dws envelope --------------------------------------------------------------------------


def test_a_dws_client_gets_messages_with_positions() -> None:
    with follow("room", dws=True) as ws:
        joined = ws.receive_json()
        assert joined["dws"] == "joined" and joined["g"] == "room"
        assert joined["recovered"] is False and joined["since"] is None
        assert recovery_of(ws)["position"] == joined["p"]
        text = groups.send("room", "héllo")
        binary = groups.send("room", b"\x00\xff")
        plain = groups.send("plain", "not kept")
        assert plain is None
        assert ws.receive_json() == {"dws": "msg", "g": "room", "p": text, "d": "héllo"}
        envelope = ws.receive_json()
        assert envelope == {"dws": "msg", "g": "room", "p": binary, "b": "AP8="}
        assert base64.b64decode(envelope["b"]) == b"\x00\xff"


def test_a_dws_client_recovers_with_joined_after_the_replay() -> None:
    position = groups.send("room", "seen")
    missed = [groups.send("room", f"m{i}") for i in range(3)]
    with follow("room", since=position, dws=True) as ws:
        got = [ws.receive_json() for _ in range(4)]
        assert [m["p"] for m in got[:3]] == missed
        assert got[3] == {
            "dws": "joined",
            "g": "room",
            "p": missed[-1],
            "since": position,
            "recovered": True,
            "missed": 3,
        }


def test_dws_ping_is_answered_and_the_view_never_sees_it() -> None:
    with follow("room", dws=True) as ws:
        assert ws.receive_json()["dws"] == "joined"
        recovery_of(ws)
        ws.send('{"dws":"ping"}')
        assert ws.receive() == '{"dws":"pong"}'
        ws.send('{"dws":"later-version"}')  # ignored
        ws.send('{"dws" but not JSON')  # the application's
        ws.send('{"dwsx":1}')
        got = [ws.receive_json() for _ in range(1)]
        assert got[0]["dws"] == "msg" and got[0]["d"] == '{"dws" but not JSON'
        assert ws.receive_json()["d"] == '{"dwsx":1}'


def test_a_plain_client_never_gets_envelopes_and_may_send_dws_text() -> None:
    with follow("room") as ws:
        recovery_of(ws)
        ws.send('{"dws":"ping"}')  # not a dws client: an application message
        assert ws.receive() == '{"dws":"ping"}'


def test_a_recovering_members_buffer_overflowing_is_read_again_from_the_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live messages held back during a replay are bounded (here 5): past that the oldest
    are dropped and read again from the history, so still none is lost or doubled."""
    import threading

    from dwebsocket.groups import history

    monkeypatch.setattr(history, "BUFFER", 5)
    monkeypatch.setattr(history, "PAGE", 10)
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"big": {"size": 5000, "ttl": 60}}):
        start = groups.send("big", "start")
        for i in range(300):
            groups.send("big", f"m{i}")
        done = threading.Event()

        def publish() -> None:  # while the view replays, page by page
            for i in range(300, 600):
                groups.send("big", f"m{i}")
            done.set()

        with follow("big", since=start) as ws:
            threading.Thread(target=publish, daemon=True).start()
            got = [m for m in receive(ws, 601) if not str(m).startswith('{"recovery"')]
            assert done.wait(10)
            assert got[:600] == [f"m{i}" for i in range(600)]


def test_a_live_gap_closes_a_dws_member_4003_so_that_its_client_recovers() -> None:
    """A live message that skips offsets (the process's subscription was interrupted):
    a dws member is closed with 4003 and reconnects to recover; a plain one goes on."""
    from dwebsocket.groups.history import Item

    first = Position.parse(groups.send("room", "one"))
    assert first is not None
    with follow("room", dws=True) as dws_client, follow("room") as plain:
        assert dws_client.receive_json()["dws"] == "joined"
        recovery_of(dws_client)
        recovery_of(plain)
        layer = groups.get_layer()
        skipped = Item("room", "three", Position(first.epoch, 3))  # 2 never came
        from dwebsocket.groups.memory import fan_out_item

        fan_out_item(layer.registry, skipped)  # type: ignore[attr-defined]
        assert dws_client.wait_closed() == 4003
        assert plain.receive() == "three"


class ClosingSink:
    """A member that keeps what it is handed (``got``) and the codes it is closed with
    (``closed``; ``done`` is set at the first)."""

    def __init__(self) -> None:
        self.got: list[Message] = []
        self.closed: list[int] = []
        self.done = threading.Event()

    def deliver(self, message: Message) -> None:
        self.got.append(message)

    def is_closed(self) -> bool:
        return False

    def close(self, code: int, reason: str) -> None:
        self.closed.append(code)
        self.done.set()


def test_a_follower_takes_a_batch_once_in_order_up_to_a_gap() -> None:
    """Messages fanned out together: duplicates dropped, the rest handed over in one
    ``deliver_batch`` (the batch shared by every member when nothing was dropped); a gap
    ends the batch there and closes a dws member with 4003."""

    class Sink(ClosingSink):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[Batch] = []

        def deliver(self, message: Message) -> None:
            raise AssertionError("a batch comes in one deliver_batch")

        def deliver_batch(self, batch: Batch) -> None:
            self.batches.append(batch)

    def items(*offsets: int) -> Items:
        return Items([Item("g", f"m{n}", Position("e", n)) for n in offsets])

    sink = Sink()
    follower = Follower(sink, "g", envelope=True)
    follower.buffer, follower.last = None, Position("e", 1)  # live, after e:1
    whole = items(2, 3)
    follower.deliver_items(whole)
    assert sink.batches == [whole.batch(True)]
    follower.deliver_items(items(3, 4, 5, 7, 8))  # 3 seen; 7 skips 6
    assert [json.loads(m)["d"] for m in sink.batches[-1].messages] == ["m4", "m5"]
    assert sink.done.wait(10) and sink.closed == [GAP_CLOSE]
    follower.deliver_items(items(9))
    assert len(sink.batches) == 2  # buffered: its client recovers from e:5


def test_a_recovering_members_buffer_keeps_the_newest_within_the_send_queue_size() -> None:
    """Past ``WEBSOCKET_SEND_QUEUE_SIZE`` of held-back messages the oldest are dropped
    (to be read again from the history), as past :data:`~dwebsocket.groups.history.BUFFER`
    of them; the newest is kept whatever its size."""
    with override_settings(WEBSOCKET_SEND_QUEUE_SIZE=10):
        follower = Follower(Inbox(), "g", envelope=True)
    for n, size in enumerate([4, 4, 4], start=1):
        follower.deliver(Item("g", "x" * size, Position("e", n)))
    assert [item.position for item in follower.buffer or ()] == [("e", 2), ("e", 3)]
    assert follower.dropped and follower.buffered == 8
    follower.deliver(Item("g", b"x" * 20, Position("e", 4)))  # binary: bytes
    assert [item.position for item in follower.buffer or ()] == [("e", 4)]
    assert follower.buffered == 20


def test_a_new_epoch_that_does_not_start_at_its_first_message_is_a_gap() -> None:
    """The history was lost and begun again while this process was not subscribed: the
    first message of the new epoch a live member gets is not its first. A dws member is
    closed with 4003 (its client then gets "recovery failed"); it was handed the message,
    and its client took that position as its own, never told of those before it. A new
    epoch from its first message on is no gap (a group silent past its ttl)."""

    sink = ClosingSink()
    follower = Follower(sink, "g", envelope=True)
    follower.buffer, follower.last = None, Position("old", 7)
    follower.deliver(Item("g", "m", Position("new", 1)))
    follower.deliver(Item("g", "m", Position("new", 2)))
    follower.deliver(Item("g", "m", Position("newer", 3)))  # newer:1 and 2 never came
    assert sink.done.wait(10) and sink.closed == [GAP_CLOSE]
    assert [json.loads(m)["p"] for m in sink.got] == ["new:1", "new:2"]
    plain = Follower(Inbox(), "g", envelope=False)  # a plain member goes on
    plain.buffer, plain.last = None, Position("old", 7)
    plain.deliver(Item("g", "m", Position("new", 3)))
    assert plain.member.get() == "m" and plain.last == Position("new", 3)  # type: ignore[attr-defined]


class Holder:
    """A member that holds the fan-out that reaches it (the sending thread) until
    :attr:`release` is set, from its ``let_through + 1``-th message on."""

    def __init__(self, let_through: int = 0) -> None:
        self.let_through = let_through
        self.holding, self.release = threading.Event(), threading.Event()

    def deliver(self, message: Message) -> None:
        if self.let_through:
            self.let_through -= 1
            return
        self.holding.set()
        assert self.release.wait(WAIT)

    def is_closed(self) -> bool:
        return False


def received_until(member: Inbox, last: Message) -> list[Message]:
    """What ``member`` gets, up to ``last`` (bounded: each message within ``WAIT``)."""
    got: list[Message] = []
    while last not in got:
        got.append(member.get())
    return got


def test_joining_a_live_member_again_loses_nothing_sent_meanwhile() -> None:
    """The memory layer's twin of test_history_redis's: a message on its way to a member
    (its fan-out held by a member before it) when the member joins again arrives, once."""
    holder = Holder()
    release, holding = holder.release, holder.holding
    member = Inbox()
    groups.join("room", holder)
    groups.join("room", member)
    followers = groups._registry.followers.get("room")
    assert followers is not None
    original = followers[id(member)]
    sender = threading.Thread(target=groups.send, args=("room", "in flight"))
    sender.start()
    again: list[Recovery] = []
    joiner = threading.Thread(target=lambda: again.append(groups.join("room", member)))
    try:
        assert holding.wait(WAIT)  # kept; the fan-out is held before the member
        joiner.start()
        until(lambda: not joiner.is_alive() or followers.get(id(member)) is not original)
    finally:
        release.set()
        sender.join(WAIT)
        if joiner.ident is not None:
            joiner.join(WAIT)
    assert not sender.is_alive() and not joiner.is_alive()
    groups.send("room", "after")
    assert received_until(member, "after") == ["in flight", "after"]
    member.assert_empty()


def test_a_message_in_flight_to_a_dws_member_as_it_leaves_comes_in_its_envelope() -> None:
    """A message on its way to a member whose client speaks ``dws`` (its fan-out held by
    a member before it) when the member leaves the group: it may still arrive, as in any
    group, but in its envelope. (The leave removed the member's follower, and the
    fan-out that had found the member handed it the bare message: its client took it
    for one of the application's, no group, no position.)"""
    holder = Holder()
    release, holding = holder.release, holder.holding
    member = Inbox()
    member.dws = True  # type: ignore[attr-defined]
    groups.join("room", holder)
    groups.join("room", member)
    assert json.loads(member.get())["dws"] == "joined"
    sender = threading.Thread(target=groups.send, args=("room", "in flight"))
    sender.start()
    try:
        assert holding.wait(WAIT)  # kept; the fan-out is held before the member
        groups.leave("room", member)
    finally:
        release.set()
        sender.join(WAIT)
    assert not sender.is_alive()
    got = json.loads(member.get())
    assert got["dws"] == "msg" and got["g"] == "room" and got["d"] == "in flight"
    member.assert_empty()


def test_a_gap_in_what_was_held_back_closes_a_dws_member_4003_when_it_goes_live() -> None:
    """What a recovering member held back goes through the live path's gap check: a skip
    after the last position (this process was not subscribed after the last read of the
    history) closes a dws member with 4003, as when live, and nothing after it is sent."""

    sink = ClosingSink()
    follower = Follower(sink, "g", envelope=True)
    follower.deliver_items(Items([Item("g", f"m{n}", Position("e", n)) for n in (4, 5, 7, 8)]))
    recovery = Recovery(since="e:3", position="e:4", recovered=True, missed=1)
    go_live(follower, Position("e", 4), recovery)
    assert [json.loads(m).get("d", "joined") for m in sink.got] == ["joined", "m5"]
    assert sink.done.wait(10) and sink.closed == [GAP_CLOSE]
    follower.deliver_items(Items([Item("g", "m9", Position("e", 9))]))
    assert len(sink.got) == 2  # nothing more: its client recovers from e:5


class Gate:
    """A history's lock that counts the threads that came to take it (``waiting``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0

    def acquire(self, blocking: bool = True) -> bool:
        self.waiting += 1
        return self.lock.acquire(blocking)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> Gate:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_a_send_that_took_a_history_as_it_expired_never_goes_on_in_its_epoch() -> None:
    """Two sends just as a group's history expires: one took the history before it did and
    waits for its lock, the other comes after. Both go in one new epoch, as on Redis
    (``test_a_lost_epoch_never_goes_on_with_other_messages``): the first appended to the
    history the second had replaced, numbering on in the lost epoch a message no history
    kept, and members got it after the new epoch's first (a gap: 4003 for a dws one)."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"room": {"size": 50, "ttl": 1}}):
        epoch = Position.parse(groups.send("room", "m1")).epoch  # type: ignore[union-attr]
        start = time.monotonic()
        layer = groups.get_layer()
        gate = Gate()
        layer.history._groups["room"].lock = gate  # type: ignore[attr-defined]
        positions: list[str | None] = []
        gate.lock.acquire()
        try:
            first = threading.Thread(target=lambda: positions.append(groups.send("room", "a")))
            first.start()
            until(lambda: gate.waiting == 1)  # took the history (not expired), waits
            until(lambda: time.monotonic() > start + 1.2)  # now it has expired
            second = threading.Thread(target=lambda: positions.append(groups.send("room", "b")))
            second.start()
            until(lambda: not second.is_alive() or gate.waiting == 2)
        finally:
            gate.lock.release()
        first.join(WAIT)
        second.join(WAIT)
        assert len(positions) == 2
        found = [Position.parse(position) for position in positions]
        assert found[0] is not None and found[1] is not None
        assert found[0].epoch == found[1].epoch != epoch
        assert sorted(position.offset for position in found) == [1, 2]
        page = layer.read("room", 0, PAGE)  # type: ignore[attr-defined]
        assert sorted(message for _, message in page.entries) == ["a", "b"]


class PausedGate(Gate):
    """A history's lock a thread comes to take (``arrived``) only once ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived, self.go = threading.Event(), threading.Event()

    def acquire(self, blocking: bool = True) -> bool:
        if blocking:  # the send's; the sweep only tries it
            self.arrived.set()
            assert self.go.wait(WAIT)
        return super().acquire(blocking)


def test_a_send_that_took_a_history_a_sweep_then_removed_keeps_its_message() -> None:
    """A send took a group's history just before it expired and a sweep (made by the 64th
    group's history) removed it: the send keeps its message in the group's new history,
    in a new epoch. It appended to the history removed, which no read sees: a message
    with a position no history held, in an epoch that went on after it was lost."""
    setting = {"room": {"size": 50, "ttl": 1}, "other.*": {"size": 50, "ttl": 60}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=setting):
        epoch = Position.parse(groups.send("room", "m1")).epoch  # type: ignore[union-attr]
        start = time.monotonic()
        layer = groups.get_layer()
        history = layer.history  # type: ignore[attr-defined]
        gate = PausedGate()
        history._groups["room"].lock = gate
        positions: list[str | None] = []
        sender = threading.Thread(target=lambda: positions.append(groups.send("room", "a")))
        sender.start()
        try:
            assert gate.arrived.wait(WAIT)  # took the history (not expired yet)
            until(lambda: time.monotonic() > start + 1.2)  # expired now
            for i in range(70):
                groups.send(f"other.{i}", "x")
            assert "room" not in history._groups  # swept
        finally:
            gate.go.set()
            sender.join(WAIT)
        found = Position.parse(positions[0])
        assert found is not None and found.epoch != epoch
        page = layer.read("room", 0, PAGE)  # type: ignore[attr-defined]
        assert (page.epoch, page.entries) == (found.epoch, [(found.offset, "a")])


def test_expired_histories_are_swept_so_memory_stays_bounded_by_the_active_groups() -> None:
    """Per-user groups come and go: a history whose group stayed silent past its ``ttl``
    is taken out once the number of histories has doubled, whatever the number of groups
    that ever sent."""
    setting = {"old.*": {"size": 5, "ttl": 0.2}, "new.*": {"size": 5, "ttl": 60}}
    with override_settings(WEBSOCKET_GROUPS_HISTORY=setting):
        history = groups.get_layer().history  # type: ignore[attr-defined]
        for i in range(500):
            groups.send(f"old.{i}", "x")
        start = time.monotonic()
        until(lambda: time.monotonic() > start + 0.3)  # every old.* has expired
        for i in range(300):
            groups.send(f"new.{i}", "x")
        # The 512th history made a sweep: every old one went, every new one stays.
        assert sorted(history._groups) == sorted(f"new.{i}" for i in range(300))


def test_joining_again_with_since_sends_nothing_twice_and_nothing_out_of_order() -> None:
    """A connection already in a history group, joined again with ``since`` (its client
    asks to resume, say): the messages already handed to it (queued, or on the wire) are
    not replayed, and those after them come once, in position order, then the live ones.
    (The second join made a new follower that knew nothing of what the first had
    delivered: its replay sent them all again, behind the queued ones.) The Redis layer's
    twin is in ``test_history_redis.py``."""
    joined_again_with_since()


def joined_again_with_since() -> None:
    """The connection of a ``follow`` client joined again, with ``since`` behind what it
    was handed, gets every message once, in order (on the current layer)."""
    with follow("room", dws=True) as ws:
        assert ws.receive_json()["dws"] == "joined"
        recovery_of(ws)
        (connection,) = groups.members("room")
        sent = [groups.send("room", f"m{i}") for i in range(1, 6)]
        follower = groups._registry.followers.get("room")[id(connection)]  # type: ignore[index]
        until(lambda: follower.last == Position.parse(sent[-1]))  # all handed to it (Redis)
        again = groups.join("room", connection, since=sent[1])
        live = groups.send("room", "m6")
        got = [ws.receive_json() for _ in range(7)]
    assert [m.get("p") for m in got if m["dws"] == "msg"] == [*sent, live][: len(got) - 1]
    assert again == Recovery(since=sent[1], position=sent[-1], recovered=True, missed=0)
    assert [m["dws"] for m in got] == ["msg"] * 5 + ["joined", "msg"]
    assert got[5] == {
        "dws": "joined",
        "g": "room",
        "p": sent[-1],
        "since": sent[1],
        "recovered": True,
        "missed": 0,
    }


def test_joining_again_with_since_replays_nothing_a_plain_member_was_handed() -> None:
    """The same for a member whose client does not speak ``dws``."""
    member = Inbox()
    groups.join("room", member)
    sent = [groups.send("room", f"m{i}") for i in range(1, 4)]
    assert member.get_all(3) == ["m1", "m2", "m3"]
    again = groups.join("room", member, since=sent[0])
    groups.send("room", "m4")
    assert member.get() == "m4"
    member.assert_empty()
    assert again == Recovery(since=sent[0], position=sent[-1], recovered=True, missed=0)


class SteppingClock:
    """``time`` for :mod:`dwebsocket.groups.memory`: each reading of ``monotonic()``
    moves the clock on by ``step`` seconds."""

    def __init__(self, now: float, step: float = 0.0) -> None:
        self.now, self.step = now, step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("last_read", [0.4, 0.6])
def test_a_read_at_the_ttl_boundary_finds_the_history_whole_or_gone(
    monkeypatch: pytest.MonkeyPatch, last_read: float
) -> None:
    """A read whose clock crosses the group's ``ttl`` while it reads (here: each reading
    of the clock moves it on, across the boundary) decides with one time whether the
    history still reaches back and which messages it has: a join gets every message after
    its position in the group's epoch, or "recovery failed" in a new one. (A read that
    found the history not expired at one time and filtered its messages at a later one
    gave an epoch that went on with its newest message gone: "failed" in the old epoch.)"""
    from dwebsocket.groups import memory

    clock = SteppingClock(100.0)
    monkeypatch.setattr(memory, "time", clock)
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"room": {"size": 50, "ttl": 1}}):
        first = Position.parse(groups.send("room", "m1"))
        assert first is not None
        clock.now, clock.step = 100.0 + last_read, 0.5  # 0.9 s, then 1.4 s after m1 ...
        member = Inbox()
        recovery = groups.join("room", member, since=f"{first.epoch}:0")
    found = Position.parse(recovery.position)
    assert found is not None
    if found.epoch == first.epoch:  # read before m1 expired: it is replayed
        assert recovery == Recovery(f"{first.epoch}:0", str(first), recovered=True, missed=1)
        assert member.get() == "m1"
    else:  # read after: a new epoch (m1 gone with the old one)
        assert recovery.failed and found.offset == 0
    member.assert_empty()


def test_joining_again_with_since_while_a_message_is_on_its_way_gets_it_once() -> None:
    """A re-join with ``since`` while a message is on its way to the member (its fan-out
    held by a member before it): that message comes once, after those the member had,
    whichever of the replay and the fan-out brings it."""
    holder = Holder(let_through=3)
    release, holding = holder.release, holder.holding
    member = Inbox()
    groups.join("room", holder)
    groups.join("room", member)
    sent = [groups.send("room", f"m{i}") for i in range(1, 4)]
    assert member.get_all(3) == ["m1", "m2", "m3"]
    sender = threading.Thread(target=groups.send, args=("room", "m4"))
    sender.start()
    again: list[Recovery] = []
    joiner = threading.Thread(
        target=lambda: again.append(groups.join("room", member, since=sent[0]))
    )
    try:
        assert holding.wait(WAIT)  # m4 kept; its fan-out held before the member
        joiner.start()
    finally:
        release.set()
        sender.join(WAIT)
        joiner.join(WAIT)
    assert not sender.is_alive() and not joiner.is_alive()
    groups.send("room", "m5")
    assert member.get_all(2) == ["m4", "m5"]
    member.assert_empty()
    assert len(again) == 1 and again[0].recovered


class ReplayHolder(Inbox):
    """A member whose replay (:meth:`send`, which a join's replay uses) is held at its
    ``hold_at``-th message until :attr:`release` is set; live messages (:meth:`deliver`)
    are kept in the same order of arrival."""

    def __init__(self, hold_at: int) -> None:
        super().__init__()
        self.hold_at = hold_at
        self.holding, self.release = threading.Event(), threading.Event()

    def send(self, message: Message) -> None:
        self.hold_at -= 1
        if self.hold_at == 0:
            self.holding.set()
            assert self.release.wait(WAIT)
        self.deliver(message)


def test_two_joins_of_one_connection_at_once_replay_each_message_once_in_order() -> None:
    """A connection joined to a history group with ``since`` while another join of it to
    that group is still replaying (two threads of a view, an ``async`` view's joins): the
    second waits for the first and goes on from where it left, so every message comes
    once, in order. (The second found the first's follower holding back, made one of its
    own and replayed from its ``since`` beside the first: m1..m10 twice, interleaved.)"""
    sent = [groups.send("room", f"m{i}") for i in range(1, 11)]
    epoch = Position.parse(sent[0]).epoch  # type: ignore[union-attr]
    member = ReplayHolder(hold_at=3)
    joins: list[Recovery] = []

    def join() -> None:
        joins.append(groups.join("room", member, since=f"{epoch}:0"))

    first, second = threading.Thread(target=join), threading.Thread(target=join)
    first.start()
    try:
        assert member.holding.wait(WAIT)  # the first replay sent m1, m2 and holds at m3
        second.start()
        joins_of = groups._registry.followers.joins
        until(lambda: not second.is_alive() or joins_of("room", member) == 2)
        groups.send("room", "m11")  # live, while both joins are under way
    finally:
        member.release.set()
        first.join(WAIT)
        if second.ident is not None:
            second.join(WAIT)
    assert not first.is_alive() and not second.is_alive()
    groups.send("room", "m12")
    assert received_until(member, "m12") == [f"m{i}" for i in range(1, 13)]
    member.assert_empty()
    assert joins == [
        # m11 came during the first replay: it is replayed with it
        Recovery(since=f"{epoch}:0", position=f"{epoch}:11", recovered=True, missed=11),
        Recovery(since=f"{epoch}:0", position=f"{epoch}:11", recovered=True, missed=0),
    ]


def test_a_dws_member_without_a_position_is_closed_at_a_first_message_past_offset_1() -> None:
    """A member that went live with no position (Redis could not be read at its join, or
    the group had no history yet) cannot tell whether the messages before its first one
    came before its join or while this process was not subscribed: one whose client
    speaks ``dws`` is closed with 4003 unless that first message is its epoch's first
    (then the view sends the full state again). Messages without a position (sent while
    Redis was unreachable) change nothing; a plain member goes on."""
    sink = ClosingSink()
    follower = Follower(sink, "g", envelope=True)
    go_live(follower, None, Recovery(since="e:3", position=None, recovered=False))
    follower.deliver(Item("g", "local", None))
    follower.deliver(Item("g", "m", Position("f", 4)))  # f:1 to f:3: before the join?
    assert sink.done.wait(10) and sink.closed == [GAP_CLOSE]
    assert [json.loads(m).get("d", "joined") for m in sink.got] == ["joined", "local"]
    first = ClosingSink()
    follower = Follower(first, "g", envelope=True)
    go_live(follower, None, Recovery(since=None, position=None, recovered=False))
    follower.deliver_items(Items([Item("g", f"m{n}", Position("f", n)) for n in (1, 2)]))
    assert [json.loads(m).get("d", "joined") for m in first.got] == ["joined", "m1", "m2"]
    assert not first.closed
    plain = Follower(Inbox(), "g", envelope=False)
    go_live(plain, None, Recovery(since=None, position=None, recovered=False))
    plain.deliver(Item("g", "m", Position("f", 4)))
    assert plain.member.get() == "m" and plain.last == Position("f", 4)  # type: ignore[attr-defined]
