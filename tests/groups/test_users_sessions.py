"""The session check (``dwebsocket.users``) on Django's other session engines, on a real
server: a store that cannot be read revokes nothing (docs/users.rst), a session that
ended still closes its sockets.

Django's file engine reads a session file it cannot open -- whatever the reason -- as an
empty session: a session directory gone (a mount that went away, a directory replaced)
looked like every session had ended.
"""

from __future__ import annotations

import time
import unittest.mock
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.sessions.backends.file import SessionStore as FileStore
from django.test import override_settings

from dwebsocket import users
from tests.groups.test_users_servers import (
    REVOKED,
    WAIT,
    Site,
    closed_with,
    create_site,
    nothing_for,
    site_settings,
)
from tests.servers import ServerProcess


def logging_to(path: Path) -> dict[str, Any]:
    """``LOGGING``: dwebsocket.users, DEBUG and up, to ``path`` only (its one WARNING
    has a traceback, which the server's own log may not show)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}
        },
        "loggers": {
            "dwebsocket.users": {"handlers": ["file"], "level": "DEBUG", "propagate": False}
        },
    }


def logged(path: Path, text: str, count: int = 1) -> int:
    """Wait up to WAIT for ``count`` lines of ``path`` containing ``text``; how many."""
    deadline = time.monotonic() + WAIT
    while True:
        found = sum(text in line for line in path.read_text().splitlines()) if path.exists() else 0
        if found >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def file_session_site(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> tuple[Path, Path, ServerProcess, Site]:
    """A gevent server of the site with the file session engine: its session directory,
    its users log, the server and the site."""
    sessions, log = tmp_path / "sessions", tmp_path / "users.log"
    sessions.mkdir()
    settings = {
        **site_settings(tmp_path / "site.sqlite3", "memory://"),
        "SESSION_ENGINE": "django.contrib.sessions.backends.file",
        "SESSION_FILE_PATH": str(sessions),
        "LOGGING": logging_to(log),
    }
    create_site(settings)
    server = make_server("gevent", settings=settings)
    return sessions, log, server, Site([server], tmp_path / "site.sqlite3")


@pytest.mark.server
def test_an_unreadable_session_directory_revokes_nothing_a_deleted_file_does(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    sessions, log, server, site = file_session_site(make_server, tmp_path)
    with site.stack:
        laptop, phone, anonymous = site.browser(), site.browser(), site.browser()
        key = laptop.login(server, "alice")
        phone.login(server, "alice")
        leaving, staying = laptop.tab(server), phone.tab(server)

        # The directory goes away (a mount gone), then a file stands in its place.
        away = sessions.rename(tmp_path / "away")
        assert logged(log, "Could not read the session store") == 1
        assert logged(log, "still cannot be read") >= 1
        sessions.write_text("not a directory")
        assert logged(log, "NotADirectoryError", 2) >= 2
        anonymous.get(server, "/send/", username="alice", text="still open")
        assert leaving.recv(timeout=WAIT) == staying.recv(timeout=WAIT) == "still open"
        sessions.unlink()
        away.rename(sessions)
        assert logged(log, "can be read again") == 1

        # A session file deleted (a logout elsewhere, clearsessions): that session ended.
        (sessions / f"sessionid{key}").unlink()
        assert closed_with(leaving) == REVOKED
        nothing_for(staying)
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings


def test_a_session_file_that_cannot_be_read_is_an_outage_a_missing_one_ended(
    tmp_path: Path,
) -> None:
    """What makes :func:`users.session_is_valid` raise (the store cannot be read) or
    answer False (the session ended) with the file engine, as root too (no chmod)."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    with (
        override_settings(SESSION_ENGINE="django.contrib.sessions.backends.file"),
        unittest.mock.patch.object(FileStore, "_storage_path", str(sessions), create=True),
    ):
        key = "a" * 32
        path = sessions / f"sessionid{key}"
        assert users.session_is_valid(key, "1") is False  # no such file: ended
        path.write_text("")
        assert users.session_is_valid(key, "1") is False  # empty: ended
        path.unlink()
        path.mkdir()
        with pytest.raises(IsADirectoryError):
            users.session_is_valid(key, "1")
        path.rmdir()
        sessions.rmdir()
        with pytest.raises(FileNotFoundError):
            users.session_is_valid(key, "1")
        sessions.write_text("")
        with pytest.raises(NotADirectoryError):
            users.session_is_valid(key, "1")


@pytest.mark.server
def test_a_session_database_that_went_away_revokes_nothing(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The db engine: its load() raises what the database raises (SQLite: a directory
    where the database file was), an outage; once back, an expired session still ends."""
    db, log = tmp_path / "site.sqlite3", tmp_path / "users.log"
    settings = {**site_settings(db, "memory://"), "LOGGING": logging_to(log)}
    create_site(settings)
    server = make_server("gevent", settings=settings)
    site = Site([server], db)
    with site.stack:
        laptop, phone = site.browser(), site.browser()
        key = laptop.login(server, "alice")
        phone.login(server, "alice")
        leaving, staying = laptop.tab(server), phone.tab(server)

        away = db.rename(tmp_path / "away.sqlite3")
        db.mkdir()
        assert logged(log, "Could not read the session store") == 1
        assert logged(log, "still cannot be read", 2) >= 2
        nothing_for(leaving)
        nothing_for(staying)
        db.rmdir()
        away.rename(db)
        assert logged(log, "can be read again") == 1

        site.expire(key)
        assert closed_with(leaving) == REVOKED
        nothing_for(staying)
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings


@pytest.mark.server
def test_one_session_file_that_cannot_be_read_is_one_warning_while_the_others_are_checked(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """One session's file cannot be read (a directory in its place), the others can: one
    WARNING for as long as it lasts, not one for each check (the others read in between
    are no end of the outage), and the other sessions still end."""
    sessions, log, server, site = file_session_site(make_server, tmp_path)
    with site.stack:
        laptop, phone = site.browser(), site.browser()
        key, unreadable = laptop.login(server, "alice"), phone.login(server, "alice")
        leaving, staying = laptop.tab(server), phone.tab(server)
        bobs = site.browser()
        bobs.login(server, "bob")
        bob = bobs.tab(server)

        path = sessions / f"sessionid{unreadable}"
        content = path.read_bytes()
        path.unlink()
        path.mkdir()
        assert logged(log, "still cannot be read", 3) >= 3
        # A check of some sessions only (a user saved) reads them: the outage goes on.
        laptop.get(server, "/password/", username="bob", password="bob's new one")
        assert closed_with(bob) == REVOKED
        assert logged(log, "still cannot be read", 6) >= 6
        (sessions / f"sessionid{key}").unlink()
        assert closed_with(leaving) == REVOKED
        nothing_for(staying)
        path.rmdir()
        path.write_bytes(content)
        assert logged(log, "can be read again") == 1
        nothing_for(staying)
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings
