"""Commands to the members of a group, in every process: close them, check their session.

A command is not a message for the clients: it travels like one (the layer's ``control``:
in this process for ``memory://``; published as kind 3 on Redis) and each process hands
it to a handler with its local members of the group. :mod:`dwebsocket.users` uses it on
the reserved per-user and per-session groups (``dwebsocket.user.<pk>``,
``dwebsocket.session.<key>``) to close a user's sockets everywhere.

The payload is JSON: ``{"op": name, ...arguments}``. Handlers run on the thread that
received the command -- the Redis reader, or the sender for ``memory://`` -- so they must
not block: anything that waits (a close handshake, a database query) is spawned.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dwebsocket.groups.memory import Member, Registry

__all__ = [
    "MEMORY",
    "Handler",
    "Recent",
    "dispatch",
    "encode",
    "missed",
    "on_missed",
    "register",
]

logger = logging.getLogger("dwebsocket.groups")

#: ``handler(group, members, command)``: ``members`` are this process's open members of
#: ``group``; ``command`` the decoded JSON object.
Handler = Callable[[str, list[Member], dict[str, Any]], None]

_handlers: dict[str, Handler] = {}

#: ``listener(registry, groups, within)``: this process may have missed the commands sent
#: to ``groups`` in the last ``within`` seconds (see :func:`missed`).
MissedListener = Callable[[Registry, list[str], float], None]

_missed_listeners: list[MissedListener] = []

#: Seconds a command is remembered after it was sent, for a member that joins its group
#: just after (the layers' ``recent_controls``: :mod:`dwebsocket.users` looks there for a
#: revocation sent while a socket was opening, before it had joined).
MEMORY = 60.0


class Recent:
    """The commands of the last :data:`MEMORY` seconds, per group: ``memory://``'s record
    (Redis keeps its own, in a sorted set per group). Thread-safe; never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_group: dict[str, deque[tuple[float, bytes]]] = {}
        self._order: deque[tuple[float, str]] = deque()  # every command, oldest first

    def add(self, group: str, payload: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            self._by_group.setdefault(group, deque()).append((now, payload))
            self._order.append((now, group))

    def since(self, group: str, within: float) -> list[tuple[bytes, float]]:
        """The commands sent to ``group`` in the last ``within`` seconds: ``(payload,
        seconds ago)``, oldest first."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            sent = self._by_group.get(group, ())
            return [(payload, now - at) for at, payload in sent if now - at <= within]

    def _expire(self, now: float) -> None:
        order = self._order
        while order and now - order[0][0] > MEMORY:
            group = order.popleft()[1]
            sent = self._by_group[group]
            sent.popleft()
            if not sent:
                del self._by_group[group]


def register(op: str, handler: Handler) -> None:
    """Call ``handler`` for each command ``op`` that reaches this process."""
    _handlers[op] = handler


def on_missed(listener: MissedListener) -> None:
    """Call ``listener`` whenever this process may have missed commands (:func:`missed`).
    It must not block: it runs on the Redis reader."""
    if listener not in _missed_listeners:
        _missed_listeners.append(listener)


def missed(registry: Registry, groups: list[str], within: float) -> None:
    """Tell the listeners that the commands sent to ``groups`` in the last ``within``
    seconds may not have reached this process (its Redis subscription was lost meanwhile:
    they were published to no one here); they read them with the layer's
    ``recent_controls``. Never raises."""
    for listener in list(_missed_listeners):
        try:
            listener(registry, groups, within)
        except Exception:
            logger.exception("Recovering the commands missed on %d group(s) failed", len(groups))


def encode(op: str, **arguments: Any) -> bytes:
    """The payload of command ``op`` (JSON, UTF-8)."""
    return json.dumps({"op": op, **arguments}, separators=(",", ":")).encode()


def dispatch(registry: Registry, group: str, payload: bytes) -> None:
    """Hand command ``payload`` to its handler with the open local members of ``group``.
    Never raises: a malformed command or a failing handler is logged."""
    try:
        command = json.loads(payload)
        op = command["op"]
    except (ValueError, TypeError, KeyError):
        logger.warning("Dropping a malformed group command on %r", group)
        return
    handler = _handlers.get(op) if isinstance(op, str) else None
    if handler is None:
        logger.debug("Ignoring group command %r on %r: no handler here", op, group)
        return
    members = [member for member in registry.members(group) if not member.is_closed()]
    if not members:
        return
    try:
        handler(group, members, command)
    except Exception:
        logger.exception("Group command %r on %r failed", op, group)
