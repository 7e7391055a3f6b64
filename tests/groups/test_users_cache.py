"""The session check (``dwebsocket.users``) with Django's cache sessions on a real
redis-server that goes away: Django's cache engine reads a cache it cannot reach as an
empty session, which must not revoke every socket of the process (docs/users.rst: a
store that cannot be read revokes nothing)."""

from __future__ import annotations

import datetime
import logging
import time

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import override_settings
from django.utils import timezone

from dwebsocket import users
from tests.groups.redis_server import RedisServer
from tests.groups.test_users import SETTINGS, WAIT, logged_in, tab
from tests.groups.user_views import PASSWORD


def logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> bool:
    """Wait up to WAIT for ``count`` records of dwebsocket.users containing ``text``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if sum(text in r.getMessage() for r in caplog.records) >= count:
            return True
        time.sleep(0.02)
    return False


def sessions_in(redis_server: RedisServer, engine: str) -> override_settings:
    """The site's settings with Django's session ``engine`` (``cache``, ``cached_db``) on
    a cache in ``redis_server`` (1 s timeouts), checked every 0.2 s."""
    cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_server.url,
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
    return override_settings(
        **SETTINGS,
        CACHES={"default": cache},
        SESSION_ENGINE=f"django.contrib.sessions.backends.{engine}",
        WEBSOCKET_SESSION_CHECK_INTERVAL=0.2,
    )


@pytest.mark.django_db(transaction=True)
def test_a_session_cache_that_went_away_revokes_nothing_until_it_is_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with sessions_in(redis_server, "cache"), caplog.at_level(logging.DEBUG, "dwebsocket.users"):
        alice = User.objects.create_user("alice", password=PASSWORD)
        try:
            with tab(logged_in("alice")) as one, tab(logged_in("alice")) as two:
                redis_server.stop()
                # Three periodic checks that could not read the cache.
                assert logged(caplog, "Could not read the session store")
                assert logged(caplog, "still cannot be read", count=2)
                users.send(alice, "still open")
                assert one.receive() == two.receive() == "still open"

                redis_server.start()  # back, empty: both sessions are gone now
                assert one.wait_closed(WAIT) == two.wait_closed(WAIT) == users.REVOKED
                assert logged(caplog, "can be read again")
        finally:
            assert users._checker.wait_idle(WAIT)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]


@pytest.mark.django_db(transaction=True)
def test_cached_db_sessions_still_end_while_the_cache_is_away(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``cached_db`` reads the database when the cache cannot answer: that answer is the
    session store's own (Django logs the user out on it), not an outage."""
    with sessions_in(redis_server, "cached_db"), caplog.at_level(logging.DEBUG, "dwebsocket.users"):
        User.objects.create_user("alice", password=PASSWORD)
        try:
            browser = logged_in("alice")
            with tab(browser) as ws:
                # Past SESSION_COOKIE_AGE (no signal: the periodic check finds it), in the
                # database first: the cache still holds the session meanwhile, so no check
                # can see it ended yet. (The other way round, a check between the two
                # steps found the row still valid, and cached_db's load() raised writing
                # it back to the cache: an outage, rightly logged.)
                Session.objects.filter(session_key=browser.session.session_key).update(
                    expire_date=timezone.now() - datetime.timedelta(days=1)
                )
                redis_server.stop()
                assert ws.wait_closed(WAIT) == users.REVOKED
        finally:
            assert users._checker.wait_idle(WAIT)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
