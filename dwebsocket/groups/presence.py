"""Presence: who is in a group, one entry per user, across processes; join/leave events.

``ws.join(group, presence=info)`` makes a socket a present member; ``events=True`` has it
receive the group's join and leave events. :func:`dwebsocket.groups.presence` lists the
present members, one :class:`Present` per user (anonymous sockets one each).

This module keeps the local part (:class:`PresenceRegistry`: this process's present
members, per group and user) and the JSON of the events; the layers keep the shared part:
``memory://`` nothing more, Redis one hash per group (:mod:`.redis`).

Events are text messages, JSON::

    {"group": "room", "presence": "join", "key": "user:42", "user": "42", "info": {...}}

``join`` when a user's first socket anywhere becomes present, ``leave`` when their last
one leaves (a second tab is no join, closing one of two is no leave). They are decided
where all processes' members are known (in one Lua script on Redis; on ``memory://``
under one lock, see ``MemoryLayer.present``), so each happens once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from dwebsocket.groups.memory import Member

__all__ = [
    "INFO_LIMIT",
    "EventQueue",
    "Info",
    "InfoList",
    "Local",
    "Mirror",
    "PresenceRegistry",
    "Present",
    "deliver_event",
    "event_text",
    "frozen",
    "load_info",
    "member_key",
    "thawed",
]

logger = logging.getLogger("dwebsocket.groups")

#: Bytes of JSON the info of a present member may take.
INFO_LIMIT = 1024


def _read_only(self: object, *args: object, **kwargs: object) -> Any:
    raise TypeError(
        "a presence info is read-only: every answer of groups.presence() shares it; "
        "change a copy (dict(info), or copy.deepcopy(info) for the lists and dicts in it)"
    )


class Info(dict[str, Any]):
    """A present member's info as :func:`dwebsocket.groups.presence` answers it: a dict
    that refuses changes (``TypeError``), its lists and dicts too.

    The layer keeps one per user and hands the same one to every answer: copying each at
    each answer cost a 10,000-member group's ``presence()`` ten times more (and the
    garbage collector's pauses), and changing it in place changed what every later answer
    in the process showed. ``dict(info)`` and ``copy.copy`` give a plain dict,
    ``copy.deepcopy`` and pickling plain dicts and lists all through; ``json.dumps``
    reads it as any dict."""

    __slots__ = ()

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return thawed(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (thawed(self),)


class InfoList(list[Any]):
    """A list in an :class:`Info`: refuses changes as it does."""

    __slots__ = ()

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return thawed(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return list, (thawed(self),)


def frozen(value: Any) -> Any:
    """JSON data (what ``json.loads`` makes) with its dicts :class:`Info` and its lists
    :class:`InfoList`, all through."""
    if isinstance(value, dict):
        return Info({key: frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return InfoList([frozen(item) for item in value])
    return value


def thawed(value: Any) -> Any:
    """A copy of JSON data with plain dicts and lists, all through."""
    if isinstance(value, dict):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thawed(item) for item in value]
    return value


def load_info(info_json: str) -> Info:
    """The :class:`Info` of a present member's info JSON (a JSON object)."""
    found: Info = frozen(json.loads(info_json))
    return found


class Present(NamedTuple):
    """One present user (or anonymous socket) of a group."""

    #: ``"user:<pk>"``, or ``"socket:<id>"`` for an anonymous socket.
    key: str
    #: The user's primary key as a string (as Django keeps it in the session); None for
    #: an anonymous socket.
    user: str | None
    #: The ``presence=`` info of one of the user's sockets (the first to join, in the
    #: process that answers for it); read-only (an :class:`Info`: ``dict(info)`` to change
    #: a copy).
    info: dict[str, Any]
    #: How many of the user's sockets are present, in every process.
    sockets: int


_token = ("", 0)


def _process_token() -> str:
    """A random id of this process (a new one after a fork)."""
    global _token
    if _token[1] != os.getpid():
        _token = (os.urandom(6).hex(), os.getpid())
    return _token[0]


