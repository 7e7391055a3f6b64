"""``dwebsocket.users`` across real server processes: two gevent servers sharing a
private redis-server and a database (SQLite file), browsers logging in through the site's
own views, sockets from ``websockets``' client with the browser's cookie.

Each test runs twice: ``redis`` (two processes) and ``memory`` (``memory://``, one
process playing both parts): the same answers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.cookiejar
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.groups.redis_server import RedisServer
from tests.groups.user_views import PASSWORD
from tests.servers import REPO, ServerProcess

pytestmark = pytest.mark.server

WAIT = 20.0  # no single wait is longer
REVOKED = 4001
#: Bound for a revocation to reach a socket in another process (the issue asks 1 s at
#: p99: bench/presence.py measures it; here only a generous bound, never a timing).
CLOSE_BOUND = 5.0

USERS = ("alice", "bob")
#: The presence heartbeat of these servers (seconds): a killed one's members are gone
#: within twice that.
HEARTBEAT = 1.0


def site_settings(db: Path, groups_url: str) -> dict[str, Any]:
    return {
        "ROOT_URLCONF": "tests.groups.user_urls",
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
        "MIDDLEWARE": [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
        "WEBSOCKET_GROUPS_URL": groups_url,
        "WEBSOCKET_SESSION_CHECK_INTERVAL": 0.5,
        "WEBSOCKET_PRESENCE_HEARTBEAT": HEARTBEAT,
    }


def manage_with(settings: dict[str, Any], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``python tests/manage.py ARGS`` with the test settings and ``settings`` on top."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DWEBSOCKET_TEST_SETTINGS": json.dumps(settings),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "manage.py"), *args],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


class Site:
    """The servers of one test: ``servers[0]`` and ``servers[1]`` are two processes with
    Redis, the same one with ``memory://``."""

    def __init__(self, servers: list[ServerProcess], db: Path) -> None:
        self.servers = servers
        self.db = db
        self.stack = contextlib.ExitStack()

    def browser(self) -> Browser:
        return Browser(self)

    def expire(self, session_key: str) -> None:
        """Make a session expired in the database, as time would: no signal is sent."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=WAIT)) as db, db:
            db.execute(
                "UPDATE django_session SET expire_date = '2000-01-01 00:00:00' "
                "WHERE session_key = ?",
                (session_key,),
            )


class Browser:
    """One browser: its own cookies (so its own session), tabs on any server."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, server: ServerProcess, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with self.opener.open(server.url(path + query, "http"), timeout=WAIT) as response:
            body: bytes = response.read()
            return body

    def login(self, server: ServerProcess, username: str) -> str:
        return str(json.loads(self.get(server, "/login/", username=username))["session"])

    def tab(
        self, server: ServerProcess, query: str = "", early: list[Any] | None = None
    ) -> ClientConnection:
        """A socket of this browser on ``server``, once the view said whose it is (what
        came before that, its own join event say, goes to ``early``)."""
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.cookies)
        ws = self.site.stack.enter_context(
            connect(
                server.url(f"/ws/{query}"),
                additional_headers={"Cookie": cookie} if cookie else {},
                open_timeout=WAIT,
                close_timeout=WAIT,
                compression=None,
            )
        )
        while "pid" not in (got := json.loads(ws.recv(timeout=WAIT))):
            if early is not None:
                early.append(got)
        return ws


def closed_with(ws: ClientConnection, bound: float = CLOSE_BOUND) -> int:
    """The close code the server sent; fails if the socket is still open after ``bound``."""
    try:
        while True:
            ws.recv(timeout=bound)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else 1006


def create_site(settings: dict[str, Any]) -> None:
    """The site's databases: their tables, and the users of :data:`USERS`."""
    for args in (
        *(("migrate", "--database", alias, "--verbosity", "0") for alias in settings["DATABASES"]),
        (
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n"
            + "".join(f"User.objects.create_user({n!r}, password={PASSWORD!r})\n" for n in USERS),
        ),
    ):
        result = manage_with(settings, *args)
        assert result.returncode == 0, result.stderr.decode()


def nothing_for(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=wait)


@contextlib.contextmanager
def running_site(
    request: pytest.FixtureRequest,
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
    kind: str,
    **extra: Any,
) -> Iterator[Site]:
    """A :class:`Site` on ``kind`` ("redis" or "memory"), its servers' settings
    :func:`site_settings` with ``extra`` on top."""
    db = tmp_path / "site.sqlite3"
    if kind == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        url = redis_server.url
    else:
        url = "memory://"
    settings = {**site_settings(db, url), **extra}
    create_site(settings)
    if kind == "redis":
        servers = [make_server("gevent", settings=settings) for _ in range(2)]
    else:
        servers = [make_server("gevent", settings=settings)] * 2
    site = Site(servers, db)
    with site.stack:
        yield site


