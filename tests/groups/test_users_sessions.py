"""The session check (``dwebsocket.users``) on Django's other session engines, on a real
server: a store that cannot be read revokes nothing (docs/users.rst), a session that
ended still closes its sockets.

Django's file engine reads a session file it cannot open -- whatever the reason -- as an
empty session: a session directory gone (a mount that went away, a directory replaced)
looked like every session had ended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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


def file_sessions_in(directory: Path) -> contextlib.ExitStack:
    """This process's sessions: the file engine's, in ``directory``, which no check of
    this process has read yet."""
    stack = contextlib.ExitStack()
    stack.enter_context(override_settings(SESSION_ENGINE="django.contrib.sessions.backends.file"))
    stack.enter_context(
        unittest.mock.patch.object(FileStore, "_storage_path", str(directory), create=True)
    )
    stack.enter_context(unittest.mock.patch.object(users, "_sessions_directory", None))
    return stack


def test_a_session_file_that_cannot_be_read_is_an_outage_a_missing_one_ended(
    tmp_path: Path,
) -> None:
    """What makes :func:`users.session_is_valid` raise (the store cannot be read) or
    answer False (the session ended) with the file engine, as root too (no chmod)."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / f"sessionid{'b' * 32}").write_text("")  # another session: the store
    with file_sessions_in(sessions):
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
        shutil.rmtree(sessions)
        with pytest.raises(FileNotFoundError):
            users.session_is_valid(key, "1")
        sessions.write_text("")
        with pytest.raises(NotADirectoryError):
            users.session_is_valid(key, "1")


def saved_session(**data: object) -> str:
    """A new session of the file engine holding ``data``: its key."""
    store = FileStore()
    store.update(data)
    store.save(must_create=True)
    assert store.session_key is not None
    return store.session_key


def test_an_expired_or_garbled_session_file_ends_its_session_and_leaves_no_new_one(
    tmp_path: Path,
) -> None:
    """Django's file engine, reading an expired session, makes a new empty session in its
    place (``load()`` calls ``create()``): each check of such a session wrote a session
    file of a random key, there for ``SESSION_COOKIE_AGE`` (two weeks) until
    ``clearsessions``. The check answers False and writes nothing; the expired file is
    removed, as Django's own read would. A garbled file ends its session too, and stays."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    with file_sessions_in(sessions):
        expired = saved_session(_auth_user_id="1")
        store = FileStore(expired)
        store.load()
        store.set_expiry(-1)
        store.save()
        garbled = saved_session(_auth_user_id="1")
        (sessions / f"sessionid{garbled}").write_text("not a session")
        assert users.session_is_valid(expired, "1") is False
        assert users.session_is_valid(garbled, "1") is False
        assert sorted(p.name for p in sessions.iterdir()) == [f"sessionid{garbled}"]


def test_a_missing_session_file_has_ended_only_in_the_directory_that_holds_the_sessions(
    tmp_path: Path,
) -> None:
    """What :func:`users.session_is_valid` makes of a missing file with the file engine:
    in a directory where no session has been read yet, an ended session only if the
    directory holds some session file (an empty mount point holds none); then only in
    the very directory (device and inode) a session was last read from -- and never in
    one that is no longer a mount point where the sessions were read from one.

    A test cannot mount a volume here: the directory is replaced instead (a new inode),
    and ``os.path.ismount`` is told that the first one was a mount point."""
    sessions, gone = tmp_path / "sessions", "a" * 32
    sessions.mkdir()
    with file_sessions_in(sessions):
        with pytest.raises(users._NotTheStore, match="holds no session file"):
            users.session_is_valid(gone, "1")  # an empty directory, never read
        read = saved_session(seen=True)
        assert users.session_is_valid(gone, "1") is False  # it holds sessions: ended
        assert users.session_is_valid(read, "1") is False  # names no user, but was read
        assert users._sessions_directory is not None

        # Replaced: not the directory the sessions were read from, even once it holds one.
        sessions.rename(tmp_path / "old")
        sessions.mkdir()
        with pytest.raises(users._NotTheStore, match="not the directory sessions were read"):
            users.session_is_valid(gone, "1")
        since = saved_session(seen=True)
        with pytest.raises(users._NotTheStore):
            users.session_is_valid(gone, "1")
        # ...until a session is read there: it is the store now.
        assert users.session_is_valid(since, "1") is False
        assert users.session_is_valid(gone, "1") is False

        # A mount point, then not one (the volume went away, the empty directory under
        # it in its place): a session read there (a login since) does not make it the store.
        shutil.rmtree(sessions)
        (tmp_path / "old").rename(sessions)
        mount = str(sessions)
        real_ismount = os.path.ismount
        mounted = [True]
        with unittest.mock.patch.object(
            os.path, "ismount", lambda p: mounted[0] if str(p) == mount else real_ismount(p)
        ):
            assert users.session_is_valid(read, "1") is False
            assert users._sessions_directory is not None and users._sessions_directory[3]
            sessions.rename(tmp_path / "volume")
            sessions.mkdir()
            mounted[0] = False
            under = saved_session(seen=True)
            assert users.session_is_valid(under, "1") is False
            with pytest.raises(users._NotTheStore):
                users.session_is_valid(gone, "1")
            shutil.rmtree(sessions)
            (tmp_path / "volume").rename(sessions)
            mounted[0] = True
            assert users.session_is_valid(gone, "1") is False  # the volume is back


@pytest.mark.server
def test_a_session_directory_replaced_by_an_empty_one_revokes_nothing(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The session directory is replaced by an empty one, as a volume that is not
    mounted leaves its empty mount point in its place: every session file is missing at
    once, which is an outage (one WARNING), not every session ended. Once the directory
    is back, a session file deleted still ends its session.

    A real unmount (the device changes, not only the inode) cannot be made here; the
    rule compares both."""
    sessions, log, server, site = file_session_site(make_server, tmp_path)
    with site.stack:
        laptop, phone, anonymous = site.browser(), site.browser(), site.browser()
        key = laptop.login(server, "alice")
        phone.login(server, "alice")
        leaving, staying = laptop.tab(server), phone.tab(server)
        assert logged(log, "Session files are read from") == 1  # a periodic check ran

        volume = sessions.rename(tmp_path / "volume")
        sessions.mkdir()
        assert logged(log, "Could not read the session store") == 1
        assert logged(log, "still cannot be read", 2) >= 2
        anonymous.get(server, "/send/", username="alice", text="still open")
        assert leaving.recv(timeout=WAIT) == staying.recv(timeout=WAIT) == "still open"
        sessions.rmdir()
        volume.rename(sessions)
        assert logged(log, "can be read again") == 1

        (sessions / f"sessionid{key}").unlink()
        assert closed_with(leaving) == REVOKED
        nothing_for(staying)
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings
    assert "is not the directory sessions were read from" in warnings[0]


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
