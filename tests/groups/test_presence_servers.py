"""Presence across real server processes (two gevent servers, a private redis-server)
and in one with ``memory://`` (the ``site`` fixture of ``test_users_servers``): every
process gives the same answer; a killed process's members vanish; events once per user."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from websockets.sync.client import ClientConnection

from tests.groups import test_users_servers
from tests.groups.test_users_servers import HEARTBEAT, WAIT, Browser, Site, nothing_for
from tests.servers import ServerProcess

pytestmark = pytest.mark.server

site = test_users_servers.site  # the fixture: parametrized, redis and memory

ROOM = "?group=room&presence=1"


def presence(browser: Browser, server: ServerProcess) -> list[tuple[str, Any, Any, int]]:
    """``groups.presence("room")`` as ``server`` answers it, sorted; anonymous keys hidden."""
    found = json.loads(browser.get(server, "/presence/room/"))["presence"]
    return sorted(
        (p["key"] if p["user"] else "anonymous", p["user"], p["info"], p["sockets"]) for p in found
    )


def event(ws: ClientConnection, early: list[Any]) -> tuple[str, str | None]:
    got = early.pop(0) if early else json.loads(ws.recv(timeout=WAIT))
    assert got["group"] == "room"
    return got["presence"], got["user"]


def test_presence_agrees_in_every_process(site: Site) -> None:
    one, two = site.servers
    laptop, phone, bob, anonymous = (site.browser() for _ in range(4))
    laptop.login(one, "alice")
    phone.login(two, "alice")
    bob.login(one, "bob")
    laptop.tab(one, ROOM + "&tab=laptop")
    phone.tab(two, ROOM + "&tab=phone")
    phone.tab(two, ROOM + "&tab=phone")
    bob.tab(two, ROOM)
    anonymous.tab(one, ROOM)
    anonymous.tab(two, ROOM)
    anonymous.tab(two, "?group=room")  # a member, not present

    answers = [presence(anonymous, server) for server in (one, two)]
    assert answers[0] == answers[1]
    (alice_key, alice, alice_info, alice_sockets), *_ = [a for a in answers[0] if a[1]]
    assert alice_sockets == 3
    assert alice_info["tab"] in ("laptop", "phone")
    assert [(a[0], a[3]) for a in answers[0]] == [
        ("anonymous", 1),
        ("anonymous", 1),
        (alice_key, 3),
        (f"user:{int(alice) + 1}", 1),
    ]


def test_join_and_leave_events_once_per_user(site: Site) -> None:
    one, two = site.servers
    watcher, laptop, phone = site.browser(), site.browser(), site.browser()
    watcher.login(one, "bob")
    laptop.login(one, "alice")
    phone.login(two, "alice")
    early: list[Any] = []
    watching = watcher.tab(one, ROOM + "&events=1", early)
    bob_pk = event(watching, early)[1]  # its own user's join

    first = laptop.tab(one, ROOM)
    assert event(watching, early) == ("join", str(int(bob_pk) - 1))
    second = phone.tab(two, ROOM)  # the same user, in the other process: no join
    first.close()  # one of two: no leave
    nothing_for(watching, 1.0)
    second.close()
    assert event(watching, early) == ("leave", str(int(bob_pk) - 1))
    nothing_for(watching)


def killed_process_members_vanish(
    site: Site, survivor: ServerProcess, dying: ServerProcess
) -> None:
    """The members of ``dying``, a process that dies without a word, are gone from
    presence as ``survivor`` answers it within 2 x the heartbeat: a leave event for each
    user who has no socket left elsewhere (an anonymous tab), none for one who has (alice,
    with a tab on each). Before, both processes list the same members."""
    watcher, laptop, phone = site.browser(), site.browser(), site.browser()
    watcher.login(survivor, "bob")
    laptop.login(dying, "alice")
    early: list[Any] = []
    watching = watcher.tab(survivor, ROOM + "&events=1", early)
    event(watching, early)  # bob's join
    phone.tab(dying, ROOM + "&tab=dying")  # anonymous: its own entry
    assert event(watching, early)[0] == "join"
    laptop.tab(dying, ROOM + "&tab=dying")
    assert event(watching, early)[0] == "join"  # alice
    laptop.tab(survivor, ROOM + "&tab=surviving")
    both = [presence(watcher, server) for server in (survivor, dying)]
    assert both[0] == both[1]
    assert sorted(p[3] for p in both[0]) == [1, 1, 2]  # anonymous, bob, alice's two tabs

    dying.stop(signal.SIGKILL)
    # Bounded wait; the bound (2 x heartbeat) is what bench/presence.py reports on.
    deadline = time.monotonic() + WAIT
    while len(found := presence(watcher, survivor)) != 2:
        assert time.monotonic() < deadline, found
        time.sleep(HEARTBEAT / 4)
    assert sorted(p[3] for p in found) == [1, 1]  # alice's surviving tab, bob
    assert event(watching, early) == ("leave", None)  # the anonymous socket only
    nothing_for(watching, 2 * HEARTBEAT)


@pytest.mark.parametrize("site", ["redis"], indirect=True)  # memory://: nobody survives
def test_killed_process_members_vanish(site: Site) -> None:
    """Two gevent processes over Redis: the second dies (see
    :func:`killed_process_members_vanish`)."""
    one, two = site.servers
    killed_process_members_vanish(site, one, two)


@pytest.mark.parametrize("site", ["redis"], indirect=True)
def test_a_killed_process_members_leave_where_sockets_only_listen(site: Site) -> None:
    """The process that survives has no present member, only a socket listening to the
    events (``events=True`` without ``presence=``, a page showing who is online): it
    gets the leave of each user of the killed process all the same. (No heartbeat ran
    where no one was present, so no process removed the dead one's entries: the page
    showed alice online for good.)"""
    survivor, dying = site.servers
    watcher, laptop = site.browser(), site.browser()
    watcher.login(survivor, "bob")
    laptop.login(dying, "alice")
    watching = watcher.tab(survivor, "?group=room&events=1")
    laptop.tab(dying, ROOM)
    joined, alice = event(watching, [])
    assert joined == "join"
    assert presence(watcher, survivor)[0][3] == 1

    dying.stop(signal.SIGKILL)
    assert event(watching, []) == ("leave", alice)
    assert presence(watcher, survivor) == []
