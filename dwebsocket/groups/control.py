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
from collections.abc import Callable
from typing import Any

from dwebsocket.groups.memory import Member, Registry

__all__ = ["Handler", "dispatch", "encode", "register"]

logger = logging.getLogger("dwebsocket.groups")

#: ``handler(group, members, command)``: ``members`` are this process's open members of
#: ``group``; ``command`` the decoded JSON object.
Handler = Callable[[str, list[Member], dict[str, Any]], None]

_handlers: dict[str, Handler] = {}


def register(op: str, handler: Handler) -> None:
    """Call ``handler`` for each command ``op`` that reaches this process."""
    _handlers[op] = handler


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
