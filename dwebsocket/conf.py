"""Every ``WEBSOCKET_*`` setting: its default, its type and range, a typed property to read it.

As in django-cors-headers: ``settings.WEBSOCKET_MAX_MESSAGE_SIZE`` reads Django's setting
at each access (nothing is cached, so ``override_settings`` just works) and returns it as
its type. A value of the wrong type or out of range raises
:class:`~dwebsocket.exceptions.InvalidSetting` when read, naming the system check
(``dwebsocket.E0xx``, :mod:`dwebsocket.checks`) that ``manage.py check`` reports it with;
a handshake that meets one is answered 503 (``dwebsocket.handshake.misconfigured``).

To add a setting: a :class:`Setting` in :data:`SETTINGS` with the next free check id, a
property on :class:`Settings`, a row in ``docs/settings.rst`` and one in the check table of
``docs/deployment.rst``; ``tests/test_settings.py`` then asks for a test of a wrong value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.conf import settings as django_settings

from dwebsocket.exceptions import InvalidSetting

__all__ = ["DEFAULTS", "DEFAULT_FACTORY", "SETTINGS", "Setting", "Settings", "settings"]

_T = TypeVar("_T", covariant=True)

DEFAULT_FACTORY = "dwebsocket.backends.default.factory.WebSocketFactory"


@dataclass(frozen=True)
class Setting(Generic[_T]):
    """One setting: its name, its default, the id of the system check that validates it,
    and ``parse``, which returns a value as the setting's type or raises ``ValueError``
    saying what is wrong with it."""

    name: str
    default: _T
    check_id: str
    parse: Callable[[object], _T]

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` for this setting (a sentence), or None."""
        try:
            self.parse(value)
        except ValueError as exc:
            return f"{self.name} {exc}, not {value!r}"
        return None

    def read(self) -> _T:
        """The setting's value now (its default if unset), as its type. Raises
        :class:`~dwebsocket.exceptions.InvalidSetting` for a wrong value. Never blocks."""
        value = getattr(django_settings, self.name, self.default)
        try:
            return self.parse(value)
        except ValueError:
            problem = self.problem(value) or self.name
            raise InvalidSetting(self.name, value, problem, self.check_id) from None


# -- parsers: the value as its type, or ValueError saying what it must be -----------------

#: The longest a number of seconds may be. Waits are bounded by what the platform can
#: wait in one call: poll() takes at most 2**31 - 1 ms (about 24.8 days), threading
#: waits ``threading.TIMEOUT_MAX``; a value over that would pass the check and raise
#: OverflowError in every session. None says "never" where a setting allows it.
MAX_SECONDS = 7 * 24 * 3600

#: The largest number of bytes a size may be: RFC 6455 5.2 frame lengths have 63 bits,
#: and the protocol core adds its wire budget (an eighth more) to the message limit in
#: C ``ssize_t``. None says "no limit" where a setting allows it.
MAX_SIZE = 2**62


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be True or False")
    return value


def _dotted_path(value: object) -> str:
    if not isinstance(value, str) or "." not in value.strip(".") or value != value.strip():
        raise ValueError('must be the dotted path of a class ("package.module.Class")')
    return value


