"""Groups: send one message to every WebSocket in a named group, in every process.

::

    request.websocket.join("room-42")             # in the WebSocket view
    dwebsocket.groups.send("room-42", "hello")    # anywhere: a view, a command, a worker

A connection leaves its groups when it closes. ``WEBSOCKET_GROUPS_URL`` picks the layer that
carries messages: unset or ``memory://`` stays inside the process (:mod:`.memory`);
``redis://host:port/db`` reaches every process connected to that Redis (:mod:`.redis`).
The setting is read at each call, so ``override_settings`` works; a layer is built on first
use and rebuilt when the setting changes or the process forks.

Delivery never waits for a member: each gets the message through its never-blocking
:meth:`~dwebsocket.websocket.WebSocket.deliver`, which closes a member whose outgoing buffer
is over ``WEBSOCKET_SEND_QUEUE_SIZE`` with 1008 (policy violation).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

from dwebsocket.exceptions import GroupsUnavailable, InvalidSetting
from dwebsocket.groups.memory import Member, MemoryLayer, Registry

if TYPE_CHECKING:
    from dwebsocket.typing import BytesLike, Message
    from dwebsocket.websocket import WebSocket

__all__ = ["GroupsUnavailable", "Member", "get_layer", "join", "leave", "members", "send"]

logger = logging.getLogger("dwebsocket.groups")


class Layer(Protocol):
    url: str

    def join(self, group: str, member: Member) -> None: ...
    def leave(self, group: str, member: Member) -> None: ...
    def leave_all(self, member: Member) -> None: ...
    def send(self, group: str, message: Message, *, fail_silently: bool = True) -> None: ...
    def close(self) -> None: ...


_lock = threading.Lock()
_registry = Registry()
_layer: Layer | None = None
_pid = os.getpid()


def get_layer() -> Layer:
    """The layer ``WEBSOCKET_GROUPS_URL`` names, built on first use.

    Raises :class:`~dwebsocket.exceptions.InvalidSetting` (check ``dwebsocket.E020``) for
    a URL no layer serves, ``ImproperlyConfigured`` for ``redis://`` without redis-py
    installed."""
    from dwebsocket.conf import settings

    global _layer, _registry, _pid
    url = settings.WEBSOCKET_GROUPS_URL or MemoryLayer.url
    layer = _layer
    if layer is not None and layer.url == url and _pid == os.getpid():
        return layer
    with _lock:
        if _pid != os.getpid():
            # A forked child has none of its parent's sockets, and no reader thread.
            _registry, _layer, _pid = Registry(), None, os.getpid()
        elif _layer is not None and _layer.url != url:
            _layer.close()
            _layer = None
        if _layer is None:
            _layer = _make_layer(url, _registry)
        return _layer


#: The URL schemes of the Redis layer (:mod:`.redis`).
REDIS_SCHEMES = ("redis", "rediss", "unix")


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a ``WEBSOCKET_GROUPS_URL`` (no layer serves it), or
    None. Looks at the scheme only; connects to nothing."""
    if url == MemoryLayer.url or url.partition("://")[0].lower() in REDIS_SCHEMES:
        return None
    return f"WEBSOCKET_GROUPS_URL must be memory:// or redis://host:port/db, not {url!r}"


def _make_layer(url: str, registry: Registry) -> Layer:
    problem = url_problem(url)
    if problem is not None:
        from dwebsocket.conf import GROUPS_URL

        raise InvalidSetting(GROUPS_URL.name, url, problem, GROUPS_URL.check_id)
    if url == MemoryLayer.url:
        return MemoryLayer(registry)
    from dwebsocket.groups.redis import RedisLayer

    return RedisLayer(url, registry)


def reset() -> None:
    """Close the current layer and forget every membership (for tests)."""
    global _layer, _registry
    with _lock:
        if _layer is not None:
            _layer.close()
        _layer, _registry = None, Registry()


def _check_group(group: Any) -> None:
    if not isinstance(group, str):
        raise TypeError(f"group names are str, not {type(group).__name__}")
    if not group:
        raise ValueError("group name is empty")


def join(group: str, websocket: WebSocket | Member) -> None:
    """Add ``websocket`` to ``group``: from now on ``send(group, ...)`` reaches it.

    With Redis, the first local member of a group waits (up to the socket timeout) for the
    subscription to be confirmed, so nothing sent after ``join`` returns is missed; while
    Redis is down it returns at once. Joining twice is harmless; a closed connection is not
    added. Raises ``TypeError``/``ValueError`` for a group name that is not a non-empty str.
    """
    _check_group(group)
    _connect_signal()
    if websocket.is_closed():
        return
    layer = get_layer()
    layer.join(group, websocket)
    if websocket.is_closed():  # closed meanwhile: its signal may have fired before the join
        layer.leave_all(websocket)


def leave(group: str, websocket: WebSocket | Member) -> None:
    """Remove ``websocket`` from ``group``; no error if it was not a member. Never blocks."""
    _check_group(group)
    get_layer().leave(group, websocket)


def leave_all(websocket: WebSocket | Member) -> None:
    """Remove ``websocket`` from every group (done for you when it closes)."""
    get_layer().leave_all(websocket)


def members(group: str) -> list[Member]:
    """The members of ``group`` in this process (not in others), in joining order."""
    _check_group(group)
    get_layer()  # a fork resets the registry
    return _registry.members(group)


def send(group: str, message: str | BytesLike, *, fail_silently: bool = True) -> None:
    """Send ``message`` to every member of ``group``, in every process.

    ``str`` is sent as a text message, bytes-like as a binary one. Never blocks on a member:
    a slow one is closed (1008) rather than waited for. With Redis it waits at most the
    socket timeout for Redis itself. If Redis is unreachable the members in this process
    still get the message, the others do not, and nothing is raised unless
    ``fail_silently=False`` (then :class:`GroupsUnavailable`).
    Raises ``TypeError`` for a message that is neither ``str`` nor bytes-like.
    """
    _check_group(group)
    if isinstance(message, (bytearray, memoryview)):
        message = bytes(message)
    elif not isinstance(message, (str, bytes)):
        raise TypeError(f"group messages are str or bytes, not {type(message).__name__}")
    get_layer().send(group, message, fail_silently=fail_silently)


_signal_connected = False


def _connect_signal() -> None:
    """Leave every group when a connection closes (``websocket_closed``, sent by backends)."""
    global _signal_connected
    if _signal_connected:
        return
    try:
        from dwebsocket.signals import websocket_closed
    except ImportError:  # pragma: no cover - only while the signals module does not exist
        return
    websocket_closed.connect(_on_closed, weak=False, dispatch_uid="dwebsocket.groups")
    _signal_connected = True


def _on_closed(sender: Any, websocket: Member | None = None, **kwargs: Any) -> None:
    # Backends send the WebSocket class as ``sender`` and the connection as ``websocket``.
    try:
        leave_all(websocket if websocket is not None else sender)
    except Exception:  # never let the groups break a backend's close path
        logger.exception("Could not remove a closed WebSocket from its groups")
