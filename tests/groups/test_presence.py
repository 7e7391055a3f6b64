"""Presence in one process (``memory://``), driven by ``dwebsocket.testing``: one entry
per user with its socket count, anonymous sockets one each, join/leave events once per
user. ``test_presence_servers.py`` runs the same across processes and Redis."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import TransactionTestCase, override_settings

from dwebsocket import groups, users
from dwebsocket.groups.memory import MemoryLayer, Registry
from dwebsocket.groups.presence import INFO_LIMIT
from dwebsocket.testing import WebSocketClient
from tests.groups.test_users import SETTINGS, WAIT
from tests.groups.user_views import PASSWORD


def present(group: str) -> dict[str, tuple[str | None, dict[str, object], int]]:
    return {p.key: (p.user, p.info, p.sockets) for p in groups.presence(group)}


#: Events that came before the view's hello (its own join), per client.
early: dict[int, list[dict[str, object]]] = {}


def member(user: User | None, tab: str = "", events: bool = False) -> WebSocketClient:
    """A present member of ``room``, once the view has joined."""
    query = f"?group=room&presence=1&tab={tab}" + ("&events=1" if events else "")
    ws = WebSocketClient("/ws/" + query, user=user, timeout=WAIT).connect()
    early[id(ws)] = []
    while "pid" not in (got := json.loads(ws.receive())):
        early[id(ws)].append(got)
    return ws


def event(ws: WebSocketClient) -> tuple[str, str]:
    waiting = early.get(id(ws))
    got = waiting.pop(0) if waiting else json.loads(ws.receive())
    assert got["group"] == "room"
    return str(got["presence"]), str(got["key"])


@override_settings(**SETTINGS)
class PresenceTests(TransactionTestCase):
    def setUp(self) -> None:
        self.alice = User.objects.create_user("alice", password=PASSWORD)
        self.bob = User.objects.create_user("bob", password=PASSWORD)

    def tearDown(self) -> None:
        # As in test_users: no session check may read the database while it is emptied.
        self.assertTrue(users._checker.wait_idle(WAIT))
        groups.reset()

    def test_one_entry_per_user_anonymous_one_each(self) -> None:
        a1 = member(self.alice, "one")
        a2 = member(self.alice, "two")
        b = member(self.bob)
        anon1, anon2 = member(None), member(None)
        try:
            found = present("room")
            alice, bob = f"user:{self.alice.pk}", f"user:{self.bob.pk}"
            self.assertEqual(found[alice], (str(self.alice.pk), {"name": "alice", "tab": "one"}, 2))
            self.assertEqual(found[bob], (str(self.bob.pk), {"name": "bob", "tab": ""}, 1))
            anonymous = [v for k, v in found.items() if k.startswith("socket:")]
            self.assertEqual(anonymous, [(None, {"name": None, "tab": ""}, 1)] * 2)
            a1.close()
            self.assertEqual(
                present("room")[alice], (str(self.alice.pk), {"name": "alice", "tab": "two"}, 1)
            )
            a2.close()
            anon1.close()
            self.assertEqual(len(present("room")), 2)
            self.assertEqual(groups.presence("elsewhere"), [])
        finally:
            for ws in (a1, a2, b, anon1, anon2):
                ws.close()
        self.assertEqual(groups.presence("room"), [])

    def test_events_once_per_user(self) -> None:
        watcher = member(self.bob, events=True)
        try:
            self.assertEqual(event(watcher), ("join", f"user:{self.bob.pk}"))  # its own
            alice = f"user:{self.alice.pk}"
            a1 = member(self.alice)
            self.assertEqual(event(watcher), ("join", alice))
            a2 = member(self.alice)  # a second tab: no join
            a1.close()  # one of two closed: no leave
            a2.close()
            self.assertEqual(event(watcher), ("leave", alice))
            with self.assertRaises(TimeoutError):
                watcher.receive(timeout=0.3)
        finally:
            watcher.close()

    def test_info_must_be_a_small_json_dict(self) -> None:
        registry = Registry()
        layer = MemoryLayer(registry)
        with pytest.raises(TypeError):
            groups.join("room", _Dummy(), presence=["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            groups.join("room", _Dummy(), presence={"big": "x" * INFO_LIMIT})
        layer.close()

    def test_info_that_json_cannot_carry_is_refused(self) -> None:
        """NaN and the infinities, which ``json.loads`` makes of a client's ``NaN`` or
        ``1e999``, are not JSON: they were taken, and every listener of the group got a
        join event its browser's ``JSON.parse`` refuses (``{"info":{"x":NaN}}``)."""
        listener = _Listener()
        groups.join("room", listener, events=True)
        for number in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(ValueError):
                groups.join("room", _Dummy(), presence={"x": [number]})
        self.assertEqual(groups.presence("room"), [])
        groups.join("room", _Dummy(), presence={"x": 1e308})
        event = listener.got.pop()
        self.assertEqual(json.loads(event, parse_constant=_refuse)["info"], {"x": 1e308})
        self.assertEqual(listener.got, [])


class _Dummy:
    def deliver(self, message: object) -> None:
        pass

    def is_closed(self) -> bool:
        return False


class _Listener(_Dummy):
    def __init__(self) -> None:
        self.got: list[str] = []

    def deliver(self, message: object) -> None:
        assert isinstance(message, str)
        self.got.append(message)


def _refuse(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")
