"""The same presence sequences on ``memory://`` and on ``redis://`` (a private
redis-server): one process, the public API (``groups.join(..., presence=, events=)``,
``leave``, ``leave_all`` as a close does, ``presence``), each member standing for one
socket; a user's two tabs are two members of the same user. Both layers must give the
same answers and the same events, once each. ``test_presence_redis.py`` covers what only
Redis has (processes, heartbeats, outages)."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings

from dwebsocket import groups
from tests.groups.test_redis_layer import WAIT, Inbox, until

_names = itertools.count()


@pytest.fixture(params=["memory", "redis"])
def room(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new group's name, on the layer of the test's parameter."""
    if request.param == "memory":
        url = "memory://"
    else:
        url = request.getfixturevalue("redis_url") + "?socket_timeout=2&socket_connect_timeout=2"
    with override_settings(WEBSOCKET_GROUPS_URL=url, WEBSOCKET_PRESENCE_HEARTBEAT=1.0):
        try:
            yield f"room-{next(_names)}"
        finally:
            groups.reset()


class Tab(Inbox):
    """A socket of ``user`` (its pk; None: anonymous), as ``users`` finds its owner."""

    def __init__(self, user: str | None = None) -> None:
        super().__init__()
        if user is not None:
            self.request = SimpleNamespace(
                user=SimpleNamespace(is_authenticated=True, pk=user),
                session=SimpleNamespace(session_key=None),
                META={},
            )

    def close(self) -> None:
        """Closed: it leaves every group, as ``websocket_closed`` makes it."""
        self.closed = True
        groups.leave_all(self)


def listener(group: str) -> Tab:
    tab = Tab()
    groups.join(group, tab, events=True)
    return tab


def present(group: str) -> dict[str, tuple[str | None, dict[str, Any], int]]:
    return {p.key: (p.user, p.info, p.sockets) for p in groups.presence(group)}


