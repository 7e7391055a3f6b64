"""The session cookie of a WebSocket handshake: Django's ``Set-Cookie`` on the 101.

A view (or ``django.contrib.auth.get_user``, through ``request.user``) that writes the
session or gives it a new key before accepting: the 101 is the only answer the browser
reads, so the new cookie must be on it, its session saved (RFC 6455 4.1: the client
processes ``Set-Cookie`` there). Real servers, a SQLite file shared by the test and the
servers, the ``websockets`` client, cookies sent by hand.
"""

from __future__ import annotations

import http.cookies
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings as django_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.browser import WAIT_MS
from tests.groups.test_users_servers import create_site, site_settings
from tests.servers import ASGI_SERVERS, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.server

WAIT = 20.0
COOKIE = "sessionid"
#: The test project's own SECRET_KEY (tests/settings.py): the key before the rotation.
OLD_KEY = django_settings.SECRET_KEY


@pytest.fixture
def make_site(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> Callable[..., ServerProcess]:
    """``make_site(server_name, **settings)``: a server of the users' test site (groups
    in memory), on the database of this test (made, with its users, by the first call)."""
    db = tmp_path / "site.sqlite3"

    def make(name: str, **extra: Any) -> ServerProcess:
        settings = {**site_settings(db, "memory://"), **extra}
        if not db.exists():
            create_site(settings)
        return make_server(name, settings=settings)

    return make


def session_cookies(set_cookies: list[str], name: str = COOKIE) -> list[http.cookies.Morsel[str]]:
    """The session cookies (named ``name``) of ``set_cookies`` (header values)."""
    morsels = []
    for header in set_cookies:
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        jar.load(header)
        morsels.extend(m for key, m in jar.items() if key == name)
    return morsels


def get(
    server: ServerProcess, path: str, session: str | None = None, name: str = COOKIE
) -> tuple[str, list[str]]:
    """GET ``path`` with session cookie ``session`` (named ``name``): the body and the
    ``Set-Cookie``s."""
    request = urllib.request.Request(server.url(path, "http"))
    if session is not None:
        request.add_header("Cookie", f"{name}={session}")
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return response.read().decode(), response.headers.get_all("Set-Cookie") or []


def log_in(server: ServerProcess, username: str) -> str:
    """Log ``username`` in: the session key its cookie holds."""
    _, set_cookies = get(server, f"/login/?username={username}")
    (cookie,) = session_cookies(set_cookies)
    return cookie.value


def handshake(
    server: ServerProcess, path: str, session: str | None = None, stay: float = 0.0
) -> tuple[list[str], Any]:
    """Open a socket at ``path`` with session cookie ``session``: the 101's
    ``Set-Cookie`` headers and the view's first message (JSON; a quiet view's: None, and
    the socket must stay open ``stay`` seconds), then close it."""
    headers = {"Cookie": f"{COOKIE}={session}"} if session is not None else {}
    with connect(
        server.url(path),
        additional_headers=headers,
        open_timeout=WAIT,
        close_timeout=WAIT,
        compression=None,
    ) as ws:
        assert ws.response is not None
        set_cookies = ws.response.headers.get_all("Set-Cookie")
        if "quiet" not in path:
            return set_cookies, json.loads(ws.recv(timeout=WAIT))
        with pytest.raises(TimeoutError):  # neither a message nor a close
            ws.recv(timeout=stay)
    return set_cookies, None


#: Servers whose 101 carries the headers dwebsocket gives it: the default backend's, the
#: uwsgi backend's (behind its WSGI wrapper), and the ASGI servers that send
#: ``websocket.accept``'s ``headers`` (ASGI 2.1).
SERVERS = pytest.mark.parametrize(
    "name", ["gevent", "runserver", "uwsgi-gevent", "uvicorn", "hypercorn"]
)
#: ASGI servers that drop ``websocket.accept``'s ``headers`` (daphne 4.2, granian 2.8):
#: the session is saved, its cookie never reaches the browser (docs/users.rst).
DROPPING = [
    pytest.param(name, marks=pytest.mark.xfail(reason="drops the accept's headers", strict=True))
    for name in ("daphne", "granian-asgi")
]


@pytest.mark.parametrize(
    "name", ["gevent", "runserver", "uwsgi-gevent", "uvicorn", "hypercorn", *DROPPING]
)
def test_a_session_key_cycled_before_the_accept_goes_out_with_the_101(
    make_site: Callable[..., ServerProcess], name: str
) -> None:
    """``cycle_key()`` (what ``login()`` does) before the accept: the 101 carries the new
    key's cookie, as Django makes it; that key is the saved session, still logged in,
    after the socket closed too (the session middleware's run at the end of the
    connection breaks nothing); the old key no longer is."""
    server = make_site(name)
    old = log_in(server, "alice")
    set_cookies, said = handshake(server, "/ws/session-written/?write=cycle", old)
    (cookie,) = session_cookies(set_cookies)
    assert cookie.value == said["session"] != old
    assert cookie["path"] == "/"
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert get(server, "/whoami/", cookie.value)[0] == "alice"
    assert get(server, "/whoami/", old)[0] == ""


@SERVERS
def test_a_session_value_written_before_the_accept_is_saved_and_its_cookie_sent(
    make_site: Callable[..., ServerProcess], name: str
) -> None:
    """A browser with no session yet, a value written before the accept: the 101 carries
    the new session's cookie, and that session holds the value."""
    server = make_site(name)
    set_cookies, said = handshake(server, "/ws/session-written/?write=value")
    (cookie,) = session_cookies(set_cookies)
    assert cookie.value == said["session"]
    assert get(server, "/session-value/", cookie.value)[0] == "written"


@pytest.mark.parametrize("name", ["gevent", "runserver", "uvicorn"])
def test_a_session_that_cannot_be_saved_fails_the_handshake_as_django_answers(
    make_site: Callable[..., ServerProcess], name: str
) -> None:
    """The session written before the accept, its row deleted meanwhile (a logout in
    another tab): saving it for the 101 raises Django's ``SessionInterrupted``, so the
    handshake gets Django's answer to it, a 400, as an HTTP response would -- not a 101
    whose cookie names a session that is gone, nor a 500; the server goes on."""
    server = make_site(name)
    session = log_in(server, "alice")
    with pytest.raises(InvalidStatus) as refused:
        handshake(server, "/ws/session-written/?write=deleted", session)
    assert refused.value.response.status_code == 400
    assert get(server, "/whoami/", session)[0] == ""  # logged out, as the other tab did
    assert handshake(server, "/ws/session-written/")[0] == []  # the server goes on


@SERVERS
def test_a_handshake_that_leaves_the_session_as_it_was_sets_no_cookie(
    make_site: Callable[..., ServerProcess], name: str
) -> None:
    """Read (``request.user``), not written: no ``Set-Cookie``, logged in or not."""
    server = make_site(name)
    session = log_in(server, "alice")
    for path in ("/ws/", "/ws/session-written/", "/ws/quiet/"):
        assert handshake(server, path, session)[0] == []
        assert handshake(server, path)[0] == []
    assert get(server, "/whoami/", session)[0] == "alice"


@SERVERS
def test_a_handshake_first_after_a_secret_key_rotation_keeps_the_user_logged_in(
    make_site: Callable[..., ServerProcess], name: str
) -> None:
    """``SECRET_KEY`` rotated, the old one in ``SECRET_KEY_FALLBACKS``, and the browser's
    first request after the deploy a socket reconnecting: ``get_user`` (reached through
    dwebsocket's users app once the socket opens: the view reads no user) verifies the
    session's hash with the old key and cycles its key. The new key's cookie goes out
    with the 101: with it the browser is still logged in at its next page. The socket is
    the new key's: the old key's deletion and the session checks (every 0.5 s) leave it
    open."""
    before = make_site(name)
    old = log_in(before, "alice")
    before.stop()
    after = make_site(name, SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=[OLD_KEY])
    # Under ASGI an async view's: its accept reads the user in a thread of dwebsocket's.
    path = "/ws/quiet-async/" if name in ASGI_SERVERS else "/ws/quiet/"
    set_cookies, _ = handshake(after, path, old, stay=1.5)
    (cookie,) = session_cookies(set_cookies)
    assert cookie.value != old
    page, set_at_page = get(after, "/whoami/", cookie.value)
    assert page == "alice"
    assert set_at_page == []  # hashed with the new key: nothing cycled again
    assert get(after, "/whoami/", old)[0] == ""


def test_the_cookie_is_the_one_the_session_middleware_makes(
    make_site: Callable[..., ServerProcess],
) -> None:
    """The site's session settings make the cookie: ``signed_cookies`` sessions (the
    cookie is the session), another cookie name and ``SameSite``."""
    server = make_site(
        "gevent",
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SAMESITE="Strict",
    )
    set_cookies, said = handshake(server, "/ws/session-written/?write=value")
    (cookie,) = session_cookies(set_cookies, "sid")
    assert cookie.value == said["session"]
    assert cookie["samesite"] == "Strict"
    assert get(server, "/session-value/", cookie.value, "sid")[0] == "written"


def test_chromium_keeps_the_cookie_of_a_101(
    make_site: Callable[..., ServerProcess], browser: Browser
) -> None:
    """The rotation in a browser: a page of the site (one that reads no user) with a
    session cookie made before the rotation opens a socket first; Chromium stores the
    cookie of the 101, and its next page is still alice's."""
    before = make_site("gevent")
    old = log_in(before, "alice")
    before.stop()
    after = make_site("gevent", SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=[OLD_KEY])
    context = browser.new_context()
    try:
        context.set_default_timeout(WAIT_MS)
        context.add_cookies([{"name": COOKIE, "value": old, "url": after.url("/", "http")}])
        page = context.new_page()
        page.goto(after.url("/session-value/", "http"))
        page.evaluate(
            """(url) => new Promise((resolve, reject) => {
                const ws = new WebSocket(url);
                ws.onopen = () => { ws.close(); resolve(); };
                ws.onerror = () => reject(new Error("the socket did not open"));
            })""",
            after.url("/ws/quiet/"),
        )
        (stored,) = [c["value"] for c in context.cookies() if c["name"] == COOKIE]
        assert stored != old
        page.goto(after.url("/whoami/", "http"))
        assert page.inner_text("body") == "alice"
    finally:
        context.close()


def test_a_server_that_drops_the_accepts_headers_says_so_once(
    make_site: Callable[..., ServerProcess],
) -> None:
    """daphne's WebSocket scope says no ASGI spec version (2.0: before ``websocket.accept``
    had ``headers``), and it drops them: the session cookie cannot reach the browser, and
    the log says so, once."""
    server = make_site("daphne")
    for _ in range(2):
        set_cookies, _ = handshake(server, "/ws/session-written/?write=value")
        assert set_cookies == []
    assert server.log().count("sends no headers with the 101") == 1
