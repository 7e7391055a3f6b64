"""Every ``WEBSOCKET_*`` setting, read lazily so that ``override_settings`` just works."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULT_FACTORY = "dwebsocket.backends.default.factory.WebSocketFactory"

#: Every setting dwebsocket reads, with its default.
DEFAULTS: dict[str, Any] = {
    "WEBSOCKET_ACCEPT_ALL": False,
    "WEBSOCKET_FACTORY_CLASS": DEFAULT_FACTORY,
    # None: derive from ALLOWED_HOSTS; otherwise a list of origins ("https://example.com",
    # "*" for any) -- see dwebsocket.handshake.origin_allowed.
    "WEBSOCKET_ALLOWED_ORIGINS": None,
    "WEBSOCKET_COMPRESSION": True,
    "WEBSOCKET_MAX_MESSAGE_SIZE": 1024 * 1024,  # bytes, after decompression
    "WEBSOCKET_MAX_FRAME_SIZE": None,  # bytes; None: bounded by WEBSOCKET_MAX_MESSAGE_SIZE
    "WEBSOCKET_PING_INTERVAL": 20.0,  # seconds; None disables keepalive pings
    "WEBSOCKET_PING_TIMEOUT": 20.0,  # seconds without a pong before the peer counts as dead
    "WEBSOCKET_CLOSE_TIMEOUT": 5.0,  # seconds to wait for the peer's close frame
    "WEBSOCKET_SEND_QUEUE_SIZE": 1024 * 1024,  # bytes a member may have pending (deliver)
    "WEBSOCKET_GROUPS_URL": None,  # None or memory:// (in-process) / redis://host:port/db
    # Sessions open at once in this process, in total / per REMOTE_ADDR; None: no cap.
    # Over a cap the handshake gets 503 + Retry-After (dwebsocket.limits).
    "WEBSOCKET_MAX_CONNECTIONS": None,
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP": None,
}


class Settings:
    """Attribute access to the ``WEBSOCKET_*`` settings, falling back to the defaults."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(name)
        return getattr(django_settings, name, DEFAULTS[name])


settings = Settings()
