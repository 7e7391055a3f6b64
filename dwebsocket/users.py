"""Users: reach every WebSocket of a user, close them, close the sockets of an ended session.

::

    dwebsocket.users.send(request.user, "you have mail")   # every tab, every process
    dwebsocket.users.disconnect(user_pk)                     # closes them all (4001)

A WebSocket opened by an authenticated request (Django's ``SessionMiddleware`` and
``AuthenticationMiddleware``) is known by its user and its session key: when it is
accepted it joins the reserved groups ``dwebsocket.user.<pk>`` and
``dwebsocket.session.<session key>`` -- no code in the view. So this works wherever
groups do: in one process (``memory://``) and across processes and machines (Redis).

Revocation (``WEBSOCKET_REVOKE_SESSIONS``, on by default): the sockets of a session that
stops being valid are closed with :data:`REVOKED` (4001):

* at once, in every process, on ``user_logged_out``, when a session row is deleted
  (``session.flush()``, ``cycle_key()``, ``clearsessions``, an admin deleting it: once
  the transaction commits), and when the user is saved (a changed password: each
  process checks that user's sockets once the transaction commits);
* a socket whose session ended while it was opening (after the request was
  authenticated, before the socket joined its session's group, so that no command found
  it): once it has joined, it looks for the commands its groups got since its request
  began (the layer keeps them ``control.MEMORY`` seconds) and does what they said -- so
  does a socket of a user disconnected meanwhile;
* otherwise at the next periodic check: every ``WEBSOCKET_SESSION_CHECK_INTERVAL``
  seconds (60 by default) each process checks the sessions of its authenticated sockets
  as ``django.contrib.auth.get_user`` would (the session exists and has not expired, it
  names the same user through a configured backend, the user still exists and may log
  in, the password hash in the session still matches). That covers what sends no
  signal: a session in the cache that was flushed, one past ``SESSION_COOKIE_AGE``.

A socket belongs to the session key it was opened with: when Django gives the session a
new key (``login()`` again, ``update_session_auth_hash``) the old key's sockets close
too; the browser reconnects with the new cookie.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dwebsocket import groups
from dwebsocket.conf import SESSION_CHECK_INTERVAL
from dwebsocket.exceptions import GroupsUnavailable, InvalidSetting
from dwebsocket.groups import control
from dwebsocket.protocol.frames import encode_close_payload
from dwebsocket.websocket import REQUEST_STARTED

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.http import HttpRequest

    from dwebsocket.groups.memory import Member
    from dwebsocket.typing import BytesLike
    from dwebsocket.websocket import WebSocket

__all__ = [
    "REVOKED",
    "asend",
    "disconnect",
    "disconnect_session",
    "send",
    "session_group",
    "user_group",
]

logger = logging.getLogger("dwebsocket.users")

#: The close code of a socket whose session ended or whose user was disconnected.
REVOKED = 4001

#: Seconds the check of newly opened sockets waits for more of them before it ends and
#: closes its database connections.
LINGER = 1.0

#: Seconds a check waits for one session lookup. A store that hangs (NFS, a database
#: without a timeout) is then an outage: nothing revoked, one WARNING.
LOOKUP_TIMEOUT = 5.0

_T = TypeVar("_T")

_USER_PREFIX = "dwebsocket.user."
#: The key of :func:`_request_started`'s stamp in a WSGI environ or an ASGI scope.
_STARTED = "dwebsocket.started"
_SESSION_PREFIX = "dwebsocket.session."


def _pk(user: Any) -> str:
    """The primary key of ``user`` (a user object or a pk), as a string: as the user's
    sockets name it when they join (``str(user.pk)``, :func:`_authenticated`). A pk given
    alone is read by the user model's pk field first, as Django reads the session's
    (``"007"`` is user 7, a UUID in capitals or without dashes the same UUID); raises
    ``ValueError`` for one the field cannot hold (it would name a group nobody is in)."""
    if user is None:
        raise TypeError("user is a user object or its primary key, not None")
    if hasattr(user, "pk"):
        if user.pk is None:
            raise ValueError("this user has no primary key (anonymous, or not saved)")
        return str(user.pk)
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ImproperlyConfigured, ValidationError

    try:
        field = get_user_model()._meta.pk
    except ImproperlyConfigured:  # no user model: no field to read it by
        return str(user)
    try:
        return str(field.to_python(user))
    except ValidationError as exc:
        raise ValueError(
            f"{user!r} is not a primary key of {field.model._meta.label} "
            f"({field.__class__.__name__}): {' '.join(exc.messages)}"
        ) from exc


def user_group(user: Any) -> str:
    """The reserved group every WebSocket of ``user`` (object or pk) is in."""
    return _USER_PREFIX + _pk(user)


def session_group(session_key: str) -> str:
    """The reserved group of the WebSockets opened with session ``session_key``."""
    return _SESSION_PREFIX + session_key


def send(user: AbstractBaseUser | Any, message: str | BytesLike) -> None:
    """Send ``message`` to every open WebSocket of ``user`` (a user object or its primary
    key), in every process. Returns nothing; blocks as :func:`dwebsocket.groups.send` does
    (never on a socket). If Redis is unreachable the sockets in this process still get it
    and one WARNING per outage is logged. Raises what :func:`dwebsocket.groups.send`
    raises for a message it cannot send (``TypeError``, ``UnicodeEncodeError``), and
    ``ValueError`` for a pk the user model's primary key cannot hold."""
    groups.send(user_group(user), message)


async def asend(user: AbstractBaseUser | Any, message: str | BytesLike) -> None:
    """:func:`send` for ``async`` code (it runs in a worker thread)."""
    from asgiref.sync import sync_to_async

    await sync_to_async(send, thread_sensitive=False)(user, message)


