"""WebSockets (RFC 6455 + RFC 7692) for ordinary synchronous Django views.

The public names are imported lazily (PEP 562), so that ``import dwebsocket.protocol``
(the sans-I/O core) does not import Django::

    from dwebsocket import accept_websocket, require_websocket, ConnectionClosed
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dwebsocket.decorators import accept_websocket, require_websocket
    from dwebsocket.exceptions import (
        BackendUnavailable,
        ConnectionClosed,
        ForbiddenOrigin,
        GroupsUnavailable,
        HandshakeRefused,
        InvalidHandshake,
        InvalidSetting,
        InvalidState,
        PayloadTooBig,
        ProtocolError,
        TooManyConnections,
        UnsupportedVersion,
        WebSocketError,
    )
    from dwebsocket.websocket import WebSocket

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
    "WebSocket",
    "WebSocketError",
    "__version__",
    "accept_websocket",
    "require_websocket",
]

_EXPORTS = {
    "accept_websocket": "dwebsocket.decorators",
    "require_websocket": "dwebsocket.decorators",
    "WebSocket": "dwebsocket.websocket",
    "BackendUnavailable": "dwebsocket.exceptions",
    "ConnectionClosed": "dwebsocket.exceptions",
    "ForbiddenOrigin": "dwebsocket.exceptions",
    "GroupsUnavailable": "dwebsocket.exceptions",
    "HandshakeRefused": "dwebsocket.exceptions",
    "InvalidHandshake": "dwebsocket.exceptions",
    "InvalidSetting": "dwebsocket.exceptions",
    "InvalidState": "dwebsocket.exceptions",
    "PayloadTooBig": "dwebsocket.exceptions",
    "ProtocolError": "dwebsocket.exceptions",
    "TooManyConnections": "dwebsocket.exceptions",
    "UnsupportedVersion": "dwebsocket.exceptions",
    "WebSocketError": "dwebsocket.exceptions",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("dwebsocket")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            value = "0+unknown"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'dwebsocket' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