def _integer(value: object, minimum: int, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        # A lazy object (SimpleLazyObject) passes isinstance() by proxying __class__, yet
        # does no arithmetic: type() tells.
        or not issubclass(type(value), int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"must be an integer >= {minimum}")
    return value


def _size(value: object) -> int:
    try:
        return _integer(value, 1, MAX_SIZE)
    except ValueError:
        raise ValueError("must be a number of bytes: an integer from 1 to 2**62") from None


def _optional_size(value: object) -> int | None:
    try:
        return None if value is None else _integer(value, 1, MAX_SIZE)
    except ValueError:
        raise ValueError("must be None or a number of bytes: an integer from 1 to 2**62") from None


def _optional_count(value: object) -> int | None:
    try:
        return None if value is None else _integer(value, 0)
    except ValueError:
        raise ValueError("must be None or an integer >= 0") from None


def _seconds(value: object, *, zero: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not issubclass(type(value), (int, float))  # a lazy object: see _integer
        or value > MAX_SECONDS  # first: isfinite() raises OverflowError for a huge int
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ValueError(
            f"must be a number of seconds {'>= 0' if zero else '> 0'} and at most "
            f"{MAX_SECONDS} (a week)"
        )
    return float(value)


def _optional_interval(value: object) -> float | None:
    try:
        return None if value is None else _seconds(value, zero=False)
    except ValueError:
        raise ValueError(
            f"must be None or a number of seconds > 0 and at most {MAX_SECONDS} (a week)"
        ) from None


def _timeout(value: object) -> float:
    return _seconds(value, zero=True)


def _optional_url(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or "://" not in value):
        raise ValueError('must be None or a URL ("memory://", "redis://host:port/db")')
    return value


_check_history: Callable[[object], object] | None = None


def _groups_history(value: object) -> Mapping[str, Mapping[str, float]]:
    # Read at every groups.send(): history.checked keeps the last right value, compared by
    # value (so a dict changed in place is checked again). Imported once: an import
    # statement here would cost more than the rest of the call.
    global _check_history
    check = _check_history
    if check is None:
        from dwebsocket.groups.history import checked

        check = _check_history = checked
    try:
        check(value)
    except ValueError as exc:
        raise ValueError(
            f'must be a dict of group name or pattern -> {{"size": N, "ttl": seconds}} ({exc})'
        ) from None
    return value  # type: ignore[return-value]


def _any(value: object) -> object:
    # WEBSOCKET_ALLOWED_ORIGINS: validated by dwebsocket.handshake.origin_setting_errors
    # (check dwebsocket.E010); a wrong value refuses browsers' handshakes with 403 there
    # rather than raising here.
    return value


# -- the settings ------------------------------------------------------------------------

ACCEPT_ALL = Setting("WEBSOCKET_ACCEPT_ALL", False, "dwebsocket.E011", _bool)
FACTORY_CLASS = Setting("WEBSOCKET_FACTORY_CLASS", DEFAULT_FACTORY, "dwebsocket.E012", _dotted_path)
ALLOWED_ORIGINS = Setting("WEBSOCKET_ALLOWED_ORIGINS", None, "dwebsocket.E010", _any)
COMPRESSION = Setting("WEBSOCKET_COMPRESSION", True, "dwebsocket.E013", _bool)
MAX_MESSAGE_SIZE = Setting[int | None](
    "WEBSOCKET_MAX_MESSAGE_SIZE", 1024 * 1024, "dwebsocket.E014", _optional_size
)
MAX_FRAME_SIZE = Setting("WEBSOCKET_MAX_FRAME_SIZE", None, "dwebsocket.E015", _optional_size)
PING_INTERVAL = Setting[float | None](
    "WEBSOCKET_PING_INTERVAL", 20.0, "dwebsocket.E016", _optional_interval
)
PING_TIMEOUT = Setting[float | None](
    "WEBSOCKET_PING_TIMEOUT", 20.0, "dwebsocket.E017", _optional_interval
)
CLOSE_TIMEOUT = Setting("WEBSOCKET_CLOSE_TIMEOUT", 5.0, "dwebsocket.E018", _timeout)
SEND_QUEUE_SIZE = Setting("WEBSOCKET_SEND_QUEUE_SIZE", 1024 * 1024, "dwebsocket.E019", _size)
GROUPS_URL = Setting("WEBSOCKET_GROUPS_URL", None, "dwebsocket.E020", _optional_url)
MAX_CONNECTIONS = Setting("WEBSOCKET_MAX_CONNECTIONS", None, "dwebsocket.E021", _optional_count)
MAX_CONNECTIONS_PER_IP = Setting(
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP", None, "dwebsocket.E022", _optional_count
)
GROUPS_HISTORY = Setting[Mapping[str, Mapping[str, float]]](
    "WEBSOCKET_GROUPS_HISTORY", {}, "dwebsocket.E023", _groups_history
)
METRICS = Setting("WEBSOCKET_METRICS", True, "dwebsocket.E024", _bool)
# Users and sessions (dwebsocket.users): ids from E030 up.
REVOKE_SESSIONS = Setting("WEBSOCKET_REVOKE_SESSIONS", True, "dwebsocket.E030", _bool)
SESSION_CHECK_INTERVAL = Setting[float | None](
    "WEBSOCKET_SESSION_CHECK_INTERVAL", 60.0, "dwebsocket.E031", _optional_interval
)
PRESENCE_HEARTBEAT = Setting(
    "WEBSOCKET_PRESENCE_HEARTBEAT", 10.0, "dwebsocket.E032", lambda v: _seconds(v, zero=False)
)
ASGI_THREADS = Setting[int | None](
    "WEBSOCKET_ASGI_THREADS", 1000, "dwebsocket.E025", _optional_count
)

#: Every setting dwebsocket reads, by name, in the order of ``docs/settings.rst``.
SETTINGS: dict[str, Setting[object]] = {
    setting.name: setting
    for setting in (
        ACCEPT_ALL,
        FACTORY_CLASS,
        ALLOWED_ORIGINS,
        COMPRESSION,
        MAX_MESSAGE_SIZE,
        MAX_FRAME_SIZE,
        PING_INTERVAL,
        PING_TIMEOUT,
        CLOSE_TIMEOUT,
        SEND_QUEUE_SIZE,
        GROUPS_URL,
        GROUPS_HISTORY,
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_IP,
        METRICS,
        REVOKE_SESSIONS,
        SESSION_CHECK_INTERVAL,
        PRESENCE_HEARTBEAT,
        ASGI_THREADS,
    )
}

#: Every setting dwebsocket reads, with its default.
DEFAULTS: dict[str, object] = {name: setting.default for name, setting in SETTINGS.items()}


class Settings:
    """The ``WEBSOCKET_*`` settings as typed properties, read at each access.

    Each raises :class:`~dwebsocket.exceptions.InvalidSetting` for a wrong value (see the
    module docstring) and never blocks."""

    @property
    def WEBSOCKET_ACCEPT_ALL(self) -> bool:
        """With the middleware, every view accepts WebSockets (not only decorated ones)."""
        return ACCEPT_ALL.read()

    @property
    def WEBSOCKET_FACTORY_CLASS(self) -> str:
        """The dotted path of the backend's ``WebSocketFactory``."""
        return FACTORY_CLASS.read()

    @property
    def WEBSOCKET_ALLOWED_ORIGINS(self) -> object:
        """The Origin allow-list as configured (None: derived from ``ALLOWED_HOSTS``);
        not validated here: see :func:`dwebsocket.handshake.allowed_origins`."""
        return ALLOWED_ORIGINS.read()

    @property
    def WEBSOCKET_COMPRESSION(self) -> bool:
        """Whether permessage-deflate is negotiated."""
        return COMPRESSION.read()

    @property
    def WEBSOCKET_MAX_MESSAGE_SIZE(self) -> int | None:
        """Bytes a message may have after decompression; None: no limit."""
        return MAX_MESSAGE_SIZE.read()

    @property
    def WEBSOCKET_MAX_FRAME_SIZE(self) -> int | None:
        """Bytes a frame may have; None: bounded by the message size."""
        return MAX_FRAME_SIZE.read()

    @property
    def WEBSOCKET_PING_INTERVAL(self) -> float | None:
        """Seconds of silence before a keepalive ping; None: no pings."""
        return PING_INTERVAL.read()

    @property
    def WEBSOCKET_PING_TIMEOUT(self) -> float | None:
        """Seconds without a pong before the peer counts as dead; None: never."""
        return PING_TIMEOUT.read()

    @property
    def WEBSOCKET_CLOSE_TIMEOUT(self) -> float:
        """Seconds to wait for the peer's close frame."""
        return CLOSE_TIMEOUT.read()

    @property
    def WEBSOCKET_SEND_QUEUE_SIZE(self) -> int:
        """Bytes a connection may have queued by ``deliver()`` before it is closed (1008)."""
        return SEND_QUEUE_SIZE.read()

    @property
    def WEBSOCKET_GROUPS_URL(self) -> str | None:
        """The groups layer's URL; None: in-process (``memory://``)."""
        return GROUPS_URL.read()

    @property
    def WEBSOCKET_GROUPS_HISTORY(self) -> Mapping[str, Mapping[str, float]]:
        """Groups that keep their last messages: name or pattern -> ``{"size", "ttl"}``
        (:mod:`dwebsocket.groups.history`)."""
        return GROUPS_HISTORY.read()

    @property
    def WEBSOCKET_MAX_CONNECTIONS(self) -> int | None:
        """Sessions this process runs at once; None: no cap."""
        return MAX_CONNECTIONS.read()

    @property
    def WEBSOCKET_MAX_CONNECTIONS_PER_IP(self) -> int | None:
        """Sessions this process runs at once per client address; None: no cap."""
        return MAX_CONNECTIONS_PER_IP.read()

    @property
    def WEBSOCKET_METRICS(self) -> bool:
        """Whether :mod:`dwebsocket.metrics` counts (with ``prometheus_client`` installed)."""
        return METRICS.read()

    @property
    def WEBSOCKET_REVOKE_SESSIONS(self) -> bool:
        """Whether the sockets of a session that ends (logout, flush, password change,
        expiry) are closed with 4001 (:mod:`dwebsocket.users`)."""
        return REVOKE_SESSIONS.read()

    @property
    def WEBSOCKET_SESSION_CHECK_INTERVAL(self) -> float | None:
        """Seconds between two checks that an authenticated socket's session is still
        valid; None: only the signals (logout, deleted session row, user saved)."""
        return SESSION_CHECK_INTERVAL.read()

    @property
    def WEBSOCKET_PRESENCE_HEARTBEAT(self) -> float:
        """Seconds between two heartbeats of a process with present members on Redis; a
        process silent for twice as long counts as dead (its members vanish)."""
        return PRESENCE_HEARTBEAT.read()

    @property
    def WEBSOCKET_ASGI_THREADS(self) -> int | None:
        """Under ASGI, sync WebSocket views running at once in this process (each holds a
        worker thread for its session); None: no cap."""
        return ASGI_THREADS.read()


settings = Settings()
