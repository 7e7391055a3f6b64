"""Who is in which group in this process, and the in-process layer (``memory://``).

:class:`Registry` is the local membership every layer shares; :class:`MemoryLayer` delivers a
group message to the registry's members and nothing else, and keeps the history of the
groups ``WEBSOCKET_GROUPS_HISTORY`` names in this process (:class:`MemoryHistory`).

Concurrency: the registry's lock is held only to read or change the dictionaries, never
around a call into a member or any I/O, so it is safe under threads, gevent and eventlet
alike (monkey-patched ``threading.Lock`` is a cooperative lock). The layer's presence
events are decided under a lock of their own and delivered after it is released, in the
order decided (:meth:`MemoryLayer.present`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dwebsocket.groups.batch import deliver_batch
from dwebsocket.groups.history import (
    PAGE_BYTES,
    Followers,
    Item,
    Items,
    Page,
    Policy,
    Position,
    new_epoch,
    policy,
)
from dwebsocket.groups.presence import EventQueue, Local, PresenceRegistry, Present, event_text
from dwebsocket.typing import Message

__all__ = [
    "Member",
    "MemoryHistory",
    "MemoryLayer",
    "Registry",
    "fan_out",
    "fan_out_item",
    "fan_out_items",
]

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
    One dropped so leaves its presence too (:attr:`dropped`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(member) keys: members are compared by identity whatever __eq__ they define.
        self._groups: dict[str, dict[int, Member]] = {}
        self._memberships: dict[int, set[str]] = {}
        self._sweep_at: dict[str, int] = {}
        #: Members of history groups, with their position (``history.Follower``).
        self.followers = Followers()
        #: Present members and event listeners (``presence``).
        self.presence = PresenceRegistry()
        #: Called with each closed member this registry drops by itself (at a delivery,
        #: in a sweep) rather than through a leave: :mod:`dwebsocket.groups` has it
        #: leave its presence too. Must not block (the Redis reader may call it).
        self.dropped: Callable[[Member], None] | None = None

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
            for other in closed:  # a history group's follower holds its member
                self.followers.remove(group, other)
                self.report_dropped(other)
        return first

    def report_dropped(self, member: Member) -> None:
        """Hand ``member``, dropped as closed, to :attr:`dropped`; never raises."""
        dropped = self.dropped
        if dropped is not None:
            try:
                dropped(member)
            except Exception:  # the delivery or the join that found it goes on
                logger.exception("Could not remove a closed group member's presence")

    def remove(self, group: str, member: Member) -> bool:
        """Remove ``member`` from ``group`` (nothing happens if it is not a member).

        Returns True if this emptied the group (its last local member left)."""
        self.followers.remove(group, member)
        with self._lock:
            return self._remove(group, member)

    def remove_all(self, member: Member) -> list[str]:
        """Remove ``member`` from every group. Returns the groups this emptied."""
        with self._lock:
            groups = list(self._memberships.get(id(member), ()))
            emptied = [group for group in groups if self._remove(group, member)]
        self.followers.remove_all(member, set(groups))
        return emptied

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
    return fan_out_items(registry, group, Items([Item(group, message, None)]))


def fan_out_item(registry: Registry, item: Item) -> list[str]:
    """:func:`fan_out` for a message of a history group (see :func:`fan_out_items`)."""
    return fan_out_items(registry, item.group, Items([item]))


def fan_out_items(registry: Registry, group: str, items: Items) -> list[str]:
    """Hand consecutive messages of ``group`` to every open local member, each member
    getting them all in one ``deliver_batch`` (the batch made once for all); never blocks.

    A member that joined a history group through ``join(..., since=...)`` gets them through
    its follower (once, in order, with their positions if its client speaks ``dws``); any
    other member as they are (but one that left just now, whose client speaks ``dws``:
    in envelopes). Closed members are dropped from the registry on the way.
    Returns the groups that became empty because of that (the Redis layer unsubscribes
    from them)."""
    members = registry.members(group)
    followers = registry.followers.get(group)
    plain = items.batch(False)
    kept = items.items[0].position is not None  # a history group's (its members follow)
    closed: list[Member] = []
    for member in members:
        if member.is_closed():
            closed.append(member)
            continue
        try:
            follower = followers.get(id(member)) if followers else None
            if follower is None:
                if not getattr(member, "dws", False):
                    deliver_batch(member, plain)
                elif kept:
                    # A member of a history group without a follower left it after
                    # ``members`` was read: its client still gets the message in its
                    # envelope.
                    deliver_batch(member, items.batch(True))
                else:  # the application's text that looks like an envelope, escaped
                    deliver_batch(member, items.escaped())
            else:
                follower.deliver_items(items)
        except Exception:
            # deliver() must not raise; if a backend's does, that member alone pays for it.
            logger.exception("Dropping group member %r: deliver() raised", member)
            closed.append(member)
    emptied: list[str] = []
    for member in closed:
        emptied.extend(registry.remove_all(member))
        registry.report_dropped(member)
    return emptied


@dataclass
class _Kept:
    """One group's history in this process."""

    epoch: str
    offset: int = 0
    last: float = 0.0  # time.monotonic() of the last message
    entries: deque[tuple[int, float, Message]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    swept: bool = False  # taken out of MemoryHistory: the group's next one is another


class MemoryHistory:
    """The history of groups in this process: per group, its last messages (at most
    ``size``, none older than ``ttl``), an epoch made when the group's history starts and
    an offset counting its messages.

    A group's history goes (and with it its epoch) once its last message is older than its
    ``ttl``: decided under the history's own lock, by the send or read that finds it so
    (the history begins again in place, in a new epoch), or by a sweep, made when a new
    group's history brings their number to twice what the last sweep left (at least 64).
    So fewer histories are kept than twice what the last sweep left (or 64), not only
    those of the groups active lately: an expired one that nobody sends to or reads stays,
    with its messages, until the next sweep (for good, if no new group comes). A send that
    took the history before it expired and waited for its lock meanwhile so appends in the
    new epoch, never on in the lost one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _Kept] = {}
        self._sweep_at = 64

    def kept(self, group: str) -> _Kept:
        """The history of ``group``, made if it has none. Use it under its ``lock``, after
        :meth:`renewed` (it may have been swept meanwhile)."""
        with self._lock:
            kept = self._groups.get(group)
            if kept is None:
                kept = self._groups[group] = _Kept(new_epoch(), last=time.monotonic())
                if len(self._groups) >= self._sweep_at:
                    self._sweep(time.monotonic())
            return kept

    @staticmethod
    def renewed(kept: _Kept, policy: Policy, now: float) -> bool:
        """False if ``kept`` was swept (take the group's history again); else True, ``kept``
        begun again in a new epoch if its last message is older than ``policy.ttl``. Call
        with ``kept.lock`` held."""
        if kept.swept:
            return False
        if now - kept.last > policy.ttl:
            kept.epoch, kept.offset, kept.last = new_epoch(), 0, now
            kept.entries.clear()
        return True

    def _sweep(self, now: float) -> None:
        for group, kept in list(self._groups.items()):
            found = policy(group)
            # One whose lock is held is in use: its user renews it (no sweep waits for a
            # send's fan-out). Taken out under its lock, so that none appends to it after.
            if (found is None or now - kept.last > found.ttl) and kept.lock.acquire(False):
                try:
                    if found is None or now - kept.last > found.ttl:
                        kept.swept = True
                        del self._groups[group]
                finally:
                    kept.lock.release()
        self._sweep_at = max(64, 2 * len(self._groups))

    def append(self, kept: _Kept, message: Message, policy: Policy, now: float) -> Position:
        """Keep ``message`` as ``kept``'s next one (call with ``kept.lock`` held, after
        :meth:`renewed` at ``now``)."""
        kept.offset += 1
        kept.last = now
        entries = kept.entries
        entries.append((kept.offset, now, message))
        while len(entries) > policy.size or entries[0][1] < now - policy.ttl:
            entries.popleft()
        return Position(kept.epoch, kept.offset)

    def read(self, group: str, policy: Policy, after: int, count: int) -> Page:
        """The messages of ``group`` kept after offset ``after``, at most ``count`` of them
        and about :data:`~dwebsocket.groups.history.PAGE_BYTES` (see ``history.Page``),
        none older than ``policy.ttl`` nor outside its last ``policy.size``."""
        while True:
            kept = self.kept(group)
            with kept.lock:
                now = time.monotonic()
                if self.renewed(kept, policy, now):
                    return self._read(kept, policy, now, after, count)

    @staticmethod
    def _read(kept: _Kept, policy: Policy, now: float, after: int, count: int) -> Page:
        """:meth:`read` of ``kept`` (call with ``kept.lock`` held)."""
        kept_entries = kept.entries
        if after >= kept.offset:  # nothing after it (a position from the future)
            return Page(kept.epoch, kept.offset, [])
        # Offsets are consecutive: the first one wanted is at a known index. None past
        # the last ``size``: the deque is trimmed by the policy of the last append, and
        # a new setting may keep fewer (as Redis, which trims about ``size``, reads).
        first = max(after, kept.offset - policy.size) + 1
        start = max(0, first - kept_entries[0][0]) if kept_entries else 0
        entries: list[tuple[int, Message]] = []
        size = 0
        for offset, at, message in itertools.islice(kept_entries, start, start + count):
            if at >= now - policy.ttl:
                entries.append((offset, message))
                size += len(message)
                if size >= PAGE_BYTES:
                    break
        return Page(kept.epoch, kept.offset, entries)


class MemoryLayer:
    """The in-process layer: a message reaches the members in this process only.

    It needs no set-up and suits ``runserver``, a single gevent or eventlet process, and
    tests. Sending costs one :meth:`~dwebsocket.websocket.WebSocket.deliver` per member.
    """

    url = "memory://"

    def __init__(self, registry: Registry) -> None:
        from dwebsocket.groups.control import Recent  # it imports this module

        self.registry = registry
        self.history = MemoryHistory()
        self.recent = Recent()
        # Presence events (see present()): per group, the keys whose last event was a
        # join (those present already when the layer is made count as told), and the
        # events decided and not yet delivered.
        self._events_lock = threading.Lock()
        self._told: dict[str, set[str]] = {}
        for group in registry.presence.groups():
            self._told[group] = {key for key, *_ in registry.presence.entries(group)}
        self._events = EventQueue(registry.presence)

    def join(self, group: str, member: Member) -> None:
        self.registry.add(group, member)

    def leave(self, group: str, member: Member) -> None:
        self.registry.remove(group, member)

    def leave_all(self, member: Member) -> None:
        self.registry.remove_all(member)

    def send(self, group: str, message: Message, *, fail_silently: bool = True) -> str | None:
        """Deliver ``message`` to this process's members of ``group``; returns its position
        if the group keeps history, else None."""
        kept_by = policy(group)
        if kept_by is None:
            fan_out(self.registry, group, message)
            return None
        history = self.history
        while True:
            kept = history.kept(group)
            # Under the group's lock: members get the group's messages in position order.
            with kept.lock:
                now = time.monotonic()
                if history.renewed(kept, kept_by, now):
                    position = history.append(kept, message, kept_by, now)
                    fan_out_item(self.registry, Item(group, message, position))
                    return str(position)

    def read(self, group: str, after: int, count: int) -> Page:
        """The history of ``group`` after offset ``after`` (see ``history.Page``)."""
        kept_by = policy(group)
        if kept_by is None:
            raise ValueError(f"group {group!r} keeps no history (WEBSOCKET_GROUPS_HISTORY)")
        return self.history.read(group, kept_by, after, count)

    def present(self, group: str, entry: Local, count: int, info: str, joined: bool) -> None:
        """``entry``'s key changed in ``group`` (the caller's change made it ``count``
        sockets, showing ``info``): a join event if the key is present now and the
        listeners were last told it left (or nothing), a leave if it is absent now and
        they were last told it joined (with ``info``, the leaving socket's). Never blocks.

        Decided from the registry as it is now, under the layer's lock, so that each
        key's events alternate and end on its state: two threads changing one key at
        once (a user's only tab closing as another opens) decided from the counts each
        saw and delivered each on its own, and a listener could get the second event
        before the first -- the user left while present, or the reverse. Changes that
        overlap may go unannounced as a pair, as on Redis (``present`` there). Delivered
        in the order decided, with no lock held: a listener's ``deliver()`` may call back
        into the groups (a leave, a close whose signal runs at once). An event decided
        while a thread (or a ``deliver()`` up this one's stack) delivers the group's
        events is queued, and that thread delivers it after the ones before it: this
        call may return before the listeners have it."""
        with self._events_lock:
            now, shown = self.registry.presence.count(group, entry.key)
            told = self._told.get(group)
            if (now > 0) == (told is not None and entry.key in told):
                return  # the listeners know
            if now:
                self._told.setdefault(group, set()).add(entry.key)
                text = event_text("join", group, entry.key, entry.user, shown or info)
            else:
                assert told is not None
                told.discard(entry.key)
                if not told:
                    del self._told[group]
                text = event_text("leave", group, entry.key, entry.user, info)
            deliver = self._events.put(group, text)
        if deliver:
            self._events.deliver(group)

    def listen(self, group: str) -> None:
        """Nothing to do: this process is every process."""

    def presence(self, group: str) -> list[Present]:
        """Who is present in ``group`` (this process is every process). Never blocks."""
        return self.registry.presence.present(group)

    def control(self, group: str, payload: bytes, *, fail_silently: bool = True) -> None:
        """Hand command ``payload`` to this process's members of ``group`` (:mod:`.control`),
        and remember it for :meth:`recent_controls`."""
        from dwebsocket.groups.control import dispatch

        self.recent.add(group, payload)
        dispatch(self.registry, group, payload)

    def control_many(
        self, groups: Sequence[str], payload: bytes, *, fail_silently: bool = True
    ) -> None:
        """:meth:`control` of ``payload`` to each of ``groups``."""
        for group in groups:
            self.control(group, payload)

    def recent_controls(self, group: str, within: float) -> list[tuple[bytes, float]]:
        """The commands sent to ``group`` in the last ``within`` seconds (at most
        ``control.MEMORY``): ``(payload, seconds ago)``, oldest first. Never blocks."""
        return self.recent.since(group, within)

    def recent_controls_many(
        self, groups: list[str], within: float
    ) -> list[list[tuple[bytes, float]] | None]:
        """:meth:`recent_controls` of each of ``groups``."""
        return [self.recent.since(group, within) for group in groups]

    def close(self) -> None:
        """Nothing to release."""