@pytest.fixture
def make_site(
    request: pytest.FixtureRequest,
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> Callable[..., contextlib.AbstractContextManager[Site]]:
    """``make_site(kind, **settings)``: :func:`running_site` in this test."""
    return functools.partial(running_site, request, make_server, tmp_path)


@pytest.fixture(params=["redis", "memory"])
def site(
    request: pytest.FixtureRequest,
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> Iterator[Site]:
    with running_site(request, make_server, tmp_path, request.param) as site:
        yield site


def test_send_reaches_every_tab_of_the_user_in_every_process_and_nobody_else(site: Site) -> None:
    one, two = site.servers
    laptop, phone, bob, anonymous = (site.browser() for _ in range(4))
    laptop.login(one, "alice")
    phone.login(two, "alice")
    bob.login(one, "bob")
    alice_tabs = [laptop.tab(one), laptop.tab(two), phone.tab(two)]
    others = [bob.tab(one), bob.tab(two), anonymous.tab(one), anonymous.tab(two)]

    laptop.get(one, "/send/", username="alice", text="for alice")
    anonymous.get(two, "/send/", username="alice", text="again")  # from the other process
    for ws in alice_tabs:
        assert [ws.recv(timeout=WAIT), ws.recv(timeout=WAIT)] == ["for alice", "again"]
    bob.get(two, "/send/", username="bob", text="for bob")
    for ws in others[:2]:
        assert ws.recv(timeout=WAIT) == "for bob"
    for ws in alice_tabs + others:
        nothing_for(ws)


def test_logout_in_one_process_closes_that_session_in_the_other(site: Site) -> None:
    one, two = site.servers
    laptop, phone = site.browser(), site.browser()
    laptop.login(one, "alice")
    phone.login(one, "alice")
    leaving = [laptop.tab(two), laptop.tab(two), laptop.tab(one)]
    staying = phone.tab(two)

    laptop.get(one, "/logout/")
    for ws in leaving:
        assert closed_with(ws) == REVOKED
        assert ws.close_reason == "logged out"
    phone.get(one, "/send/", username="alice", text="still here")
    assert staying.recv(timeout=WAIT) == "still here"


def alice_everywhere_closed_by(site: Site, path: str, **query: str) -> None:
    """Alice has three tabs in two sessions across both processes, Bob one: Bob's
    request to ``path`` about Alice (with ``query``) closes every tab of hers (4001), and
    his stays open."""
    one, two = site.servers
    laptop, phone, bob = site.browser(), site.browser(), site.browser()
    laptop.login(one, "alice")
    phone.login(two, "alice")
    bob.login(two, "bob")
    alice_tabs = [laptop.tab(one), laptop.tab(two), phone.tab(two)]
    bob_tab = bob.tab(one)

    bob.get(one, path, username="alice", **query)
    for ws in alice_tabs:
        assert closed_with(ws) == REVOKED
    bob.get(two, "/send/", username="bob", text="bob stays")
    assert bob_tab.recv(timeout=WAIT) == "bob stays"


def test_password_change_closes_every_session_of_the_user(site: Site) -> None:
    alice_everywhere_closed_by(site, "/password/", password="a new one")


def test_a_deleted_user_is_closed_in_every_process(site: Site) -> None:
    alice_everywhere_closed_by(site, "/delete-user/")


@pytest.mark.parametrize("kind", ["redis", "memory"])
@pytest.mark.parametrize("path", ["/deactivate/", "/delete-user/"])
def test_a_user_saved_or_deleted_through_a_proxy_model_is_closed_in_every_process(
    make_site: Callable[..., contextlib.AbstractContextManager[Site]], kind: str, path: str
) -> None:
    """Alice made inactive, or deleted, through a proxy of the user model (``Staff``, as
    a staff admin has): Django sends the signal with the proxy as sender, and every
    process checks her sockets all the same. No periodic check here to catch it later.
    (Only ``User``'s own signals were connected: her sockets stayed open.)"""
    with make_site(
        kind,
        INSTALLED_APPS=[*django_settings.INSTALLED_APPS, "tests.groups.staff"],
        WEBSOCKET_SESSION_CHECK_INTERVAL=None,
    ) as site:
        alice_everywhere_closed_by(site, path, through="staff")


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_user_saved_in_a_transaction_of_its_own_database_is_checked_once_it_commits(
    make_site: Callable[..., contextlib.AbstractContextManager[Site]],
    tmp_path: Path,
    kind: str,
) -> None:
    """The users live in a database of their own (the ``auth_db`` of Django's multi-database
    example), and the view that makes alice inactive goes on in its transaction after
    the save: her sockets are checked once that transaction commits, and closed. No
    periodic check here to catch it later. (They were checked at once, once ``default``
    committed, and read her still active: they stayed open.)"""
    databases = site_settings(tmp_path / "site.sqlite3", "memory://")["DATABASES"]
    databases["auth_db"] = {**databases["default"], "NAME": str(tmp_path / "auth.sqlite3")}
    with make_site(
        kind,
        DATABASES=databases,
        DATABASE_ROUTERS=["tests.groups.auth_db.AuthRouter"],
        WEBSOCKET_SESSION_CHECK_INTERVAL=None,
    ) as site:
        alice_everywhere_closed_by(site, "/deactivate/", hold="1")


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_session_of_a_model_of_the_sites_own_ending_closes_its_sockets(
    make_site: Callable[..., contextlib.AbstractContextManager[Site]], kind: str
) -> None:
    """A site with a session model of its own (``AbstractBaseSession``, Django's
    "extending database-backed session engines") in place of ``django.contrib.sessions``,
    which it need not install: a session flushed (no logout) closes its sockets in every
    process, as with Django's. No periodic check here to catch it later. (The receivers
    of session deletions were connected only if ``django.contrib.sessions`` was
    installed: the sockets stayed open.)"""
    apps = [app for app in django_settings.INSTALLED_APPS if app != "django.contrib.sessions"]
    with make_site(
        kind,
        INSTALLED_APPS=[*apps, "tests.groups.custom_sessions"],
        SESSION_ENGINE="tests.groups.custom_sessions.backends",
        WEBSOCKET_SESSION_CHECK_INTERVAL=None,
    ) as site:
        one, two = site.servers
        laptop, phone = site.browser(), site.browser()
        laptop.login(one, "alice")
        phone.login(one, "alice")
        leaving, staying = [laptop.tab(one), laptop.tab(two)], phone.tab(two)
        laptop.get(one, "/flush/")
        for ws in leaving:
            assert closed_with(ws) == REVOKED
        nothing_for(staying)


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_session_deletion_is_revoked_once_it_commits(
    make_site: Callable[..., contextlib.AbstractContextManager[Site]],
    tmp_path: Path,
    kind: str,
) -> None:
    """A session row deleted in a transaction (an admin's, ``ATOMIC_REQUESTS``): rolled
    back, the session goes on and its sockets stay open; committed later, a socket
    opened meanwhile -- its request read the row still there, after the revocation had
    gone out -- is closed. The revocation was sent at the delete: the first socket was
    closed for a session that was still valid, the second stayed open with one that had
    ended. No periodic check here to catch it later."""
    with make_site(kind, WEBSOCKET_SESSION_CHECK_INTERVAL=None) as site:
        session_deletion_revoked_once_it_commits(site, tmp_path)


def while_held(
    request: Callable[[], bytes],
    held: Path,
    release: Path,
    answer: bytes,
    during: Callable[[], ClientConnection],
) -> ClientConnection:
    """``request()`` in a thread (a view that makes the file ``held``, then waits for
    ``release``), ``during()`` while the view waits, then the view let go: what
    ``during()`` returned, once the request answered ``answer``."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(request)
        try:
            deadline = time.monotonic() + WAIT
            while not held.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert held.exists()
            made = during()
        finally:
            release.touch()
        assert done.result(timeout=WAIT) == answer
    return made


def session_deletion_revoked_once_it_commits(site: Site, tmp_path: Path) -> None:
    one, two = site.servers
    laptop, admin = site.browser(), site.browser()
    key = laptop.login(one, "alice")
    staying = laptop.tab(two)
    assert admin.get(one, "/sessions/delete/", key=key, rollback="1") == b"rolled back"
    laptop.get(one, "/send/", username="alice", text="still open")
    assert staying.recv(timeout=WAIT) == "still open"
    nothing_for(staying)

    deleted, commit = tmp_path / "deleted", tmp_path / "commit"
    opened = while_held(  # its session read before the commit: still alice's
        functools.partial(
            admin.get, one, "/sessions/delete/", key=key, deleted=str(deleted), commit=str(commit)
        ),
        deleted,
        commit,
        b"deleted",
        lambda: laptop.tab(two),
    )
    for ws in (staying, opened):
        assert closed_with(ws) == REVOKED


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_socket_opened_while_a_logout_finishes_is_closed(
    make_site: Callable[..., contextlib.AbstractContextManager[Site]],
    tmp_path: Path,
    kind: str,
) -> None:
    """Django sends ``user_logged_out`` before it flushes the session: a socket whose
    request begins after dwebsocket's receiver sent the revocation and reads the session
    before the flush (here a slower receiver of the site's own holds the flush back) is
    closed once it has joined. It was taken for one whose authentication had seen the
    logout, and with the cache engine (no signal at the flush) it stayed open with the
    ended session. No periodic check here to catch it later."""
    with make_site(
        kind,
        WEBSOCKET_SESSION_CHECK_INTERVAL=None,
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                "LOCATION": str(tmp_path / "cache"),
            }
        },
    ) as site:
        one, two = site.servers
        laptop = site.browser()
        laptop.login(one, "alice")
        before = laptop.tab(two)
        paused, go = tmp_path / "paused", tmp_path / "go"
        opened = while_held(  # its session read before the flush: still alice's
            functools.partial(laptop.get, one, "/logout/", paused=str(paused), go=str(go)),
            paused,
            go,
            b"bye",
            lambda: laptop.tab(two),
        )
        for ws in (before, opened):
            assert closed_with(ws) == REVOKED
            assert ws.close_reason == "logged out"


def test_disconnect_closes_every_tab_everywhere_with_the_code(site: Site) -> None:
    one, two = site.servers
    laptop, bob = site.browser(), site.browser()
    laptop.login(one, "alice")
    bob.login(one, "bob")
    alice_tabs = [laptop.tab(one), laptop.tab(two)]
    bob_tab = bob.tab(two)

    bob.get(two, "/disconnect/", username="alice", code="4003")
    for ws in alice_tabs:
        assert closed_with(ws) == 4003
    nothing_for(bob_tab)


def test_commands_sent_while_a_socket_opens_reach_it(site: Site) -> None:
    """A disconnect, then a logout, land after the request was authenticated and before
    its socket joined its groups (each view sends it itself, in a process with no other
    socket of alice's: on Redis, not subscribed to her groups then). The socket finds the
    command in the layer's record once it has joined, and closes with its code; a socket
    opened after the disconnect stays open."""
    one, two = site.servers
    laptop = site.browser()
    laptop.login(one, "alice")
    assert closed_with(laptop.tab(two, "disconnected-while-opening/")) == 4003
    after = laptop.tab(two)
    laptop.get(one, "/send/", username="alice", text="still open")
    assert after.recv(timeout=WAIT) == "still open"
    assert closed_with(laptop.tab(two, "revoked-while-opening/")) == REVOKED
    assert closed_with(after) == REVOKED  # the same session: its logout closes it too


def test_expired_session_is_closed_by_the_periodic_check(site: Site) -> None:
    """No signal: the session's row expires (as ``SESSION_COOKIE_AGE`` passing does);
    every process's periodic check (0.5 s here) closes its sockets."""
    one, two = site.servers
    laptop, phone = site.browser(), site.browser()
    key = laptop.login(one, "alice")
    phone.login(one, "alice")
    expiring = [laptop.tab(one), laptop.tab(two)]
    staying = phone.tab(two)

    site.expire(key)
    for ws in expiring:
        assert closed_with(ws) == REVOKED
    nothing_for(staying)


@pytest.mark.parametrize("server_name", ["gevent", "uvicorn"])
def test_a_session_ended_before_the_view_saw_the_request_closes_its_socket(
    make_server: Callable[..., ServerProcess], tmp_path: Path, server_name: str
) -> None:
    """A middleware authenticates the request, then its session ends (a logout in
    another tab, landing then: ``user_views.EndedAfterAuthentication``), before the
    view's decorator sees the request. The socket still finds that command once it has
    joined its groups, under WSGI and ASGI; no periodic check here to catch it later."""
    db = tmp_path / "site.sqlite3"
    settings = site_settings(db, "memory://")
    settings["MIDDLEWARE"] = [
        *settings["MIDDLEWARE"],
        "tests.groups.user_views.EndedAfterAuthentication",
    ]
    settings["WEBSOCKET_SESSION_CHECK_INTERVAL"] = None
    create_site(settings)
    server = make_server(server_name, settings=settings)
    site = Site([server], db)
    with site.stack:
        browser = site.browser()
        browser.login(server, "alice")
        cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
        with connect(
            server.url("/ws/ended-after-authentication/"),
            additional_headers={"Cookie": cookie},
            open_timeout=WAIT,
            close_timeout=WAIT,
        ) as ws:
            assert closed_with(ws) == REVOKED
            assert ws.close_reason == "session ended"