def events(tab: Tab, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The next ``count`` presence events ``tab`` got (its group's messages skipped)."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    while len(found) < count:
        message = tab.get()
        event = json.loads(message) if isinstance(message, str) and message[:1] == "{" else {}
        if "presence" in event:
            found.append((event["presence"], event["key"], event["info"]))
    return found


def test_two_tabs_of_a_user_are_one_entry_one_join_one_leave(room: str) -> None:
    watcher = listener(room)
    one, two = Tab("1"), Tab("1")
    groups.join(room, one, presence={"tab": 1})
    groups.join(room, two, presence={"tab": 2})
    assert present(room) == {"user:1": ("1", {"tab": 1}, 2)}
    assert events(watcher, 1) == [("join", "user:1", {"tab": 1})]
    one.close()  # one of two: no leave; the other's info is shown now
    assert present(room) == {"user:1": ("1", {"tab": 2}, 1)}
    two.close()
    assert present(room) == {}
    assert events(watcher, 1) == [("leave", "user:1", {"tab": 2})]
    watcher.assert_empty()


def test_joining_again_changes_the_info_without_an_event(room: str) -> None:
    watcher = listener(room)
    tab = Tab("1")
    groups.join(room, tab, presence={"status": "away"})
    groups.join(room, tab, presence={"status": "busy"})
    assert present(room) == {"user:1": ("1", {"status": "busy"}, 1)}
    assert events(watcher, 1) == [("join", "user:1", {"status": "away"})]
    tab.close()
    assert events(watcher, 1) == [("leave", "user:1", {"status": "busy"})]
    watcher.assert_empty()


def test_a_leave_then_a_close_is_one_leave(room: str) -> None:
    watcher = listener(room)
    tab = Tab("1")
    groups.join(room, tab, presence={})
    groups.leave(room, tab)
    groups.leave(room, tab)  # again: nothing
    assert present(room) == {}
    tab.close()
    assert events(watcher, 2) == [("join", "user:1", {}), ("leave", "user:1", {})]
    watcher.assert_empty()


def test_a_socket_present_in_two_groups_leaves_both_when_it_closes(room: str) -> None:
    other = room + "-other"
    watchers = listener(room), listener(other)
    tab = Tab("1")
    groups.join(room, tab, presence={"in": room})
    groups.join(other, tab, presence={"in": other})
    tab.close()
    assert present(room) == present(other) == {}
    for watcher, group in zip(watchers, (room, other), strict=True):
        assert events(watcher, 2) == [
            ("join", "user:1", {"in": group}),
            ("leave", "user:1", {"in": group}),
        ]
        watcher.assert_empty()


def test_a_member_without_presence_is_not_present_and_sends_no_event(room: str) -> None:
    watcher = listener(room)
    tab = Tab("1")
    groups.join(room, tab)
    assert present(room) == {}
    tab.close()
    watcher.assert_empty()


def test_anonymous_sockets_are_one_entry_each(room: str) -> None:
    one, two = Tab(), Tab()
    groups.join(room, one, presence={"n": 1})
    groups.join(room, two, presence={"n": 1})
    found = present(room)
    assert len(found) == 2
    assert all(key.startswith("socket:") and v == (None, {"n": 1}, 1) for key, v in found.items())
    one.close()
    assert len(present(room)) == 1


def test_a_listener_present_itself_gets_its_own_join(room: str) -> None:
    tab = Tab("1")
    groups.join(room, tab, presence={"me": True}, events=True)
    assert events(tab, 1) == [("join", "user:1", {"me": True})]


def test_an_answers_info_is_read_only_and_copies_are_plain(room: str) -> None:
    """A caller changing an answer's info (to show it, say) changed every later answer in
    the process: each ``Present.info`` was the layer's own dict. Copying each at each
    answer made a 10,000-member ``presence()`` ten times slower, so it refuses changes;
    copies of it are plain dicts and lists."""
    info = {"name": "alice", "tags": ["a"], "more": {"x": 1}}
    groups.join(room, Tab("1"), presence=info)
    groups.join(room, Tab("2"), presence={"name": "bob"})
    info["name"] = "changed after the join"
    expected = {
        "user:1": {"name": "alice", "tags": ["a"], "more": {"x": 1}},
        "user:2": {"name": "bob"},
    }
    found = {p.key: p.info for p in groups.presence(room)}
    assert found == expected
    alice = found["user:1"]
    changes = [
        lambda: alice.__setitem__("name", "mallory"),
        lambda: alice.update(name="mallory"),
        lambda: alice.pop("name"),
        lambda: alice.setdefault("new", 1),
        lambda: alice["tags"].append("b"),
        lambda: alice["tags"].__setitem__(0, "b"),
        lambda: alice["more"].__setitem__("x", 2),
        lambda: found["user:2"].clear(),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert {p.key: p.info for p in groups.presence(room)} == expected
    for copied in (
        dict(alice),
        copy.copy(alice),
        copy.deepcopy(alice),
        pickle.loads(pickle.dumps(alice)),
    ):
        assert copied == expected["user:1"] and type(copied) is dict
        copied["name"] = "mallory"  # the caller's own
    deep = copy.deepcopy(alice)
    deep["tags"].append("b")
    assert type(deep["more"]) is dict and type(pickle.loads(pickle.dumps(alice))["tags"]) is list
    assert json.loads(json.dumps(alice)) == expected["user:1"]
    assert {p.key: p.info for p in groups.presence(room)} == expected


def test_a_member_closed_without_its_signal_leaves_at_the_next_message(room: str) -> None:
    """A closed member whose close signal never came (a backend that failed to send it, a
    member of the application's that sends none, one whose deliver() raised) is dropped
    from the group at the next message, as the registry promises: it left the group but
    stayed present, and no leave was sent, for good on memory:// (and on Redis, kept
    alive by this process's heartbeats)."""
    watcher = listener(room)
    tab = Tab("1")
    groups.join(room, tab, presence={"n": 1})
    assert events(watcher, 1) == [("join", "user:1", {"n": 1})]
    tab.closed = True  # no leave_all
    groups.send(room, "anyone?")
    assert events(watcher, 1) == [("leave", "user:1", {"n": 1})]
    until(lambda: present(room) == {})
    watcher.assert_empty()


def test_a_wrong_heartbeat_setting_is_replaced_by_its_default(
    room: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As docs/settings.rst says (check dwebsocket.E032 reports it): on Redis it raised
    InvalidSetting out of every present join and presence(), a traceback per session."""
    from dwebsocket.groups import redis as redis_layer

    redis_layer._wrong_heartbeats.clear()
    with (
        override_settings(WEBSOCKET_PRESENCE_HEARTBEAT="10"),
        caplog.at_level(logging.ERROR, logger="dwebsocket.groups"),
    ):
        for user in ("1", "2"):
            groups.join(room, Tab(user), presence={})
        assert set(present(room)) == {"user:1", "user:2"}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if "redis" in groups.get_layer().url:
        [error] = errors
        assert "WEBSOCKET_PRESENCE_HEARTBEAT" in error and "dwebsocket.E032" in error
    else:
        assert errors == []  # memory:// has no heartbeat


def test_a_tab_leaving_and_coming_back_beside_another_is_no_event(room: str) -> None:
    watcher = listener(room)
    one, two = Tab("1"), Tab("1")
    groups.join(room, one, presence={"tab": 1})
    groups.join(room, two, presence={"tab": 2})
    groups.leave(room, one)
    groups.join(room, one, presence={"tab": 1})
    assert present(room) == {"user:1": ("1", {"tab": 2}, 2)}  # the first one here now
    assert events(watcher, 1) == [("join", "user:1", {"tab": 1})]
    watcher.assert_empty()


def test_a_listener_that_left_gets_no_more_events(room: str) -> None:
    watcher, other = listener(room), listener(room)
    groups.leave(room, watcher)
    groups.join(room, Tab("1"), presence={})
    assert events(other, 1) == [("join", "user:1", {})]
    watcher.assert_empty()


def test_a_member_that_left_every_group_it_listened_to_is_not_involved(room: str) -> None:
    """A socket that listened to two groups' events and left both is in nothing the
    groups keep: not ``_involved`` (a connection closing unopened, or one its registry
    drops, skips ``leave_all``), and the registry holds nothing of it. (An empty set of
    groups stayed, keyed by the socket's id, until a ``leave_all`` -- for good for a
    member that never closes through one -- and it counted as listening.)"""
    other = f"{room}-b"
    tab = listener(room)
    groups.join(other, tab, events=True)
    groups.leave(room, tab)
    assert groups._involved(tab)  # still listening to the other
    groups.leave(other, tab)
    assert not groups._involved(tab)
    assert id(tab) not in groups._registry.presence._listening


def test_a_listener_that_closes_while_joining_is_not_kept(
    room: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket asking for events (without ``presence=``) closes while it joins, its close
    signal running just before it listens: it is no listener afterwards. (It stayed one
    for good: the process kept the closed socket, and on Redis reaped the group at every
    heartbeat, for each such close.)"""
    from dwebsocket.groups.presence import PresenceRegistry

    tab, listen = Tab(), PresenceRegistry.listen

    def closing_first(self: PresenceRegistry, group: str, member: Any) -> None:
        if member is tab and not tab.closed:
            tab.close()  # its signal: leave_all, before the listen below
        listen(self, group, member)

    monkeypatch.setattr(PresenceRegistry, "listen", closing_first)
    groups.join(room, tab, events=True)
    assert tab.closed
    assert not groups._registry.presence.involves(tab)
    assert room not in groups._registry.presence.listened()


#: A presence event as :func:`events` gives it: (event, key, info).
Event = tuple[str, str, dict[str, Any]]


class Gate:
    """Holds the first call through :meth:`passing` after :meth:`arm` until :meth:`open`
    (bounded): the thread making it pauses there while another thread goes on."""

    def __init__(self) -> None:
        self.armed = False
        self.held = threading.Event()
        self.opened = threading.Event()

    def arm(self) -> None:
        self.armed = True

    def passing(self) -> None:
        if self.armed:
            self.armed = False
            self.held.set()
            self.opened.wait(WAIT)

    def open(self) -> None:
        self.opened.set()


def gate_present(monkeypatch: pytest.MonkeyPatch, gate: Gate) -> None:
    """Have the layer's ``present()`` (a change's event being decided, on Redis its
    write) wait at ``gate`` once it is armed."""
    layer = type(groups.get_layer())
    present_then = layer.present

    def deciding(self: Any, *args: Any) -> None:
        gate.passing()
        present_then(self, *args)

    monkeypatch.setattr(layer, "present", deciding)


class SlowListener(Tab):
    """A listener whose deliver() goes through a :class:`Gate` first."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def deliver(self, message: Any) -> None:
        self.gate.passing()
        super().deliver(message)


@pytest.mark.parametrize("pause", ["delivering", "deciding"])
@pytest.mark.parametrize("first", ["leave", "join"])
def test_a_users_events_follow_the_order_of_its_changes_across_threads(
    room: str, monkeypatch: pytest.MonkeyPatch, first: str, pause: str
) -> None:
    """Two threads change one user's presence at once (its only tab closes as another
    opens, or a tab opens and closes at once): the listeners' events say what the
    registry says, in its order. Thread A pauses after its change, while delivering its
    event to a first listener or before its event is decided, and thread B's change runs
    to its end meanwhile. On ``memory://`` the events were decided and delivered by each
    thread on its own: B's came first, and every listener concluded the user had left
    while present (or the reverse). Changes that overlap may go unannounced as a pair
    (the last state is what counts), as on Redis."""
    gate = Gate()
    slow = SlowListener(gate) if pause == "delivering" else Tab()
    groups.join(room, slow, events=True)  # first: A delivers to it before the watcher
    watcher = listener(room)
    if pause == "deciding":
        gate_present(monkeypatch, gate)
    # Another user first: both listeners get events (the gate is not armed yet).
    groups.join(room, Tab("2"), presence={})
    assert events(watcher, 1) == events(slow, 1) == [("join", "user:2", {})]
    one, two = Tab("1"), Tab("1")
    join: Event = ("join", "user:1", {})
    leave: Event = ("leave", "user:1", {})
    now: dict[str, tuple[str | None, dict[str, Any], int]] = {"user:2": ("2", {}, 1)}

    def opening(tab: Tab) -> Callable[[], None]:
        def change() -> None:
            groups.join(room, tab, presence={})

        return change

    if first == "leave":
        groups.join(room, one, presence={})
        assert events(watcher, 1) == events(slow, 1) == [join]
        change_a, change_b = one.close, opening(two)
        now["user:1"] = ("1", {}, 1)
    else:
        change_a, change_b = opening(one), one.close
    cases: dict[tuple[str, str], list[Event]] = {
        ("leave", "delivering"): [leave, join],
        ("join", "delivering"): [join, leave],
        ("leave", "deciding"): [],  # left and came back before either was announced
        ("join", "deciding"): [],
    }
    expected = cases[first, pause]
    gate.arm()
    thread_a = threading.Thread(target=change_a, name="change A", daemon=True)
    thread_a.start()
    try:
        assert gate.held.wait(WAIT), "thread A never reached the gate"
        change_b()
    finally:
        gate.open()
        thread_a.join(WAIT)
    assert not thread_a.is_alive()
    assert present(room) == now
    assert events(watcher, len(expected)) == expected
    assert events(slow, len(expected)) == expected
    watcher.assert_empty()
    slow.assert_empty()


def test_a_tab_opening_and_closing_at_once_first_in_the_group_is_no_event(
    room: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tab opens and closes at once, the first present socket of the process in the
    group: the join's thread pauses between its change and its write, and the close's
    write goes first. No event: the listeners never saw the user, and the next event is
    the next user's join. (On Redis the close's write, the process's first in the group,
    found no heartbeat of it there and was taken for a leave whose entry Redis had lost:
    the listeners got a leave for a user never announced.)"""
    with override_settings(WEBSOCKET_PRESENCE_HEARTBEAT=600.0):  # no heartbeat meanwhile
        watcher = listener(room)
        gate = Gate()
        gate_present(monkeypatch, gate)
        tab = Tab("1")
        gate.arm()
        opening = threading.Thread(
            target=groups.join, args=(room, tab), kwargs={"presence": {}}, daemon=True
        )
        opening.start()
        try:
            assert gate.held.wait(WAIT), "the join never reached its write"
            tab.close()
        finally:
            gate.open()
            opening.join(WAIT)
        assert not opening.is_alive()
        assert present(room) == {}
        groups.join(room, Tab("2"), presence={})
        assert events(watcher, 1) == [("join", "user:2", {})]
        assert present(room) == {"user:2": ("2", {}, 1)}
        watcher.assert_empty()


def test_a_listener_whose_deliver_changes_presence_gets_the_events_in_order(room: str) -> None:
    """A listener's deliver() may call back into the groups: here the first listener
    closes the tab whose join it gets (as an application's member might). Every listener
    gets the join, then the leave, and the thread that joined is not stuck on a lock it
    holds. (The leave went out inside the join's delivery: the listeners after the first
    got it before the join.)"""
    tab = Tab("1")

    class Closing(Tab):
        def deliver(self, message: Any) -> None:
            super().deliver(message)
            if '"presence":"join"' in message and not tab.closed:
                tab.close()

    closing = Closing()
    groups.join(room, closing, events=True)
    watcher = listener(room)
    joining = threading.Thread(
        target=groups.join, args=(room, tab), kwargs={"presence": {}}, daemon=True
    )
    joining.start()
    joining.join(WAIT)
    assert not joining.is_alive()
    until(lambda: tab.closed)  # on Redis, once its reader delivered the join
    expected: list[Event] = [("join", "user:1", {}), ("leave", "user:1", {})]
    assert events(watcher, 2) == events(closing, 2) == expected
    assert present(room) == {}
    watcher.assert_empty()
