"""``dwebsocket.users`` and presence under ASGI: uvicorn with sync views
(``tests/groups/user_urls.py``) and with ``async def`` ones (``tests/asgi/user_views.py``:
``await ws.join``, ``await users.asend``), alone (``memory://``) and next to a gevent
WSGI process over one private redis-server (the same wire format both ways).

The tests of ``tests/groups/test_users_servers.py`` and ``test_presence_servers.py`` run
here unchanged on this module's ``site``: ``site.servers`` is ``[uvicorn, uvicorn]`` (one
process) or ``[uvicorn, gevent]`` (two, Redis); browsers log in through the site's own
views and the sockets carry the browser's cookie.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.groups.conftest import redis_server  # noqa: F401 - the fixture
from tests.groups.redis_server import RedisServer
from tests.groups.test_presence_servers import (  # noqa: F401 - collected here
    ROOM,
    event,
    killed_process_members_vanish,
    presence,
    test_join_and_leave_events_once_per_user,
    test_presence_agrees_in_every_process,
)
from tests.groups.test_users_servers import (  # noqa: F401 - collected here
    HEARTBEAT,
    WAIT,
    Site,
    create_site,
    nothing_for,
    site_settings,
    test_disconnect_closes_every_tab_everywhere_with_the_code,
    test_expired_session_is_closed_by_the_periodic_check,
    test_logout_in_one_process_closes_that_session_in_the_other,
    test_password_change_closes_every_session_of_the_user,
    test_send_reaches_every_tab_of_the_user_in_every_process_and_nobody_else,
)
from tests.servers import ServerProcess

pytestmark = pytest.mark.server

URLS = {"sync": "tests.groups.user_urls", "async": "tests.asgi.async_user_urls"}


LAYOUTS = ["uvicorn-sync", "uvicorn-async", "gevent+uvicorn-sync", "gevent+uvicorn-async"]


@pytest.fixture(params=LAYOUTS)
def site(
    request: pytest.FixtureRequest,
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> Iterator[Site]:
    """``uvicorn-KIND``: one uvicorn process with ``memory://``; ``gevent+uvicorn-KIND``:
    a uvicorn and a gevent process over a private redis-server (``servers[0]`` is uvicorn
    in both). KIND is the kind of the socket view (and of ``/send/``) on uvicorn; gevent
    serves the sync ones (an async view under WSGI refuses WebSockets with 501)."""
    layout, kind = request.param.rsplit("-", 1)
    db = tmp_path / "site.sqlite3"
    if layout.startswith("gevent+"):
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        url = redis_server.url
    else:
        url = "memory://"
    settings = site_settings(db, url)
    create_site(settings)
    uvicorn = make_server("uvicorn", settings={**settings, "ROOT_URLCONF": URLS[kind]})
    other = make_server("gevent", settings=settings) if layout.startswith("gevent+") else uvicorn
    site = Site([uvicorn, other], db)
    with site.stack:
        yield site


def vanish(ws: Any) -> None:
    """Drop the client's TCP connection without a close frame (RST)."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()


def test_a_vanished_client_leaves_presence(site: Site) -> None:
    """A tab that drops its TCP connection (no close frame) on uvicorn leaves the group's
    presence: the watcher gets alice's leave, and ``groups.presence()`` lists bob only."""
    uvicorn, other = site.servers
    watcher, laptop = site.browser(), site.browser()
    watcher.login(other, "bob")
    laptop.login(uvicorn, "alice")
    early: list[Any] = []
    watching = watcher.tab(other, ROOM + "&events=1", early)
    bob_pk = event(watching, early)[1]
    tab = laptop.tab(uvicorn, ROOM + "&tab=vanishing")
    assert event(watching, early) == ("join", str(int(bob_pk) - 1))
    assert [p[1] for p in presence(watcher, other)] == [str(int(bob_pk) - 1), bob_pk]

    vanish(tab)
    assert event(watching, early) == ("leave", str(int(bob_pk) - 1))
    assert [p[1] for p in presence(watcher, other)] == [bob_pk]
    assert [p[1] for p in presence(watcher, uvicorn)] == [bob_pk]


@pytest.mark.parametrize("site", ["gevent+uvicorn-sync", "gevent+uvicorn-async"], indirect=True)
def test_presence_lists_both_processes_until_uvicorn_is_killed(site: Site) -> None:
    """Members on uvicorn and on gevent are listed by both; when the uvicorn process dies
    without a word, its members are gone within 2 x the heartbeat (1 s here)
    (:func:`killed_process_members_vanish`)."""
    uvicorn, gevent = site.servers
    killed_process_members_vanish(site, gevent, uvicorn)


def _open_files(server: ServerProcess, path: Path) -> int:
    """How many of ``server``'s file descriptors are open on ``path`` (its connections to
    that SQLite database)."""
    fds = Path(f"/proc/{server.process.pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if Path(fd.readlink()) == path:
                count += 1
        except OSError:  # closed meanwhile
            continue
    return count


@pytest.mark.parametrize("site", ["uvicorn-async"], indirect=True)
def test_the_signal_threads_keep_no_database_connection(site: Site) -> None:
    """``websocket_opened``/``closed`` run in dwebsocket's signal threads, whose receivers
    query the database (``request.user``, the session): once the sockets are closed, those
    threads hold no connection to it (they outlive every request, so nothing else would
    close theirs)."""
    uvicorn = site.servers[0]
    laptop = site.browser()
    laptop.login(uvicorn, "alice")
    for n in range(6):  # more than the pool's threads
        laptop.tab(uvicorn, ROOM + f"&tab={n}").close()
    deadline = time.monotonic() + WAIT
    while (count := _open_files(uvicorn, site.db.resolve())) != 0:
        assert time.monotonic() < deadline, f"{count} connection(s) to {site.db} still open"
        time.sleep(0.05)
