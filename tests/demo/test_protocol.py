"""The chat's JSON over a plain WebSocket client: what the page relies on, and what a
misbehaving client gets (an error message, not a dropped connection)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.servers import ServerProcess

pytestmark = pytest.mark.server


def next_of(client: ClientConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """The next message of type ``kind`` with ``fields`` (bounded: 20 messages, each
    waited for 10 s at most)."""
    for _ in range(20):
        event: dict[str, Any] = json.loads(client.recv(timeout=10))
        if event["type"] == kind and fields.items() <= event.items():
            return event
    raise AssertionError(f"no {kind!r} message with {fields}")


def test_conversation_and_refusals(demo: Callable[..., ServerProcess]) -> None:
    srv = demo()

    with pytest.raises(InvalidStatus) as refused:
        connect(srv.url("/ws/lobby/?name=%3Cscript%3E"), open_timeout=10).close()
    assert refused.value.response.status_code == 400

    url = srv.url("/ws/lobby/?name={}")
    with (
        connect(url.format("ann"), open_timeout=10) as ann,
        connect(url.format("ben"), open_timeout=10) as ben,
    ):
        welcome = next_of(ann, "welcome")
        assert (welcome["room"], welcome["user"], welcome["history"]) == ("lobby", "ann", [])
        assert next_of(ben, "welcome")["members"] == ["ann", "ben"]
        assert next_of(ann, "join", user="ben")["members"] == ["ann", "ben"]

        ann.send(json.dumps({"type": "message", "text": "  hello  "}))
        for client in (ann, ben):
            message = next_of(client, "message")
            assert (message["user"], message["text"]) == ("ann", "hello")
            assert isinstance(message["id"], int)

        ben.send(json.dumps({"type": "typing"}))
        assert next_of(ann, "typing")["user"] == "ben"

        for bad in (
            "not json",
            "[1]",
            json.dumps({"type": "message", "text": "x" * 2001}),
            json.dumps({"type": "message", "text": "   "}),
            b"\x00binary",
        ):
            ben.send(bad)
            assert next_of(ben, "error")["error"]
        ben.send(json.dumps({"type": "message", "text": "still here"}))
        assert next_of(ann, "message")["text"] == "still here"

    with connect(url.format("cat"), open_timeout=10) as cat:
        history = next_of(cat, "welcome")["history"]
        assert [m["text"] for m in history] == ["hello", "still here"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_idle_tabs_hold_no_database_connection(
    demo: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = demo(db=tmp_path / "idle.sqlite3")
    url = srv.url("/ws/lobby/?name={}")
    with (
        connect(url.format("ann"), open_timeout=10) as ann,
        connect(url.format("ben"), open_timeout=10) as ben,
    ):
        next_of(ann, "welcome")
        next_of(ben, "welcome")
        ann.send(json.dumps({"type": "message", "text": "written, then idle"}))
        next_of(ben, "message")
        # Both views are now back in wait(): SQLite connections are open files.
        deadline = time.monotonic() + 10
        while (
            held := database_files(srv.process.pid, "idle.sqlite3")
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held == []


def database_files(pid: int, name: str) -> list[str]:
    """The files of process ``pid`` open on the database ``name`` (and its WAL files)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if Path(target).name.startswith(name):
                found.append(target)
    return found


def test_a_guest_cannot_take_an_accounts_name(demo: Callable[..., ServerProcess]) -> None:
    """alice, bob and carol are accounts (run.py makes them): a page that has not logged in
    may not chat under one of their names, in any case, or its messages would read as the
    account's. The socket is closed with 1008 and a reason the page shows (a refused
    handshake would have the page retry forever); other names still work."""
    srv = demo()
    url = srv.url("/ws/lobby/?name={}")
    for taken in ("alice", "Bob", "%20carol%20"):
        with connect(url.format(taken), open_timeout=10, close_timeout=10) as guest:
            with pytest.raises(ConnectionClosed):  # before any message: no welcome
                guest.recv(timeout=10)
            assert guest.close_code == 1008, taken
            assert "account" in (guest.close_reason or ""), guest.close_reason
    with connect(url.format("alicia"), open_timeout=10) as guest:
        assert next_of(guest, "welcome")["user"] == "alicia"


def test_a_flood_of_messages_is_refused(demo: Callable[..., ServerProcess]) -> None:
    """One socket sending message after message, as fast as it can, gets most of them
    refused with an error: they are not written, nor sent to the room. (Typing notices
    have their own limit.)"""
    srv = demo()
    url = srv.url("/ws/lobby/?name={}")
    with (
        connect(url.format("ann"), open_timeout=10) as ann,
        connect(url.format("ben"), open_timeout=10) as ben,
    ):
        next_of(ann, "welcome")
        next_of(ben, "welcome")
        sent = 40
        for n in range(sent):
            ann.send(json.dumps({"type": "message", "text": f"flood {n}"}))
        answers = {"message": 0, "error": 0}
        while sum(answers.values()) < sent:  # each is answered once, to ann: bounded
            event = json.loads(ann.recv(timeout=10))
            if event["type"] in answers:
                answers[event["type"]] += 1
        assert answers["error"] >= sent // 2, answers
        ben.send(json.dumps({"type": "message", "text": "ben is not limited by ann"}))
        assert next_of(ann, "message", user="ben")["text"] == "ben is not limited by ann"

    with connect(url.format("cat"), open_timeout=10) as cat:
        history = next_of(cat, "welcome")["history"]
        assert len(history) == answers["message"] + 1