def disconnect(
    user: AbstractBaseUser | Any,
    code: int = REVOKED,
    reason: str = "",
    *,
    fail_silently: bool = True,
) -> None:
    """Close every open WebSocket of ``user`` (object or pk), in every process, with
    ``code`` and ``reason``. Returns at once: each socket runs its closing handshake in
    the background. Raises ``ValueError`` for a code that may not be sent (RFC 6455 7.4:
    1000, 1001, 1003, 1007-1014, 3000-4999) or a reason over 123 bytes of UTF-8, and
    ``TypeError`` for a code that is not an int or a reason that is not a str (and
    ``ValueError`` for a pk the user model's primary key cannot hold, as :func:`send`).

    If the groups layer cannot reach the other processes, this process's sockets are
    closed all the same and a WARNING says the others were not; with
    ``fail_silently=False``, :class:`GroupsUnavailable` is raised instead of the warning."""
    _check_close(code, reason)
    _close_group(user_group(user), f"user {_pk(user)}", code, reason, fail_silently)


def disconnect_session(
    session_key: str, code: int = REVOKED, reason: str = "", *, fail_silently: bool = True
) -> None:
    """Close every open WebSocket opened with session ``session_key``, everywhere (as
    :func:`disconnect`; where the command cannot go, the periodic check closes the
    session's sockets once the session has ended)."""
    _check_close(code, reason)
    _close_group(session_group(session_key), "a session", code, reason, fail_silently)


def _disconnect_sessions(session_keys: list[str], code: int, reason: str) -> None:
    """:func:`disconnect_session` of each of ``session_keys``, their commands sent
    together (:meth:`~dwebsocket.groups.redis.RedisLayer.control_many`); one WARNING if
    the other processes were not told."""
    groups_ = [session_group(key) for key in session_keys]
    whose = f"{len(session_keys)} sessions" if len(session_keys) > 1 else "a session"
    _close_groups(groups_, whose, code, reason, True)


def _close_group(
    group: str, whose: str, code: int, reason: str, fail_silently: bool, ends: bool = False
) -> None:
    _close_groups([group], whose, code, reason, fail_silently, ends)


def _close_groups(
    groups_: list[str],
    whose: str,
    code: int,
    reason: str,
    fail_silently: bool,
    ends: bool = False,
) -> None:
    """Close the sockets of ``groups_`` everywhere. ``ends``: the session whose group it
    is ends just after (a logout), so a socket of it opening after the command is closed
    too (see :meth:`_Checker._missed`)."""
    arguments: dict[str, Any] = {"ends": True} if ends else {}
    payload = control.encode("close", code=code, reason=reason, **arguments)
    try:
        get_layer().control_many(groups_, payload, fail_silently=False)
    except GroupsUnavailable as exc:
        if not fail_silently:
            raise
        # Not the groups layer's one warning per outage: each disconnect that does not
        # reach every process leaves sockets open that were meant to close.
        logger.warning(
            "disconnecting %s closed this process's sockets only: the other processes "
            "were not told (%s)",
            whose,
            exc,
        )


def get_layer() -> groups.Layer:
    groups._connect_signal()  # members leave their groups on close, as for groups.join
    return groups.get_layer()


