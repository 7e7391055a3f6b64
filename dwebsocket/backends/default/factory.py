"""``WebSocketFactory`` of the default backend (the default ``WEBSOCKET_FACTORY_CLASS``)."""

from __future__ import annotations

from dwebsocket.backends.default import registry  # noqa: F401 - tracks open connections
from dwebsocket.backends.default.takeovers import find_transport
from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.factory import WebSocketFactory as BaseWebSocketFactory
from dwebsocket.handshake import parse_handshake

__all__ = ["WebSocketFactory"]


class WebSocketFactory(BaseWebSocketFactory):
    """Validates the handshake and finds the server's socket; the WebSocket it returns
    takes the connection over when it is accepted."""

    def create_websocket(self) -> DefaultWebSocket | None:
        """An unaccepted :class:`DefaultWebSocket`, or None for plain HTTP.

        Raises ``InvalidHandshake`` (400/426/403) for a bad handshake and
        ``BackendUnavailable`` when the server offers no socket. Does not block."""
        if not self.is_websocket():
            return None
        handshake = parse_handshake(self.request)
        # For a WSGIRequest, META is the WSGI environ itself.
        transport = find_transport(self.request.META)
        return DefaultWebSocket(self.request, handshake, transport)