def member_key(member: Member) -> tuple[str, str | None]:
    """``(key, user)`` of ``member``: its user's, or its own if anonymous."""
    from dwebsocket.users import owner

    found = owner(member, lookup=True)
    if found is not None:
        return "user:" + found.user, found.user
    return f"socket:{_process_token()}-{id(member):x}", None


def check_info(info: object) -> str:
    """The JSON of ``info``; ``TypeError`` unless a JSON-able dict, ``ValueError`` if
    over :data:`INFO_LIMIT` bytes or holding what JSON cannot carry (NaN, an infinity)."""
    if not isinstance(info, dict):
        raise TypeError(f"presence info is a dict, not {type(info).__name__}")
    # allow_nan=False: every listener's JSON.parse would refuse the events of a NaN.
    text = json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text.encode()) > INFO_LIMIT:
        raise ValueError(f"presence info over {INFO_LIMIT} bytes of JSON")
    return text


def event_text(event: str, group: str, key: str, user: str | None, info_json: str) -> str:
    """The text message of a join or leave event (see the module docstring)."""
    return event_prefix(group) + event + event_suffix(key, user, info_json)


def event_prefix(group: str) -> str:
    """The event's JSON up to its name (which the Redis script adds)."""
    return '{"group":' + json.dumps(group) + ',"presence":"'


def event_suffix(key: str, user: str | None, info_json: str) -> str:
    return f'","key":{json.dumps(key)},"user":{json.dumps(user)},"info":{info_json}}}'


class Local(NamedTuple):
    """A present socket's entry: its key, user and info (JSON, and as given)."""

    key: str
    user: str | None
    info: str  # JSON
    data: dict[str, Any]


