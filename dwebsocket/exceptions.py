"""Exceptions raised by dwebsocket.

One base class; each subclass carries its data as attributes::

    WebSocketError
    ├── ConnectionClosed          the connection is closed (code, reason)
    ├── ProtocolError             the peer broke RFC 6455 / RFC 7692 (close code, reason)
    │   └── PayloadTooBig         a frame or message exceeds a configured limit (1009)
    ├── InvalidHandshake          the opening handshake is refused (HTTP status, reason)
    │   ├── UnsupportedVersion    Sec-WebSocket-Version is not 13 (426)
    │   └── ForbiddenOrigin       the Origin header is not allowed (403)
    ├── InvalidState              the caller did something the connection state forbids
    └── BackendUnavailable        the WSGI server gives no way to take over the connection

This module imports nothing outside the standard library: the sans-I/O core uses it too.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConnectionClosed",
    "ForbiddenOrigin",
    "InvalidHandshake",
    "InvalidState",
    "PayloadTooBig",
    "ProtocolError",
    "UnsupportedVersion",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every exception dwebsocket raises."""


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


class InvalidState(WebSocketError):
    """Raised when the caller uses the connection in a way its state forbids."""


class BackendUnavailable(WebSocketError):
    """Raised when the WSGI server exposes no socket the backend can take over."""