def _check_close(code: int, reason: str) -> None:
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"close codes are int, not {type(code).__name__}")
    if not (code in (1000, 1001, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4)")
    encode_close_payload(code, reason)  # the reason's rules: a str, at most 123 bytes


# -- which socket is whose -------------------------------------------------------------


@dataclass
class _Owner:
    """Who opened a socket: the user's pk (as Django keeps it in the session) and the
    session key; when its request began (``time.monotonic()``: see :func:`_started`);
    whether the user is an instance of the user model (one made from a token's claims is
    not, and may be in no database here: without a session, nothing checks it)."""

    user: str
    session_key: str | None
    started: float = 0.0
    stored: bool = True


_lock = threading.Lock()
_owners: dict[int, tuple[WebSocket, _Owner]] = {}


def owner(websocket: Member, lookup: bool = False) -> _Owner | None:
    """Who opened ``websocket`` (None: anonymous, or not opened through a session). With
    ``lookup``, a socket not accepted yet is looked up in its request (which may query
    the database)."""
    entry = _owners.get(id(websocket))
    if entry is not None and entry[0] is websocket:
        return entry[1]
    request = getattr(websocket, "request", None) if lookup else None
    return _authenticated(request) if request is not None else None


def _opened(
    sender: Any, request: HttpRequest | None = None, websocket: Any = None, **kwargs: Any
) -> None:
    """``websocket_opened``: join the user's and the session's groups."""
    if websocket is None or request is None:
        return
    found = _authenticated(request)
    if found is None:
        return
    with _lock:
        _owners[id(websocket)] = (websocket, found)
    for name in _groups_of(found):
        groups._join_own(name, websocket)
    # A command sent between the request's authentication and these joins (a
    # revocation, a disconnect) found no socket of this one's: look for one -- also for
    # a user no session names (authenticated by a token), whom disconnect() reaches.
    _checker.soon(websocket)
    _checker.start()


def _authenticated(request: HttpRequest) -> _Owner | None:
    user = getattr(request, "user", None)
    if user is None:
        return None
    try:
        if not user.is_authenticated or user.pk is None:
            return None
    except Exception:  # a user that cannot be loaded here (no database, async context)
        logger.warning("WebSocket opened with an unreadable request.user", exc_info=True)
        return None
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if not (isinstance(key, str) and key and _names(session, user)):
        key = None
    return _Owner(str(user.pk), key, _started(request), _stored(user))


def _stored(user: Any) -> bool:
    """Whether ``user`` is an instance of the user model (read from its database)."""
    from django.contrib.auth import get_user_model

    try:
        return isinstance(user, get_user_model())
    except Exception:  # no user model (reported by Django's own checks)
        return False


def _names(session: Any, user: Any) -> bool:
    """Whether ``session`` logs ``user`` in. A user authenticated otherwise (a token) may
    come with a session that is anonymous or another user's: its end is not theirs, and
    the checks, finding no such user in it, would close their sockets. A session that
    cannot be read here counts as theirs (the checks then decide)."""
    from django.contrib.auth import SESSION_KEY, get_user_model

    try:
        named = session.get(SESSION_KEY)
        if named is None:
            return False
        return str(get_user_model()._meta.pk.to_python(named)) == str(user.pk)
    except Exception:
        logger.debug("Could not read the session of a WebSocket's user", exc_info=True)
        return True


def _started(request: HttpRequest) -> float:
    """When ``request`` began (``time.monotonic()``): as ``request_started`` saw it if
    :func:`_request_started` stamped it, else as dwebsocket's view wrapper saw it
    (``REQUEST_STARTED``), else now."""
    for stamp in (
        request.META.get(_STARTED),
        (getattr(request, "scope", None) or {}).get(_STARTED),
        getattr(request, REQUEST_STARTED, None),
    ):
        if isinstance(stamp, float):
            return stamp
    return time.monotonic()


def _request_started(
    sender: Any,
    environ: dict[str, Any] | None = None,
    scope: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """``request_started``: stamp a WebSocket request's environ (WSGI) or scope (ASGI)
    with the time, before any middleware runs. A socket looks for the commands its groups
    got since then: ``REQUEST_STARTED``, taken as the view is called, comes after the
    middleware that authenticated the request, and a logout landing in between was taken
    for one the authentication had seen."""
    if environ is not None:
        if "websocket" in str(environ.get("HTTP_UPGRADE", "")).lower():
            environ[_STARTED] = time.monotonic()
    elif scope is not None and scope.get("type") == "websocket":
        scope[_STARTED] = time.monotonic()


def _closed(sender: Any, websocket: Any = None, **kwargs: Any) -> None:
    with _lock:
        entry = _owners.get(id(websocket))
        if entry is not None and entry[0] is websocket:
            del _owners[id(websocket)]


# -- closing -----------------------------------------------------------------------------


def _spawn(target: Any, *args: Any) -> None:
    from dwebsocket.backends.default.registry import spawn

    spawn(target, *args)


def _close(websocket: Member, code: int, reason: str) -> None:
    try:
        websocket.close(code, reason)  # type: ignore[attr-defined]
    except Exception as exc:
        logger.debug("Closing %r with %d failed: %r", websocket, code, exc)


def _on_close(group: str, members: list[Member], command: dict[str, Any]) -> None:
    """Command ``close``: close the local members with the given code (in the background:
    a close handshake waits for the peer)."""
    code, reason = command.get("code", REVOKED), command.get("reason", "")
    if not isinstance(code, int) or not isinstance(reason, str):
        return
    logger.info("Closing %d WebSocket(s) of %s with %d", len(members), group, code)
    for member in members:
        _spawn(_close, member, code, reason)


def _on_check(group: str, members: list[Member], command: dict[str, Any]) -> None:
    """Command ``check``: check the sessions of these members now (in the background: it
    queries the session store and the database)."""
    if members:
        _spawn(_checker.check, members)


def _on_missed(registry: Any, names: list[str], within: float) -> None:
    """The commands of ``names`` in the last ``within`` seconds may have reached no
    socket here (the Redis subscription was lost meanwhile): each socket of ours in them
    looks for what it missed, as one that just opened does, over that time (or since its
    request began, if later)."""
    seen: set[int] = set()
    for name in names:
        if not name.startswith((_USER_PREFIX, _SESSION_PREFIX)):
            continue
        for member in registry.members(name):
            if id(member) not in seen and owner(member) is not None:
                seen.add(id(member))
                _checker.soon(member, within)


control.register("close", _on_close)
control.register("check", _on_check)
control.on_missed(_on_missed)


# -- validity of a session ----------------------------------------------------------------


def session_is_valid(session_key: str, user: str) -> bool:
    """Whether session ``session_key`` still authenticates user ``user`` (its pk as a str),
    as ``django.contrib.auth.get_user`` would decide -- without flushing anything.
    Blocks on the session store and the database; raises what they raise when they
    cannot be read (the cache engine included, which ``get_user`` would read as logged
    out)."""
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
        load_backend,
    )
    from django.contrib.sessions.backends.file import SessionStore as FileStore
    from django.core.exceptions import ValidationError
    from django.utils.crypto import constant_time_compare

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # Before the read: had the directory changed in between, it is the old one that is
    # taken for the store, and a file missing from the new one is an outage.
    directory = None
    if isinstance(store, FileStore):
        directory = _directory(store.storage_path)
        # Its load() puts a new empty session (a file of a random key) in the place of an
        # expired one, for the request it thinks it serves: there is none here.
        store.create = lambda: None  # type: ignore[method-assign]
    data = store.load()
    if not data:
        _confirm_ended(store, session_key)
        return False
    if directory is not None:
        _read_sessions_in(directory)
    if SESSION_KEY not in data:
        return False
    # As get_user() hands it to the backend (an int for an AutoField), not as a str.
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
    except ValidationError:
        return False  # names no user
    if str(user_id) != user:
        return False
    backend_path = data.get(BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    found = load_backend(backend_path).get_user(user_id)
    if found is None:
        return False
    if not hasattr(found, "get_session_auth_hash"):
        return True
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return False
    if constant_time_compare(session_hash, found.get_session_auth_hash()):
        return True
    # SECRET_KEY_FALLBACKS (Django >= 4.1), as get_user() accepts them.
    fallbacks = getattr(found, "get_session_auth_fallback_hash", lambda: ())
    return any(constant_time_compare(session_hash, fallback) for fallback in fallbacks())


def _user_is_valid(user: str) -> bool:
    """Whether user ``user`` (its pk as a str), authenticated without a session (a
    token), may still be: they exist and are active (``is_active``, which Django's
    ``ModelBackend`` and the token schemes read). Blocks on the database; raises what it
    raises."""
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    model = get_user_model()
    try:
        user_id = model._meta.pk.to_python(user)
    except ValidationError:
        return False
    found = model._default_manager.filter(pk=user_id).first()
    return found is not None and getattr(found, "is_active", True) is not False


def _confirm_ended(store: Any, session_key: str) -> None:
    """Raise if ``store``, whose ``load()`` answered an empty session, may only have
    failed to read it: Django's cache and file engines swallow their errors there."""
    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
    from django.contrib.sessions.backends.file import SessionStore as FileStore

    if isinstance(store, DatabaseStore):
        # Its load() raises what the database raises. cached_db's reads the database
        # when the cache cannot answer, whose exists() would ask that cache again.
        return
    if not isinstance(store, FileStore):
        store.exists(session_key)  # the cache engine's raises for a cache out of reach
        return
    # A session file that cannot be opened or read (EACCES, EIO, a directory in its
    # place...) is a store that cannot be read; one that is not there has ended -- if
    # its directory is the store: a directory gone, replaced, or a volume not mounted
    # (its empty mount point in its place) is an outage.
    try:
        with open(store._key_to_file(session_key), "rb") as file:  # type: ignore[attr-defined]
            file.read()
        return
    except FileNotFoundError:
        pass
    path, device, inode, _ = _directory(store.storage_path)
    known = _sessions_directory
    if known is None or known[0] != path:
        # No session read there yet: a directory holding no session file at all (an
        # empty mount point) is not taken for a store whose every session ended.
        with os.scandir(path) as entries:
            if not any(entry.name.startswith(store.file_prefix) for entry in entries):
                raise _NotTheStore(f"{path} holds no session file (a volume not mounted?)")
    elif (device, inode) != known[1:3]:
        raise _NotTheStore(
            f"{path} is not the directory sessions were read from (device {known[1]}, "
            f"inode {known[2]}; now {device}, {inode}): a volume not mounted, a directory "
            "replaced?"
        )


class _NotTheStore(OSError):
    """Raised when the file engine's directory is not the one that holds the sessions."""


#: The file engine's directory as last found holding a session: its path, device and
#: inode, and whether it was a mount point.
_sessions_directory: tuple[str, int, int, bool] | None = None


def _directory(path: str) -> tuple[str, int, int, bool]:
    """``path``, its device and inode, and whether it is a mount point. Raises
    ``OSError`` if it cannot be read, ``NotADirectoryError`` if not a directory."""
    status = os.stat(path)
    if not stat.S_ISDIR(status.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return path, status.st_dev, status.st_ino, os.path.ismount(path)


def _read_sessions_in(directory: tuple[str, int, int, bool]) -> None:
    """A session was read from ``directory`` (:func:`_directory`): it is the store from
    now on -- unless the store was a mount point and this is not: the volume went away,
    and what is read meanwhile is a session written under it (a login since)."""
    global _sessions_directory
    known = _sessions_directory
    if known == directory:
        return
    if known is not None and known[0] == directory[0] and known[3] and not directory[3]:
        return
    _sessions_directory = directory
    logger.debug("Session files are read from %s (device %d, inode %d)", *directory[:3])


class _Overrun(Exception):
    """Raised by :meth:`_Lookups.call` when a lookup has not returned in time, or when
    the one that overran before still has not."""


class _Job(Generic[_T]):
    """One call for the lookup thread, and what it returned or raised."""

    def __init__(self, function: Callable[[], _T]) -> None:
        self.function = function
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, Exception):
                raise  # a kill: the thread ends (the next call starts another)
        finally:
            self.done.set()


class _Lookups:
    """The thread (a greenlet under gevent) that runs the checks' session lookups, so
    that a check can stop waiting for one that hangs. The hung one keeps the thread until
    it returns; meanwhile every call overruns at once instead of queueing behind it: no
    check, and no thread, piles up. Its database connections are its own (closed by
    :meth:`close_connections`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job[Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._hung: _Job[Any] | None = None  # overran, still running

    def call(self, function: Callable[[], _T], timeout: float = LOOKUP_TIMEOUT) -> _T:
        """``function()`` in the lookup thread: what it returns, or raises. Blocks up to
        ``timeout`` seconds, then raises :class:`_Overrun` (``function`` goes on); raises
        it at once while a call that overran has not returned."""
        with self._lock:
            if self._pid != os.getpid():  # forked: that thread and its queue are not ours
                self._pid, self._thread, self._hung = os.getpid(), None, None
                self._jobs = queue.Queue()
            hung = self._hung
            if hung is not None:
                waited = time.monotonic() - hung.started
                raise _Overrun(f"a session lookup has not answered for {waited:.0f} s")
            if self._thread is None or not self._thread.is_alive():
                self._start()
            job: _Job[_T] = _Job(function)
            self._jobs.put(job)
        if not job.done.wait(timeout):
            with self._lock:
                if not job.done.is_set():
                    self._hung = job
                    raise _Overrun(f"a session lookup got no answer within {timeout:g} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _start(self) -> None:
        """Start the lookup thread (under ``_lock``)."""
        self._thread = threading.Thread(
            target=self._run, name="dwebsocket-session-lookups", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            try:
                job.run()
            except BaseException:
                # A kill (its caller raises it: job.error): this thread ends. A job queued
                # meanwhile, seeing it still alive, gets another thread: it was left in
                # the queue, its caller overran, and every lookup after it overran at once
                # (the job taken for one that hangs) -- no session revoked by the checks
                # for the life of the process.
                with self._lock:
                    if self._thread is threading.current_thread():
                        self._thread = None
                        if not jobs.empty():
                            self._start()
                return
            finally:
                with self._lock:
                    if self._hung is job:
                        self._hung = None

    def close_connections(self) -> None:
        """Close the lookup thread's database connections (waits as :meth:`call`; not at
        all while a lookup hangs: that one's connection is in use)."""
        from dwebsocket.db import close_thread_connections

        with contextlib.suppress(_Overrun):
            self.call(close_thread_connections)


class _Checker:
    """The periodic check of this process's authenticated sockets (one thread -- a
    greenlet under gevent -- started at the first such socket)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._checking = threading.Lock()  # held by a check() in progress
        #: Sockets just opened (or that may have missed commands), for soon(): each with
        #: how far back to look (its request's start, or at most these seconds).
        self._pending: list[tuple[Member, float]] = []
        self._draining = False  # a _drain() runs (checking, or lingering for more)
        self._more = threading.Event()  # soon() gave a lingering _drain() more to check
        self._stop_lingering = False  # wait_idle(): a lingering _drain() ends now
        #: The sessions (key, user) whose last lookup failed (under _checking): the
        #: store counts as unreadable until none is left.
        self._failing: set[tuple[str | None, str]] = set()
        self._lookups = _Lookups()  # used under _checking
        self._last = 0.0  # monotonic time the last periodic check began (_run's thread)

    def start(self) -> None:
        """Start the periodic check, unless it runs: in this process (a fork has none),
        and alive (a killed one is started again, at the next socket opened)."""
        if self._running():
            return
        with self._lock:
            if self._running():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="dwebsocket-sessions", daemon=True
            )
            self._thread.start()

    def _running(self) -> bool:
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def _run(self) -> None:
        self._last = time.monotonic()  # when the last check began
        while True:
            # Whatever a round raises, the next one checks: a round that ended the thread
            # (a gevent or eventlet Timeout, SystemExit from code the store calls) ended
            # the checks for the life of the process. A kill of this thread (GreenletExit)
            # ends it: the next socket opened starts another (start()).
            try:
                self._round()
            except BaseException as exc:
                killed = any(cls.__name__ == "GreenletExit" for cls in type(exc).__mro__)
                _error_once(
                    _checker_errors,
                    "The periodic check of the WebSockets' sessions",
                    "it starts again with the next WebSocket opened"
                    if killed
                    else "it goes on at the next round",
                    exc,
                )
                if killed:
                    return
                time.sleep(1.0)  # a round that fails before its wait: not in a busy loop

    def _round(self) -> None:
        """Wait for the next round (a second at most, so that a changed interval applies
        soon), and check the open sockets if the interval since the last check is over
        (even if that one raised)."""
        from dwebsocket.conf import settings

        try:
            interval = settings.WEBSOCKET_SESSION_CHECK_INTERVAL
        except InvalidSetting as exc:  # reported by check dwebsocket.E031
            interval = SESSION_CHECK_INTERVAL.default
            if str(exc) not in _wrong_interval:
                _wrong_interval.add(str(exc))
                logger.error("%s: sessions are checked every %g s until it is fixed", exc, interval)
        time.sleep(1.0 if interval is None else min(interval, 1.0))
        if interval is None or time.monotonic() - self._last < interval:
            return
        self._last = time.monotonic()
        with _lock:
            for key, (websocket, _) in list(_owners.items()):
                if websocket.is_closed():  # its websocket_closed was missed
                    del _owners[key]
            open_sockets: list[Member] = [ws for ws, _ in _owners.values()]
        self.check(open_sockets)

    def soon(self, member: Member, within: float = float("inf")) -> None:
        """Check ``member``'s session in the background, with the others opened
        meanwhile (one check at a time, however many sockets open); never blocks. It looks
        for the commands its groups got since its request began, or in the last
        ``within`` seconds if that is shorter (it may have missed those only)."""
        with self._lock:
            self._pending.append((member, within))
            if self._draining:
                self._more.set()
                return
            self._draining = True
            self._stop_lingering = False
        _spawn(self._drain)

    def _drain(self) -> None:
        """Check what :meth:`soon` gathered until nothing is left, then linger up to
        :data:`LINGER` seconds for more, keeping this thread's database connections: while
        sockets keep opening, their checks reuse one connection instead of opening one
        each (a new server process per socket on PostgreSQL). Closes them when it ends."""
        try:
            while True:
                with self._lock:
                    batch, self._pending = self._pending, []
                    if not batch:
                        self._more.clear()
                if batch:
                    try:
                        self._opening(batch)
                    except Exception:  # pragma: no cover - the periodic check comes next
                        logger.exception("Checking the sessions of new WebSockets failed")
                    continue
                if not self._stop_lingering and self._more.wait(LINGER):
                    continue
                with self._lock:
                    if not self._pending:
                        self._draining = False
                        return
        except BaseException:
            # Killed (a greenlet kill, a timeout): the next soon() starts another drain.
            with self._lock:
                self._draining = False
            raise
        finally:
            with self._checking:
                self._lookups.close_connections()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the checks of sockets just opened to end
        (a test, before it empties the database the check reads; a lingering drain ends
        at once, its connections closed); whether none runs now."""
        deadline = time.monotonic() + timeout
        self._stop_lingering = True
        self._more.set()
        while self._draining:  # sockets just opened, whose check may not have begun
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        if not self._checking.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        self._checking.release()
        return True

    def _opening(self, members: list[tuple[Member, float]]) -> None:
        """What sockets that just joined their user's and session's groups missed while
        they opened, from the commands those groups got since each one's request began
        (the layer's ``recent_controls``: one round trip for them all on one Redis, no
        database): a close is done, a check command (a user saved) checks the session;
        so does a layer that cannot be read, or a socket that took longer than
        ``control.MEMORY`` to open."""
        # Ages as of before the read, the commands' as it ran: where the two clocks cannot
        # tell which came first (a command sent within the read's time, and Redis's
        # millisecond, of the request's start), it counts as sent after -- a socket that
        # a close was meant for is closed.
        now = time.monotonic()
        opened = [
            (member, found, min(now - found.started, within))
            for member, within in members
            if (found := owner(member)) is not None and not member.is_closed()
        ]
        names = list(
            dict.fromkeys(
                name
                for _, found, age in opened
                if age <= control.MEMORY
                for name in _groups_of(found)
            )
        )
        recent = dict(
            zip(names, get_layer().recent_controls_many(names, control.MEMORY), strict=True)
        )
        slack = time.monotonic() - now + 0.001
        to_check: list[Member] = []
        for member, found, age in opened:
            missed = self._missed(recent, found, age + slack)
            if isinstance(missed, tuple):
                logger.info(
                    "Closing a WebSocket of user %s sent %d while it opened", found.user, missed[0]
                )
                _spawn(_close, member, *missed)
            elif missed:
                to_check.append(member)
        if to_check:
            self.check(to_check, keep_connections=True)

    @staticmethod
    def _missed(
        recent: dict[str, list[tuple[bytes, float]] | None],
        found: _Owner,
        age: float,
    ) -> tuple[int, str] | bool:
        """For a socket at most ``age`` seconds after its request began: the ``(code,
        reason)`` of a close its groups got since, else whether its session must be
        checked. ``recent``: the commands of its groups (None, or missing: not read)."""
        if age > control.MEMORY:
            return True  # older commands are forgotten
        check = False
        for name in _groups_of(found):
            commands = recent.get(name)
            if commands is None:
                check = True
                continue
            for payload, ago in commands:
                try:
                    command = json.loads(payload)
                except ValueError:
                    continue
                op = command.get("op") if isinstance(command, dict) else None
                if ago > age and not (op == "close" and command.get("ends") is True):
                    # Surely before the request began: its authentication saw it -- unless
                    # the session ended only after the command (a logout: Django flushes
                    # it once user_logged_out's receivers have returned).
                    continue
                if op == "check":
                    check = True
                elif op == "close":
                    code, reason = command.get("code", REVOKED), command.get("reason", "")
                    if isinstance(code, int) and isinstance(reason, str):
                        return code, reason
        return check

    def check(self, members: list[Member], keep_connections: bool = False) -> None:
        """Close (4001) those of ``members`` whose session is no longer valid (for a
        socket no session names, whose user is deleted or inactive). Blocks on
        the session store and the database, up to :data:`LOOKUP_TIMEOUT` per session
        (one lookup each, in the lookup thread): a lookup that overruns is an outage. One
        check at a time (the periodic one, or one a signal started). Closes the lookups'
        database connections after, unless ``keep_connections`` (then only if a lookup
        failed: the next check gets a new one)."""
        if not _revoking():
            return
        with self._checking:
            try:
                self._check(members)
            finally:
                if not keep_connections or self._failing:
                    self._lookups.close_connections()

    def _verdict(self, key: tuple[str | None, str]) -> bool | None:
        """:func:`session_is_valid` of ``key`` (session key, user) -- :func:`_user_is_valid`
        for a socket no session names --, None when the store cannot be read (that
        revokes nothing). Logs one WARNING per outage of the store,
        not one per session and check: a database that went away would log for every
        socket, every minute."""
        session_key, user = key
        if session_key is None:  # authenticated otherwise (a token): their user only
            lookup = lambda: _user_is_valid(user)  # noqa: E731
        else:
            lookup = lambda: session_is_valid(session_key, user)  # noqa: E731
        try:
            valid = self._lookups.call(lookup)
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "Could not read the session store (%s): no WebSocket's session is "
                    "revoked by the checks until it can be read again",
                    exc,
                    exc_info=not isinstance(exc, _Overrun),  # its traceback says nothing
                )
            else:
                logger.debug("The session store still cannot be read: %r", exc)
            self._failing.add(key)
            return None
        self._failing.discard(key)
        return valid

    def _check(self, members: list[Member]) -> None:
        failing = bool(self._failing)
        verdicts: dict[tuple[str | None, str], bool | None] = {}
        for member in members:
            found = owner(member)
            if found is None or member.is_closed():
                continue
            if found.session_key is None and not found.stored:
                continue  # no session, a user of no database here: nothing to check
            key = (found.session_key, found.user)
            if key not in verdicts:
                verdicts[key] = self._verdict(key)
            if verdicts[key] is False and found.session_key is None:
                logger.info(
                    "User %s may no longer log in: closing their WebSocket (%d)",
                    found.user,
                    REVOKED,
                )
                _spawn(_close, member, REVOKED, "user inactive")
            elif verdicts[key] is False:
                logger.info(
                    "Session of user %s ended: closing its WebSocket (%d)", found.user, REVOKED
                )
                _spawn(_close, member, REVOKED, "session ended")
        if self._failing:
            # The outage ends once every session that could not be read has been read
            # (other checks read other sessions meanwhile) or has no open socket left.
            with _lock:
                live = {(o.session_key, o.user) for _, o in _owners.values()}
            self._failing &= live
        if failing and not self._failing:
            logger.info("The session store can be read again: the session checks resume")


def _groups_of(found: _Owner) -> list[str]:
    """The reserved groups a socket of ``found`` is in."""
    names = [_USER_PREFIX + found.user]
    if found.session_key:
        names.append(_SESSION_PREFIX + found.session_key)
    return names


_checker = _Checker()


# -- the signals ----------------------------------------------------------------------------


#: The wrong WEBSOCKET_REVOKE_SESSIONS values logged (see :func:`_revoking`), and the
#: wrong WEBSOCKET_SESSION_CHECK_INTERVAL ones (the periodic check).
_wrong_revoke: set[str] = set()
_wrong_interval: set[str] = set()


def _revoking() -> bool:
    """``WEBSOCKET_REVOKE_SESSIONS``; a wrong value revokes as True does, logged at ERROR
    once per value (check ``dwebsocket.E030`` reports it), as ``docs/settings.rst`` says.
    (The session check read it unguarded: each periodic check failed with a traceback and
    revoked nothing.)"""
    from dwebsocket.conf import settings

    try:
        return settings.WEBSOCKET_REVOKE_SESSIONS
    except InvalidSetting as exc:
        if str(exc) not in _wrong_revoke:
            _wrong_revoke.add(str(exc))
            logger.error("%s: sessions are revoked as with True until it is fixed", exc)
        return True


#: The errors :func:`_never_raising` logged at ERROR (the same again goes to DEBUG), and
#: those the periodic check's rounds raised (:meth:`_Checker._run`).
_receiver_errors: set[str] = set()
_checker_errors: set[str] = set()


def _error_once(seen: set[str], what: str, consequence: str, exc: BaseException) -> None:
    """Log that ``what`` failed with ``exc``, and its ``consequence``: at ERROR with the
    traceback the first time (per error, in ``seen``), then at DEBUG."""
    said = f"{type(exc).__name__}: {exc}"
    if said in seen:
        logger.debug("%s failed again: %s", what, said)
        return
    seen.add(said)
    logger.error(
        "%s failed: %s (%s); the same error again is logged at DEBUG",
        what,
        consequence,
        said,
        exc_info=exc,
    )


def _never_raising(what: str, revoke: Callable[[], None]) -> None:
    """``revoke()``, from a receiver that runs inside the application's logout, save or
    delete: what it raises (a groups layer that cannot be built: a wrong
    ``WEBSOCKET_GROUPS_URL``, redis-py missing) must not fail those -- a 500 for a logout,
    an error after a save's commit, ``clearsessions`` rolled back. Logged at ERROR once
    per error, then at DEBUG: the sockets meant to close stay open."""
    try:
        revoke()
    except Exception as exc:
        _error_once(_receiver_errors, what, "the sockets it should close stay open", exc)


def _logged_out(
    sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any
) -> None:
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key and _revoking():
        # Django flushes the session after this signal: a socket whose request begins
        # in between authenticates with it, so the command says the session ends.
        _never_raising(
            "Revoking a logged out session",
            lambda: _close_group(
                session_group(key), "a session", REVOKED, "logged out", True, ends=True
            ),
        )


@dataclass
class _Deletion:
    """The session rows one ``QuerySet.delete()`` deletes (``clearsessions``): how many
    pre_delete announced, the keys post_delete has given so far."""

    origin: object
    expected: int = 0
    keys: list[str] = field(default_factory=list)


class _Deletions(threading.local):
    def __init__(self) -> None:
        self.under_way: list[_Deletion] = []


_deletions = _Deletions()


def _session_deleting(sender: Any, instance: Any = None, origin: Any = None, **kwargs: Any) -> None:
    """pre_delete of a session row. Django's ``Collector.delete`` sends every row's
    pre_delete, deletes them, then sends every row's post_delete, in one thread: a
    ``QuerySet``'s rows (``origin``) are counted here, so that :func:`_session_deleted`
    sends their commands together once the last one is deleted (``clearsessions``: a few
    Redis commands in all rather than two per session). A row deleted by itself
    (``session.flush()``: ``origin`` is the row) is revoked at its post_delete alone."""
    if origin is None or origin is instance:
        return
    under_way = _deletions.under_way
    deletion = next((d for d in under_way if d.origin is origin), None)
    if deletion is None:
        if len(under_way) >= 8:  # left by deletes that failed between the two signals
            del under_way[0]
        deletion = _Deletion(origin)
        under_way.append(deletion)
    deletion.expected += 1


def _session_deleted(sender: Any, instance: Any = None, origin: Any = None, **kwargs: Any) -> None:
    under_way = _deletions.under_way
    deletion = next((d for d in under_way if d.origin is origin), None) if under_way else None
    if deletion is None:
        keys = [instance.session_key]
    else:
        deletion.keys.append(instance.session_key)
        if len(deletion.keys) < deletion.expected:
            return  # not the last row of the delete
        under_way.remove(deletion)
        keys = deletion.keys
    if _revoking():
        _revoke_once_committed(keys, kwargs.get("using"))


def _revoke_once_committed(keys: list[str], using: str | None) -> None:
    """Close the sockets of sessions ``keys``, deleted in database ``using``, once that
    transaction commits: rolled back, the sessions go on; and a socket opening meanwhile
    (its request read a row still there) begins before the command, which it then finds
    (:meth:`_Checker._opening`). Sent at the delete, the command closed the sockets of
    sessions that a rollback kept, and came before that socket's request: it stayed
    open with a session that had ended."""

    def revoke() -> None:
        _disconnect_sessions(keys, REVOKED, "session ended")

    what = "Revoking a deleted session" if len(keys) == 1 else f"Revoking {len(keys)} sessions"
    _once_committed(lambda: _never_raising(what, revoke), using)


def _user_saved(
    sender: Any,
    instance: Any = None,
    created: bool = False,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    if created or instance is None or instance.pk is None:
        return
    if update_fields is not None and not _may_change_checks(sender, set(update_fields)):
        return  # login() saves last_login so: a check per login, for nothing
    _check_once_committed(instance, kwargs.get("using"))


def _may_change_checks(model: Any, fields: set[str]) -> bool:
    """Whether saving ``fields`` of a user of ``model`` may change what the checks decide
    (:func:`session_is_valid`, :func:`_user_is_valid`): they read whether the user exists
    and may log in (``is_active``) and the session's hash (of the password). Django's own
    user model and backends read no other field; a session hash, a default manager, a
    backend's ``get_user`` or ``user_can_authenticate``, or an ``is_active`` of the
    site's own may read any, and so may any save then (``last_login`` aside: only
    ``login()`` saves it alone, and Django's own ``get_user`` ignores it)."""
    from django.conf import settings
    from django.contrib.auth import load_backend
    from django.contrib.auth.backends import AllowAllUsersModelBackend, ModelBackend
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.db.models.manager import BaseManager
    from django.db.models.query_utils import DeferredAttribute

    if fields <= {"last_login"}:
        return False
    if fields & {"password", "is_active"}:
        return True
    is_active = inspect.getattr_static(model, "is_active", True)
    if (
        getattr(model, "get_session_auth_hash", None) is not AbstractBaseUser.get_session_auth_hash
        or type(model._default_manager).get_queryset is not BaseManager.get_queryset
        or not isinstance(is_active, (bool, DeferredAttribute))
    ):
        return True
    own = (ModelBackend.user_can_authenticate, AllowAllUsersModelBackend.user_can_authenticate)
    for path in settings.AUTHENTICATION_BACKENDS:
        try:
            backend = type(load_backend(path))
        except Exception:  # reported by Django at the next login; not into this save
            return True
        if backend.get_user is not ModelBackend.get_user:
            return True
        if getattr(backend, "user_can_authenticate", None) not in own:
            return True
    return False


def _user_deleted(sender: Any, instance: Any = None, **kwargs: Any) -> None:
    """A user deleted: no session names them any more (nothing deletes the sessions)."""
    if instance is not None and instance.pk is not None:
        _check_once_committed(instance, kwargs.get("using"))


def _check_once_committed(user: Any, using: str | None) -> None:
    """Every process checks ``user``'s sockets, once the transaction of database
    ``using`` (the one the user was written to; None: ``default``) commits."""
    if not _revoking():
        return
    group = user_group(user)

    def check() -> None:
        get_layer().control(group, control.encode("check"))

    # Once committed: other processes must read the new password hash (or find no user).
    _once_committed(lambda: _never_raising(f"Checking the sockets of {group}", check), using)


def _once_committed(callback: Callable[[], None], using: str | None) -> None:
    """``transaction.on_commit(callback, using)``; ``callback()`` now under manual
    transaction management (``set_autocommit(False)``), which ``on_commit`` refuses with
    an error that must not go into the application's save or delete: there is no commit
    to wait for."""
    from django.db import transaction

    try:
        transaction.on_commit(callback, using)
    except transaction.TransactionManagementError:
        callback()


def connect_signals() -> None:
    """Connect the receivers (``AppConfig.ready`` calls this)."""
    from django.apps import apps
    from django.conf import settings
    from django.core.signals import request_started
    from django.db.models.signals import post_delete, post_save, pre_delete

    from dwebsocket.signals import websocket_closed, websocket_opened

    request_started.connect(_request_started, dispatch_uid="dwebsocket.users")
    websocket_opened.connect(_opened, dispatch_uid="dwebsocket.users")
    websocket_closed.connect(_closed, dispatch_uid="dwebsocket.users")
    if apps.is_installed("django.contrib.auth"):
        from django.contrib.auth.signals import user_logged_out

        user_logged_out.connect(_logged_out, dispatch_uid="dwebsocket.users")
        try:
            user_model = apps.get_model(settings.AUTH_USER_MODEL, require_ready=False)
        except (LookupError, ValueError):  # reported by Django's own checks
            user_model = None
        # Its proxies and subclasses too: Django sends their saves and deletes with their
        # own class as sender (a proxy "Staff" model with its own admin, say).
        for model in apps.get_models():
            if user_model is not None and issubclass(model, user_model):
                uid = f"dwebsocket.users.user.{model._meta.label}"
                post_save.connect(_user_saved, sender=model, dispatch_uid=uid)
                post_delete.connect(_user_deleted, sender=model, dispatch_uid=uid)
    # Every session model, django.contrib.sessions installed or not: a site's own
    # (AbstractBaseSession, which Django lets it import without that app) may replace it.
    from django.contrib.sessions.base_session import AbstractBaseSession

    for model in apps.get_models():
        if issubclass(model, AbstractBaseSession):
            pre_delete.connect(
                _session_deleting,
                sender=model,
                dispatch_uid=f"dwebsocket.users.{model._meta.label}",
            )
            post_delete.connect(
                _session_deleted,
                sender=model,
                dispatch_uid=f"dwebsocket.users.{model._meta.label}",
            )
