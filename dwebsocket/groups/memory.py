"""Who is in which group in this process, and the in-process layer (``memory://``).

:class:`Registry` is the local membership every layer shares; :class:`MemoryLayer` delivers a
group message to the registry's members and nothing else.

Concurrency: the registry's lock is held only to read or change the dictionaries, never
around a call into a member or any I/O, so it is safe under threads, gevent and eventlet
alike (monkey-patched ``threading.Lock`` is a cooperative lock).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from dwebsocket.typing import Message

__all__ = ["Member", "MemoryLayer", "Registry", "fan_out"]

logger = logging.getLogger("dwebsocket.groups")


class Member(Protocol):
    """What a group member must offer: a :class:`~dwebsocket.websocket.WebSocket` does."""

    def deliver(self, message: Message) -> None:
        """Queue ``message`` without blocking; drop it if closed; close itself on overflow."""

    def is_closed(self) -> bool:
        """True once the connection is closed."""


class Registry:
    """Local group membership: group name -> members, and member -> its groups.

    A closed member never stays for long: it is removed by the ``websocket_closed`` signal,
    at the next delivery to any of its groups, and by a sweep of a group whenever that group
    has doubled in size since its last sweep (so a group nobody sends to cannot grow without
    bound from sockets whose signal was missed). The sweep costs amortised O(1) per join.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(member) keys: members are compared by identity whatever __eq__ they define.
        self._groups: dict[str, dict[int, Member]] = {}
        self._memberships: dict[int, set[str]] = {}
        self._sweep_at: dict[str, int] = {}

    def add(self, group: str, member: Member) -> bool:
        """Add ``member`` to ``group``. Returns True if ``group`` had no local member before."""
        with self._lock:
            members = self._groups.get(group)
            first = members is None
            if members is None:
                members = self._groups[group] = {}
                self._sweep_at[group] = 16
            members[id(member)] = member
            self._memberships.setdefault(id(member), set()).add(group)
            sweep = list(members.values()) if len(members) >= self._sweep_at[group] else None
        if sweep is not None:
            # Outside the lock: is_closed() is a call into the member.
            closed = [m for m in sweep if m is not member and m.is_closed()]
            with self._lock:
                for other in closed:
                    self._remove(group, other)
                if group in self._groups:
                    self._sweep_at[group] = max(16, 2 * len(self._groups[group]))
        return first

    def remove(self, group: str, member: Member) -> bool:
        """Remove ``member`` from ``group`` (nothing happens if it is not a member).

        Returns True if this emptied the group (its last local member left)."""
        with self._lock:
            return self._remove(group, member)

    def remove_all(self, member: Member) -> list[str]:
        """Remove ``member`` from every group. Returns the groups this emptied."""
        with self._lock:
            groups = list(self._memberships.get(id(member), ()))
            return [group for group in groups if self._remove(group, member)]

    def _remove(self, group: str, member: Member) -> bool:
        members = self._groups.get(group)
        if members is None or members.pop(id(member), None) is None:
            return False
        groups = self._memberships[id(member)]
        groups.discard(group)
        if not groups:
            del self._memberships[id(member)]
        if members:
            return False
        del self._groups[group]
        del self._sweep_at[group]
        return True

    def members(self, group: str) -> list[Member]:
        """The local members of ``group`` now, in the order they joined (a new list)."""
        with self._lock:
            return list(self._groups.get(group, {}).values())

    def groups(self) -> list[str]:
        """Every group with at least one local member."""
        with self._lock:
            return list(self._groups)

    def __contains__(self, group: object) -> bool:
        return group in self._groups

    def groups_of(self, member: Member) -> set[str]:
        """The groups ``member`` is in (a new set)."""
        with self._lock:
            return set(self._memberships.get(id(member), ()))


def fan_out(registry: Registry, group: str, message: Message) -> list[str]:
    """Hand ``message`` to every open local member of ``group``; never blocks.

    Closed members are dropped from the registry on the way. Returns the groups that became
    empty because of that (the Redis layer unsubscribes from them)."""
    members = registry.members(group)
    closed: list[Member] = []
    for member in members:
        if member.is_closed():
            closed.append(member)
            continue
        try:
            member.deliver(message)
        except Exception:
            # deliver() must not raise; if a backend's does, that member alone pays for it.
            logger.exception("Dropping group member %r: deliver() raised", member)
            closed.append(member)
    emptied: list[str] = []
    for member in closed:
        emptied.extend(registry.remove_all(member))
    return emptied


class MemoryLayer:
    """The in-process layer: a message reaches the members in this process only.

    It needs no set-up and suits ``runserver``, a single gevent or eventlet process, and
    tests. Sending costs one :meth:`~dwebsocket.websocket.WebSocket.deliver` per member.
    """

    url = "memory://"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def join(self, group: str, member: Member) -> None:
        self.registry.add(group, member)

    def leave(self, group: str, member: Member) -> None:
        self.registry.remove(group, member)

    def leave_all(self, member: Member) -> None:
        self.registry.remove_all(member)

    def send(self, group: str, message: Message, *, fail_silently: bool = True) -> None:
        fan_out(self.registry, group, message)

    def close(self) -> None:
        """Nothing to release."""
