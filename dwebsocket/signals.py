"""Signals the backends send over a WebSocket's life.

``websocket_opened(sender, request, websocket)``: the 101 response was sent.
``websocket_closed(sender, request, websocket, code)``: the connection is closed (by either
side; ``code`` is ``websocket.close_code``). Sent once, possibly from another thread or
greenlet than the view's (for example when a write fails in the background).
``sender`` is the backend's WebSocket class.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["websocket_closed", "websocket_opened"]

websocket_opened = Signal()
websocket_closed = Signal()