class PresenceRegistry:
    """This process's present members and event listeners, per group.

    Like the group registry, its lock is held only over the dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # group -> key -> member id -> (member, its entry), in joining order.
        self._present: dict[str, dict[str, dict[int, tuple[Member, Local]]]] = {}
        self._of: dict[int, dict[str, Local]] = {}  # member id -> group -> entry
        self._listeners: dict[str, dict[int, Member]] = {}
        self._listening: dict[int, set[str]] = {}
        #: The answer of :meth:`present`, kept up to date: group -> key -> Present.
        self._answers: dict[str, dict[str, Present]] = {}

    def add(self, group: str, member: Member, entry: Local) -> tuple[int, str]:
        """Make ``member`` present in ``group``. Returns how many sockets of its key are
        present here now, and the info shown for the key (its first socket's)."""
        with self._lock:
            keys = self._present.setdefault(group, {})
            sockets = keys.setdefault(entry.key, {})
            sockets[id(member)] = (member, entry)
            self._of.setdefault(id(member), {})[group] = entry
            first = next(iter(sockets.values()))[1]
            answer = Present(entry.key, first.user, first.data, len(sockets))
            self._answers.setdefault(group, {})[entry.key] = answer
            return len(sockets), first.info

    def has(self, group: str, member: Member) -> bool:
        """True if ``member`` is present in ``group``."""
        with self._lock:
            return group in self._of.get(id(member), ())

    def remove(self, group: str, member: Member) -> tuple[Local, int, str] | None:
        """Make ``member`` absent from ``group``. Returns its entry, how many sockets of
        its key are left here and the info now shown, or None if it was not present."""
        with self._lock:
            return self._remove(group, member)

    def _remove(self, group: str, member: Member) -> tuple[Local, int, str] | None:
        entries = self._of.get(id(member))
        entry = entries.pop(group, None) if entries is not None else None
        if entry is None:
            return None
        if not entries:
            del self._of[id(member)]
        keys = self._present[group]
        sockets = keys[entry.key]
        del sockets[id(member)]
        left = len(sockets)
        answers = self._answers[group]
        if sockets:
            first = next(iter(sockets.values()))[1]
            answers[entry.key] = Present(entry.key, first.user, first.data, left)
            return entry, left, first.info
        del keys[entry.key], answers[entry.key]
        if not keys:
            del self._present[group], self._answers[group]
        return entry, left, entry.info

    def remove_all(self, member: Member) -> list[tuple[str, Local, int, str]]:
        """Make ``member`` absent everywhere, stop its events: ``(group, entry, left,
        info)`` for each group it was present in."""
        with self._lock:
            done = []
            for group in list(self._of.get(id(member), ())):
                removed = self._remove(group, member)
                if removed is not None:
                    done.append((group, *removed))
            for group in self._listening.pop(id(member), ()):
                listeners = self._listeners.get(group)
                if listeners is not None:
                    listeners.pop(id(member), None)
                    if not listeners:
                        del self._listeners[group]
            return done

    def involves(self, member: Member) -> bool:
        """True if ``member`` is present in a group or listens to one's events."""
        with self._lock:
            return id(member) in self._of or id(member) in self._listening

    def listen(self, group: str, member: Member) -> None:
        with self._lock:
            self._listeners.setdefault(group, {})[id(member)] = member
            self._listening.setdefault(id(member), set()).add(group)

    def unlisten(self, group: str, member: Member) -> None:
        with self._lock:
            listeners = self._listeners.get(group)
            if listeners is not None and listeners.pop(id(member), None) is not None:
                if not listeners:
                    del self._listeners[group]
                listening = self._listening[id(member)]
                listening.discard(group)
                if not listening:  # else involves() stays True, the set kept for good
                    del self._listening[id(member)]

    def listeners(self, group: str) -> list[Member]:
        with self._lock:
            return list(self._listeners.get(group, {}).values())

    def present(self, group: str) -> list[Present]:
        """:class:`Present` per key here in ``group`` (a new list; kept up to date at each
        change, so this costs a copy)."""
        with self._lock:
            return list(self._answers.get(group, {}).values())

    def count(self, group: str, key: str) -> tuple[int, str | None]:
        """How many sockets of ``key`` are present here in ``group``, and the info shown
        for it (None if none is)."""
        with self._lock:
            sockets = self._present.get(group, {}).get(key)
            if not sockets:
                return 0, None
            return len(sockets), next(iter(sockets.values()))[1].info

    def entries(self, group: str) -> list[tuple[str, str | None, str, int]]:
        """``(key, user, info JSON, sockets)`` per key present here in ``group``."""
        with self._lock:
            keys = self._present.get(group, {})
            return [
                (key, first[1].user, first[1].info, len(sockets))
                for key, sockets in keys.items()
                for first in (next(iter(sockets.values())),)
            ]

    def groups(self) -> list[str]:
        """Groups with a present member here."""
        with self._lock:
            return list(self._present)

    def listened(self) -> list[str]:
        """Groups with a listener here."""
        with self._lock:
            return list(self._listeners)


def deliver_event(registry: PresenceRegistry, group: str, text: str) -> None:
    """Hand event ``text`` to this process's listeners of ``group``; never blocks."""
    for member in registry.listeners(group):
        if not member.is_closed():
            member.deliver(text)


class EventQueue:
    """Events a layer decided for this process's listeners, per group, handed to them in
    the order queued, by one thread at a time, with no lock held while a listener's
    ``deliver()`` runs: it may call back into the groups (a leave, a close whose signal
    runs at once), and the event that decides is queued behind the current one instead
    of overtaking it or waiting on a lock its own thread holds. A layer queues an event
    under the lock it decided it under, so a key's events are delivered in that order."""

    def __init__(self, registry: PresenceRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._queued: dict[str, deque[str]] = {}
        self._delivering: set[str] = set()

    def put(self, group: str, text: str) -> bool:
        """Queue event ``text`` of ``group``. Returns True if the caller is to
        :meth:`deliver` the group's events (once it holds no lock), False if a thread (or
        a ``deliver()`` up the caller's stack) is delivering them: it delivers this one
        too. Never blocks."""
        with self._lock:
            self._queued.setdefault(group, deque()).append(text)
            if group in self._delivering:
                return False
            self._delivering.add(group)
            return True

    def deliver(self, group: str) -> None:
        """Deliver ``group``'s queued events, oldest first, until none is left (after
        :meth:`put` returned True): this call may return before the listeners have an
        event queued meanwhile by another thread. A ``deliver()`` that raises is logged,
        and the others' events go on."""
        try:
            while True:
                with self._lock:
                    queued = self._queued.get(group)
                    if not queued:
                        self._queued.pop(group, None)
                        self._delivering.discard(group)
                        return
                    text = queued.popleft()
                try:
                    deliver_event(self._registry, group, text)
                except Exception:  # deliver() must not raise; the others' events go on
                    logger.exception("Group %r: a presence event's deliver() raised", group)
        except BaseException:  # the next event queued delivers what is left, in order
            with self._lock:
                self._delivering.discard(group)
            raise


class Mirror:
    """A process's copy of one group's presence on Redis, brought up to date from the
    changes since its version (see ``redis.PRESENCE_SCRIPT``): asking again after one
    member joined costs one small script and a copy of the answer, not a read of every
    member. Call it with its ``lock`` held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = ""
        self.n = 0
        #: SHA-1 of the change that made ``n`` (its entry in the log), "" if unknown.
        self.digest = ""
        self.live: frozenset[str] = frozenset()
        # key -> process -> (user, info, sockets)
        self._by_key: dict[str, dict[str, tuple[str | None, dict[str, Any], int]]] = {}
        self._answer: dict[str, Present] = {}

    def answer(self) -> list[Present]:
        return list(self._answer.values())

    def update(
        self,
        asked: tuple[str, int, str],
        version: str,
        live: frozenset[str],
        kind: str | None,
        data: Any,
        digest: str = "",
    ) -> None:
        """Apply the script's answer to the question ``asked`` (the epoch, ``n`` and
        digest the copy had): ``kind`` None (nothing changed), ``"log"`` (``data`` the
        changes) or ``"full"`` (``data`` every field, as JSON; ``digest`` its version's)."""
        epoch, _, count = version.partition(":")
        n = int(count or 0)
        # A full answer to the copy as it still is is newer than it, whatever its n (Redis
        # went back to an older copy); else a concurrent reader's may have overtaken it.
        unchanged = asked == (self.epoch, self.n, self.digest)
        if kind == "full" and (unchanged or epoch != self.epoch or n > self.n):
            self._by_key = {}
            for field, value in json.loads(data).items():
                self._set(field, value)
            self.epoch, self.n, self.digest, self.live = epoch, n, digest, live
            self._rebuild()
            return
        if epoch != self.epoch:
            return  # a concurrent reader's older answer
        touched = set()
        if kind == "log":
            for change in data:
                # "n\nfield\nvalue": the field's key may hold newlines (a user's pk is any
                # text), the value (JSON, or "" if deleted) holds none.
                number, rest = change.decode().split("\n", 1)
                field, _, value = rest.rpartition("\n")
                if int(number) <= self.n:
                    continue  # applied already, by a concurrent reader
                touched.add(self._set(field, json.loads(value) if value else None))
            if n > self.n and data:
                self.n, self.digest = n, hashlib.sha1(data[-1], usedforsecurity=False).hexdigest()
        if live != self.live:
            self.live = live
            self._rebuild()
        else:
            for key in touched:
                self._recompute(key)

    def _set(self, field: str, value: list[Any] | None) -> str:
        process, _, key = field.partition("|")
        entries = self._by_key.setdefault(key, {})
        if value is None:
            entries.pop(process, None)
            if not entries:
                del self._by_key[key]
        else:
            entries[process] = (value[1], frozen(value[2]), value[3])
        return key

    def _recompute(self, key: str) -> None:
        total, first = 0, None
        for process, entry in self._by_key.get(key, {}).items():
            if process in self.live:
                total += entry[2]
                first = first or entry
        if first is None:
            self._answer.pop(key, None)
        else:
            self._answer[key] = Present(key, first[0], first[1], total)

    def _rebuild(self) -> None:
        self._answer = {}
        for key in self._by_key:
            self._recompute(key)
