"""``WEBSOCKET_FACTORY_CLASS = 'dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory'``.

Importable anywhere (system checks import it); ``uwsgi`` is imported only when a
WebSocket request arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dwebsocket.exceptions import BackendUnavailable
from dwebsocket.factory import WebSocketFactory

if TYPE_CHECKING:
    from .websocket import uWsgiWebSocket

__all__ = ["uWsgiWebSocketFactory"]


class uWsgiWebSocketFactory(WebSocketFactory):
    """Creates a :class:`~dwebsocket.backends.uwsgi.websocket.uWsgiWebSocket`."""

    def create_websocket(self) -> uWsgiWebSocket | None:
        """Validate the handshake (400/426/403 as for every backend) and return the
        unaccepted connection, or None for plain HTTP. Raises ``BackendUnavailable``
        outside uWSGI. Does not block."""
        if not self.is_websocket():
            return None
        from dwebsocket.handshake import parse_handshake

        handshake = parse_handshake(self.request)
        try:
            from .websocket import uWsgiWebSocket
        except ImportError as exc:
            if exc.name != "uwsgi":
                raise
            raise BackendUnavailable(
                "WEBSOCKET_FACTORY_CLASS names the uwsgi backend, but this process is not "
                "running under uWSGI"
            ) from None
        return uWsgiWebSocket(self.request, handshake)
