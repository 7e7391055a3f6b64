"""The session checks (``dwebsocket.users``) on a real gevent server, when the store
misbehaves or the peer does: a store that hangs is an outage, bounded, and stalls
nothing else; a socket already closing is not closed again by later checks."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.groups.test_users_servers import (
    REVOKED,
    WAIT,
    Browser,
    Site,
    closed_with,
    create_site,
    nothing_for,
    site_settings,
)
from tests.groups.test_users_sessions import logged, logging_to
from tests.servers import HOST, ServerProcess

pytestmark = pytest.mark.server


def checked_site(
    make_server: Callable[..., ServerProcess], tmp_path: Path, **settings: Any
) -> tuple[Path, ServerProcess, Site]:
    """A gevent server of the site checking sessions every 0.2 s, with ``settings`` on
    top: its users log, the server, the site."""
    log = tmp_path / "users.log"
    every = {
        **site_settings(tmp_path / "site.sqlite3", "memory://"),
        "WEBSOCKET_SESSION_CHECK_INTERVAL": 0.2,
        "LOGGING": logging_to(log),
        **settings,
    }
    create_site(every)
    server = make_server("gevent", settings=every)
    return log, server, Site([server], tmp_path / "site.sqlite3")


def tasks(browser: Browser, server: ServerProcess) -> int:
    return int(json.loads(browser.get(server, "/tasks/"))["tasks"])


def test_a_store_that_hangs_is_an_outage_that_stalls_nothing_else(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The reads of two sessions hang (``tests.groups.flaky_sessions``): the periodic
    check waits ``users.LOOKUP_TIMEOUT`` (5 s) for one, then counts the store as
    unreadable -- one WARNING, nobody closed -- and the checks asked meanwhile (a user
    saved twenty times) do not queue up behind it; new sockets still get their opening
    check, messages and commands still go, and no socket is revoked. Once the store
    answers, a session that ended still ends."""
    log, server, site = checked_site(
        make_server, tmp_path, SESSION_ENGINE="tests.groups.flaky_sessions"
    )
    with site.stack:
        alice, bob, anonymous = site.browser(), site.browser(), site.browser()
        keys = [alice.login(server, "alice"), bob.login(server, "bob")]
        alices, bobs = alice.tab(server), bob.tab(server)

        anonymous.get(server, "/sessions/hang/", keys=",".join(keys))
        assert logged(log, "got no answer within 5 s") == 1
        before = tasks(anonymous, server)
        for n in range(20):  # a check command each, which finds bob's socket here
            anonymous.get(server, "/password/", username="bob", password=f"new {n}")
        deadline = time.monotonic() + WAIT
        while (now := tasks(anonymous, server)) > before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert now <= before + 2, (before, now)
        anonymous.get(server, "/send/", username="alice", text="still open")
        assert alices.recv(timeout=WAIT) == "still open"
        nothing_for(bobs)
        # New sockets: one whose check reads the store, then one whose user is
        # disconnected as it opens (alice: her first socket closes too).
        late = site.browser()
        late.login(server, "alice")
        late.tab(server, "saved-while-opening/")
        cookie = "; ".join(f"{c.name}={c.value}" for c in late.cookies)
        with connect(
            server.url("/ws/disconnected-while-opening/"),
            additional_headers={"Cookie": cookie},
            open_timeout=WAIT,
        ) as banned:
            assert closed_with(banned) == 4003
        assert closed_with(alices) == 4003
        nothing_for(bobs)

        anonymous.get(server, "/sessions/answer/")
        assert logged(log, "can be read again") == 1
        assert closed_with(bobs) == REVOKED  # his password changed meanwhile
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings


def silent_tab(browser: Browser, server: ServerProcess) -> socket.socket:
    """A socket of ``browser`` on ``server`` from a peer that will never answer a close
    frame (nor send anything), once the view said whose it is."""
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    port = int(server.url("/", "http").split(":")[2].split("/")[0])
    sock = socket.create_connection((HOST, port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    got = b""
    while b'"pid"' not in got:
        data = sock.recv(4096)
        assert data, got
        got += data
    return sock


def test_a_socket_closing_is_not_closed_again_by_the_next_checks(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A revoked socket's peer never answers the close frame: the socket stays closing
    for ``WEBSOCKET_CLOSE_TIMEOUT`` (3 s), through some fifteen checks, each of which
    skips it (``is_closed()`` is true from the close frame on): one close, one INFO."""
    log, server, site = checked_site(make_server, tmp_path, WEBSOCKET_CLOSE_TIMEOUT=3.0)
    with site.stack:
        browser = site.browser()
        key = browser.login(server, "alice")
        with silent_tab(browser, server) as sock:
            site.expire(key)
            got = b""
            while data := sock.recv(4096):  # until the server gives up waiting
                got += data
        assert got == b"\x88\x0f\x0f\xa1session ended"  # one close frame, 4001
    ended = [line for line in log.read_text().splitlines() if "ended: closing" in line]
    assert len(ended) == 1, ended
