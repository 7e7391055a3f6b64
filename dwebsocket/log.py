"""The ``dwebsocket`` logger: what both backends log the same way, and its default handler.

The levels follow one rule (``docs/logging.rst``): a client's fault is never an ERROR.
Nothing is configured for you, except what Django itself does for its own logger: with
``DEBUG = True`` and no logging configured for ``dwebsocket`` (nor a handler on the root
logger), :func:`install_debug_handler` prints its INFO lines to the console, as Django's
default ``LOGGING`` prints ``django``'s, so a refused handshake shows its reason during
development. With ``DEBUG = False`` it prints WARNING and up, as Python's last-resort
handler would for a logger nobody configured.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "closed",
    "install_debug_handler",
    "logger",
    "opened",
    "peer",
    "printable",
    "protocol_error",
    "redact",
]

logger = logging.getLogger("dwebsocket")


def printable(text: str) -> str:
    """``text`` (a request's path) as Django's request log writes it (``log_response``,
    since CVE-2025-48432): control and non-ASCII characters escaped, so that a path with
    ``%0A`` in it cannot add lines of its own to the log."""
    return text.encode("unicode_escape").decode("ascii")


def protocol_error(peer: str, path: str, reason: str, code: int) -> None:
    """Log, at INFO, the peer's violation that closes its connection with ``code``: a
    message over the size limit (1009) as such, anything else as a protocol error."""
    if code == 1009:
        logger.info(
            "WebSocket message from %s on %s over the size limit: %s (closing with 1009)",
            peer,
            printable(path),
            reason,
        )
    else:
        logger.info(
            "WebSocket protocol error from %s on %s: %s (closing with %s)",
            peer,
            printable(path),
            reason,
            code,
        )


def slow_reader(peer: str, path: str, limit: int) -> None:
    """Log, at INFO, a connection closed with 1008 because more than ``limit`` bytes
    waited in its send queue: its peer reads too slowly."""
    logger.info(
        "WebSocket peer %s on %s reads too slowly (more than %s bytes queued): closing (1008)",
        peer,
        printable(path),
        limit,
    )


def peer(meta: Mapping[str, Any]) -> str:
    """The client of a request (its ``META``) as the log names it: ``address:port``, or
    the address alone where the server gives no ``REMOTE_PORT``."""
    port = meta.get("REMOTE_PORT")
    address = meta.get("REMOTE_ADDR", "?")
    return f"{address}:{port}" if port else str(address)


def opened(peer: str, path: str, via: str, subprotocol: str | None, compression: bool) -> None:
    """Log, at DEBUG, a connection's opening: who, where, how it was taken over (``via``),
    the subprotocol and whether compression is on."""
    logger.debug(
        "WebSocket opened: %s %s via %s (subprotocol %s, compression %s)",
        peer,
        printable(path),
        via,
        subprotocol,
        "on" if compression else "off",
    )


def closed(peer: str, path: str, code: int | None, reason: str, opened_at: float) -> None:
    """Log, at DEBUG, a connection's end: who, where, the close code (and reason) and how
    long it was open (``opened_at``: ``time.monotonic()`` at the 101)."""
    logger.debug(
        "WebSocket closed: %s %s code %s%s after %.3fs",
        peer,
        printable(path),
        code,
        f" ({printable(reason)})" if reason else "",  # the peer's text
        time.monotonic() - opened_at,
    )


def _debug_or_warning(record: logging.LogRecord) -> bool:
    """The console handler's filter: INFO with ``DEBUG = True``; WARNING and up always
    (a handler on the logger stops Python's last-resort handler, which prints those)."""
    from django.conf import settings as django_settings

    return record.levelno >= logging.WARNING or bool(django_settings.DEBUG)


def install_debug_handler(configured: Any = None) -> bool:
    """Give the ``dwebsocket`` logger a console handler: INFO and up with ``DEBUG =
    True``, WARNING and up without (what Python prints when nothing is configured),
    unless logging for it is configured already: ``LOGGING`` names it, it or the root
    logger has a handler. ``configured`` is ``settings.LOGGING``. Returns whether it
    added one."""
    loggers = (configured or {}).get("loggers", {}) if isinstance(configured, dict) else {}
    if "dwebsocket" in loggers or logger.handlers or logging.getLogger().handlers:
        return False
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    handler.addFilter(_debug_or_warning)
    handler.setFormatter(logging.Formatter("[dwebsocket] %(levelname)s %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return True


#: A query parameter of a URL that carries a secret: ``password`` (redis-py reads it as
#: the user part's), ``sentinel_password``, ``ssl_password``...
_SECRET_PARAMETER = re.compile(r"(^|[&;])([^=&;]*password[^=&;]*)=[^&;]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` without its passwords (the user part's, and any query parameter named
    ``...password...``), for logs and messages."""
    url = _redact_query(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unreadable (a bad IPv6 address, a bad port): hide all credentials
        head, at, tail = url.rpartition("@")
        return f"{head.partition('://')[0]}://***@{tail}" if at else url
    if password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _redact_query(url: str) -> str:
    """``url`` with the value of each query parameter named ``...password...`` hidden."""
    base, mark, query = url.partition("?")
    if not mark:
        return url
    query, hash_, fragment = query.partition("#")
    return base + mark + _SECRET_PARAMETER.sub(r"\1\2=***", query) + hash_ + fragment
