"""Exceptions raised by dwebsocket: every one of them, in one tree.

One base class; each subclass carries its data as attributes::

    WebSocketError
    ├── ConnectionClosed          the connection is closed (code, reason)
    ├── ProtocolError             the peer broke RFC 6455 / RFC 7692 (close code, reason)
    │   └── PayloadTooBig         a frame or message exceeds a configured limit (1009)
    ├── InvalidHandshake          the opening handshake is refused (HTTP status, reason)
    │   ├── UnsupportedVersion    Sec-WebSocket-Version is not 13 (426)
    │   ├── ForbiddenOrigin       the Origin header is not allowed (403)
    │   ├── TooManyConnections    a connection cap is reached (503, retry_after)
    │   └── HandshakeRefused      the test client got another answer than 101 (status_code)
    ├── InvalidState              the caller did something the connection state forbids
    ├── BackendUnavailable        the WSGI server gives no way to take over the connection
    ├── GroupsUnavailable         the groups layer could not reach other processes
    └── InvalidSetting            a WEBSOCKET_* setting has a wrong type or value (setting,
                                  check_id)

Some are also importable from the module that raises them, where they were first
defined: ``dwebsocket.limits.TooManyConnections``, ``dwebsocket.groups.GroupsUnavailable``,
``dwebsocket.testing.HandshakeRefused``.

This module imports nothing outside the standard library: the sans-I/O core uses it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.http import HttpResponseBase

__all__ = [
    "BackendUnavailable",
    "ConnectionClosed",
    "ForbiddenOrigin",
    "GroupsUnavailable",
    "HandshakeRefused",
    "InvalidHandshake",
    "InvalidSetting",
    "InvalidState",
    "PayloadTooBig",
    "ProtocolError",
    "TooManyConnections",
    "UnsupportedVersion",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every exception dwebsocket raises: ``except WebSocketError`` catches
    them all."""


class ConnectionClosed(WebSocketError):
    """Raised when sending on, or otherwise using, a connection that is closed.

    ``code`` and ``reason`` are those of the close frame received (or sent, when this side
    closed first); ``code`` is 1006 when the TCP connection ended without a close frame.
    Escaping a view, it ends the session quietly: it is not a server error.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed ({self.code}{': ' + self.reason if self.reason else ''})"


class ProtocolError(WebSocketError):
    """Raised when the peer violates the protocol; ``code`` is the close code to send."""

    def __init__(self, reason: str, code: int = 1002) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return f"{self.reason} ({self.code})"


class PayloadTooBig(ProtocolError):
    """Raised when a frame or a message is larger than the configured limit."""

    def __init__(self, reason: str, code: int = 1009) -> None:
        super().__init__(reason, code)


class InvalidHandshake(WebSocketError):
    """Raised when an opening handshake is refused; answer it with HTTP ``status``.

    ``headers`` are extra response headers (for example ``Sec-WebSocket-Version``).
    """

    status = 400

    def __init__(self, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = list(headers or [])

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


class UnsupportedVersion(InvalidHandshake):
    """Raised when the client asks for a protocol version other than 13 (HTTP 426)."""

    status = 426

    def __init__(self, reason: str = "Unsupported WebSocket version") -> None:
        super().__init__(reason, [("Sec-WebSocket-Version", "13")])


class ForbiddenOrigin(InvalidHandshake):
    """Raised when the Origin header is not in the allow-list (HTTP 403)."""

    status = 403


class TooManyConnections(InvalidHandshake):
    """Raised when a handshake would exceed a connection cap (``WEBSOCKET_MAX_CONNECTIONS``,
    ``WEBSOCKET_MAX_CONNECTIONS_PER_IP``): HTTP 503 with ``Retry-After: retry_after``
    (seconds)."""

    status = 503

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason, [("Retry-After", str(retry_after))])
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        # Exception.args holds the reason only: pickle (Django's parallel test runner)
        # would call __init__ without retry_after.
        return type(self), (self.reason, self.retry_after)


class HandshakeRefused(InvalidHandshake):
    """Raised when the server answers the test client's upgrade request with another status
    than 101 (the view returned a 403, the Origin was refused, the URL does not exist...),
    by :meth:`dwebsocket.testing.WebSocketClient.connect`.

    ``status_code``, ``headers`` (lower-case names, in order) and ``content`` (the body)
    are what came over the wire; ``response`` is the ``HttpResponse`` Django produced,
    with ``wsgi_request`` set, as ``django.test.Client`` returns it.
    """

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[str, str]],
        content: bytes,
        response: HttpResponseBase | None = None,
    ) -> None:
        super().__init__(content.decode("utf-8", "replace").strip(), headers)
        self.status = self.status_code = status_code
        self.content = content
        self.response = response

    def __reduce__(self) -> tuple[object, ...]:
        # As TooManyConnections'; the response (Django's, with its request) stays behind.
        return type(self), (self.status_code, self.headers, self.content)

    def __str__(self) -> str:
        reason = self.reason if len(self.reason) <= 200 else self.reason[:200] + "..."
        return f"handshake refused with HTTP {self.status_code}" + (f": {reason}" if reason else "")


class InvalidState(WebSocketError):
    """Raised when the caller uses the connection in a way its state forbids."""


class BackendUnavailable(WebSocketError):
    """Raised when the WSGI server exposes no socket the backend can take over."""


class GroupsUnavailable(WebSocketError):
    """Raised when the groups layer could not pass a message on to other processes (Redis
    unreachable), by ``dwebsocket.groups.send(..., fail_silently=False)``. Members in this
    process got it. ``__cause__`` is the underlying error."""


class InvalidSetting(WebSocketError):
    """Raised when a ``WEBSOCKET_*`` setting is read and its value has the wrong type or is
    out of range (``WEBSOCKET_MAX_MESSAGE_SIZE = "1MB"``).

    ``setting`` is the setting's name, ``value`` its value, ``problem`` what is wrong with
    it (a sentence), and ``check_id`` the system check that reports the same in
    ``manage.py check`` (``"dwebsocket.E014"``). A handshake that meets one is answered
    503, and the problem logged at ERROR (``dwebsocket.handshake.misconfigured``).
    """

    def __init__(self, setting: str, value: object, problem: str, check_id: str) -> None:
        super().__init__(setting, value, problem, check_id)
        self.setting = setting
        self.value = value
        self.problem = problem
        self.check_id = check_id

    def __str__(self) -> str:
        return f"{self.problem} ({self.check_id})"
