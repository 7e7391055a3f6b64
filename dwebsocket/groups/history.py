"""Group history and recovery: a group may keep its last messages, and a member that was
away can join again from the position of the last message it saw.

``WEBSOCKET_GROUPS_HISTORY`` says which groups keep history (:func:`policy`)::

    WEBSOCKET_GROUPS_HISTORY = {
        "chat.*": {"size": 1000, "ttl": 300},   # the last 1,000 messages, 5 minutes each
    }

Positions: every message a history group keeps gets a position, ``"<epoch>:<offset>"``.
The offset counts the group's messages (1, 2, 3, ...); the epoch names one unbroken run of
offsets. A new epoch starts when the group's history is lost as a whole (Redis flushed or
restarted without persistence, the group silent for longer than its ``ttl``, a
``memory://`` process restarted): a position of another epoch cannot be resumed from, and
says so.
Positions are opaque to applications; :class:`Position` compares them.

Recovery (:func:`recover`): a member joining with ``since`` gets every message after that
position, then the live ones, in order, none twice and none missing. The layer registers
the member first, buffering what is delivered live (a :class:`Follower`); then the history
is read and sent (read again up to what was buffered, if the buffer overflowed or skips
offsets, and while what was buffered meanwhile gets less: it goes at the client's pace,
not into its send queue at once); then the buffered messages newer than the last one
replayed are delivered
(checked for gaps as live messages are) and the follower goes live. Whatever
cannot be recovered (the position is of another epoch, or older than what is kept) is
reported in the returned :class:`Recovery`, so the view can send the full state instead.

The layers (``memory.py``, ``redis.py``) keep the messages; this module holds the parts
they share.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import operator
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dwebsocket import dws
from dwebsocket.exceptions import GroupsUnavailable
from dwebsocket.groups.batch import Batch, deliver_batch
from dwebsocket.typing import Message

__all__ = [
    "Checked",
    "Follower",
    "Followers",
    "Item",
    "Items",
    "Page",
    "Policy",
    "Position",
    "Recovery",
    "checked",
    "new_epoch",
    "policy",
    "recover",
]

logger = logging.getLogger("dwebsocket.groups")

#: Messages one :meth:`Page` read returns at most (recovery reads page after page).
PAGE = 1000
#: Bytes of messages (characters of text) one page holds at most, but for the message that
#: crosses it (at least one comes): a replay holds a page until the client has taken it,
#: and a client may ask for any position and read slowly, so a page is bounded in size
#: as well as in count (group messages are up to 8 MiB each).
PAGE_BYTES = 1024 * 1024
#: The close code of a member that missed live messages its client can recover.
GAP_CLOSE = 4003
#: Live messages a recovering member buffers at most; past it the oldest are dropped and
#: read again from the history. The buffer is bounded in size too (group messages are up
#: to 8 MiB each): to ``WEBSOCKET_SEND_QUEUE_SIZE``, what the member's send queue holds.
BUFFER = 10_000
#: The largest offset a position may have: a Redis stream entry's sequence number is a
#: 64-bit unsigned integer.
MAX_OFFSET = 2**64 - 1

#: The longest a history's ``ttl`` may be, in seconds (ten years): Redis takes it in ms,
#: as a 64-bit integer added to its clock; past some 1e15 s it refused every message of
#: the group, which the layer took for Redis unreachable (holding back every group's
#: sends), and an infinite one raised OverflowError at each send.
MAX_TTL = 10 * 365 * 24 * 3600
#: The most messages a history's ``size`` may keep (Redis's stream MAXLEN is a 64-bit
#: integer, refused past 2**63 - 1 as above).
MAX_HISTORY_SIZE = 2**62


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """How much history a group keeps: its last ``size`` messages, each for ``ttl`` s."""

    size: int
    ttl: float


def parse_setting(value: Any) -> tuple[list[tuple[str, Policy]], list[str]]:
    """``WEBSOCKET_GROUPS_HISTORY`` as ``(pattern, Policy)`` pairs in lookup order (exact
    names first, then patterns in the order given), and the problems found (for the system
    check; an entry with a problem is left out)."""
    if value is None:
        return [], []
    if not isinstance(value, Mapping):
        return [], [f"must be a dict of group name or pattern -> options, not {value!r}"]
    exact: list[tuple[str, Policy]] = []
    patterns: list[tuple[str, Policy]] = []
    problems: list[str] = []
    for name, options in value.items():
        if not isinstance(name, str) or not name:
            problems.append(f"{name!r}: keys are group names or patterns (non-empty str)")
            continue
        if not isinstance(options, Mapping):
            problems.append(f"{name!r}: expected {{'size': N, 'ttl': SECONDS}}, not {options!r}")
            continue
        unknown = set(options) - {"size", "ttl"}
        size, ttl = options.get("size"), options.get("ttl")
        if unknown:
            problems.append(f"{name!r}: unknown option(s) {', '.join(map(repr, sorted(unknown)))}")
        elif type(size) is not int or not 1 <= size <= MAX_HISTORY_SIZE:
            problems.append(
                f"{name!r}: 'size' must be an int from 1 to 2**62 (messages), not {size!r}"
            )
        elif (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not issubclass(type(ttl), (int, float))  # a lazy number: no float()
            or not 0 < ttl <= MAX_TTL  # NaN and the infinities too
        ):
            problems.append(
                f"{name!r}: 'ttl' must be a number of seconds > 0 and at most {MAX_TTL} "
                f"(ten years), not {ttl!r}"
            )
        else:
            target = patterns if any(c in name for c in "*?[") else exact
            target.append((name, Policy(size, float(ttl))))
    return exact + patterns, problems


class Checked(dict[str, dict[str, Any]]):
    """A ``WEBSOCKET_GROUPS_HISTORY`` value found right (:func:`checked`): a copy of it,
    two levels deep, so that the setting changed in place no longer equals it; its
    policies in lookup order (``rules``); :func:`policy`'s answers so far (``answers``)."""

    __slots__ = ("answers", "rules")

    def __init__(self, value: Mapping[str, Mapping[str, Any]], rules: list[tuple[str, Policy]]):
        super().__init__((name, dict(options)) for name, options in value.items())
        self.rules = rules
        self.answers: dict[str, Policy | None] = {}


_checked: Checked | None = None
_CACHE_SIZE = 4096


def checked(value: object) -> Checked:
    """``value`` (of ``WEBSOCKET_GROUPS_HISTORY``) as a :class:`Checked`; raises
    ``ValueError`` with its first problem. Never blocks.

    Read at every ``groups.send``: the last value found right is kept and compared with
    ``value`` by value, not by identity -- a dict changed in place, or an override reusing
    one, is checked and read again -- and by the order of its keys, which dicts compare
    without: patterns are tried in the order written. (``True == 1``: a ``size`` changed
    from 1 to True in place goes on as 1 rather than raising.)"""
    global _checked
    last = _checked
    if last is not None and last == value and list(last) == list(value):
        return last
    rules, problems = parse_setting(value)
    if problems:
        raise ValueError(problems[0])
    found = Checked(value if isinstance(value, Mapping) else {}, rules)
    _checked = found
    return found


def policy(group: str) -> Policy | None:
    """The history ``group`` keeps under ``WEBSOCKET_GROUPS_HISTORY``, or None.

    An exact name wins over patterns; patterns (``fnmatch``: ``*``, ``?``, ``[...]``) are
    tried in the order the setting lists them; dwebsocket's own groups (``dwebsocket.``,
    :mod:`dwebsocket.users`) keep none, whatever they match. Read at each call
    (``override_settings`` works, and so does changing the setting's dict in place); the
    answers are cached per value of the setting. Never blocks."""
    from dwebsocket.conf import settings

    value = settings.WEBSOCKET_GROUPS_HISTORY
    if not value:
        return None
    found = checked(value)  # found right by the read: the same value, compared again
    answers = found.answers
    try:
        return answers[group]
    except KeyError:
        pass
    from dwebsocket.groups import RESERVED_PREFIX

    answer = None
    # dwebsocket's own groups never: a client's joined envelope, and the position its
    # client sends back in the URL, would name its session (its key) and its user.
    if not group.startswith(RESERVED_PREFIX):
        for pattern, candidate in found.rules:
            if pattern == group or fnmatch.fnmatchcase(group, pattern):
                answer = candidate
                break
    if len(answers) >= _CACHE_SIZE:
        answers.clear()  # group names are unbounded (per-user groups): so is no cache
    answers[group] = answer
    return answer


# -- positions --------------------------------------------------------------------------------


class Position(NamedTuple):
    """A message's place in its group's history: ``str(position)`` is ``"epoch:offset"``.

    Positions of one epoch are ordered by offset; positions of different epochs are not
    comparable (compare ``epoch`` first)."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: object) -> Position | None:
        """The position ``text`` names, or None if it names none (never raises)."""
        if not isinstance(text, str) or len(text) > 64:
            return None
        epoch, sep, offset = text.rpartition(":")
        if not sep or not epoch or not offset.isdigit() or not offset.isascii():
            return None
        if not epoch.isascii() or not epoch.isalnum():
            return None
        number = int(offset)
        if number > MAX_OFFSET:  # no group ever gave it (and Redis would refuse it)
            return None
        return cls(epoch, number)


def new_epoch() -> str:
    """A new epoch name: 12 random lower-case hex digits."""
    return secrets.token_hex(6)


# -- what a join returns ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """What ``ws.join(group, since=...)`` did.

    ``position``: the group's position when the member went live, i.e. of the last message
    it got from the history or the one before the first live one (None: the group keeps no
    history, or Redis could not be asked). ``since``: the position asked for.
    ``recovered``: True when every message after ``since`` was delivered (``missed`` of
    them). When ``failed`` (``since`` given, not recovered) the view should send the full
    state: some messages the client missed are gone.
    """

    since: str | None
    position: str | None
    recovered: bool
    missed: int = 0

    @property
    def failed(self) -> bool:
        """True when a position was given but what followed it could not all be delivered."""
        return self.since is not None and not self.recovered


# -- a message with its position --------------------------------------------------------------


class Item:
    """A group message as followers get it: the message, its position (None when it was
    not kept: Redis was unreachable), and its ``dws`` envelope, encoded once per message
    whatever the number of members."""

    __slots__ = ("_envelope", "group", "message", "position")

    def __init__(self, group: str, message: Message, position: Position | None) -> None:
        self.group = group
        self.message = message
        self.position = position
        self._envelope: str | None = None

    def envelope(self) -> str:
        """The message in the ``dws`` envelope (see :mod:`dwebsocket.dws`)."""
        if self._envelope is None:
            self._envelope = envelope(self.group, self.message, self.position)
        return self._envelope


class Items:
    """Consecutive messages of one group, fanned out together: each member gets them in
    one :class:`~dwebsocket.groups.batch.Batch`, made once for all members (as they are,
    in ``dws`` envelopes, or as they are but text that looks like an envelope escaped)."""

    __slots__ = ("_batches", "items")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self._batches: dict[bool | None, Batch] = {}

    def batch(self, envelope: bool) -> Batch:
        """Every message, in envelopes if ``envelope``: the same object for every member."""
        batch = self._batches.get(envelope)
        if batch is None:
            batch = self._batches[envelope] = Batch(
                [item.envelope() if envelope else item.message for item in self.items]
            )
        return batch

    def escaped(self) -> Batch:
        """Every message as it is for a client that speaks ``dws`` (a plain group's):
        text that begins like an envelope escaped (:func:`dwebsocket.dws.outgoing`), the
        plain batch itself if none does."""
        batch = self._batches.get(None)
        if batch is None:
            plain = self.batch(False)
            messages = [dws.outgoing(message) for message in plain.messages]
            same = all(map(operator.is_, messages, plain.messages))
            batch = self._batches[None] = plain if same else Batch(messages)
        return batch


def envelope(group: str, message: Message, position: Position | None) -> str:
    """``message`` of ``group`` in its ``msg`` envelope, with its position
    (:func:`dwebsocket.dws.envelope`)."""
    return dws.envelope(group, message, None if position is None else str(position))


def joined_envelope(group: str, recovery: Recovery) -> str:
    """``{"dws":"joined",...}``: the outcome of a join, for a client that speaks ``dws``.

    ASCII only: ``since`` is what the client asked for, any str (a lone surrogate from
    ``"\\ud800"`` in its ``dws_since`` too), which UTF-8 could not encode raw."""
    return json.dumps(
        {
            "dws": "joined",
            "g": group,
            "p": recovery.position,
            "since": recovery.since,
            "recovered": recovery.recovered,
            "missed": recovery.missed,
        },
        separators=(",", ":"),
    )


# -- followers: members of history groups -----------------------------------------------------


class Sink(Protocol):
    def deliver(self, message: Message) -> None: ...
    def is_closed(self) -> bool: ...


class Follower:
    """One member of one history group: delivers each message once, in order.

    While the member recovers, live messages are buffered: at most :data:`BUFFER` of them
    and ``WEBSOCKET_SEND_QUEUE_SIZE`` (read when the follower is made) of their size
    (characters of text, bytes of binary; the newest is kept whatever its size), the
    oldest dropped first: they are read again from the history. Held back any longer, or
    in the member's send queue, they would be more than the queue may hold: the member
    would be closed with 1008 for what the history still has. Afterwards a message at or
    before the last position delivered, in the same epoch, is a duplicate and dropped.
    ``envelope``: the member's client speaks ``dws`` and gets each message with its
    position. Thread-safe; never blocks but on its own short lock."""

    __slots__ = (
        "buffer",
        "buffered",
        "dropped",
        "envelope",
        "group",
        "last",
        "limit",
        "lock",
        "member",
    )

    def __init__(self, member: Sink, group: str, envelope: bool) -> None:
        from dwebsocket.conf import settings

        self.member = member
        self.group = group
        self.envelope = envelope
        self.lock = threading.Lock()
        self.buffer: deque[Item] | None = deque()
        self.buffered = 0  # the size of the messages in buffer
        self.limit = settings.WEBSOCKET_SEND_QUEUE_SIZE  # the most buffered may be
        self.dropped = False  # the buffer overflowed: read the history again
        self.last: Position | None = None

    def hold(self) -> bool:
        """Hold back what comes live again, as while the member recovers (it joins the
        group again with ``since``), keeping ``last``: what it was handed is not sent
        again. False if it holds back already (recovering, or stopped after a gap)."""
        with self.lock:
            if self.buffer is not None:
                return False
            self.buffer = deque()
            self.buffered = 0
            self.dropped = False
            return True

    def deliver(self, item: Item) -> None:
        """Hand ``item`` to the member, or buffer it while the member recovers.

        A message that skips offsets (this process's subscription was interrupted while
        Redis kept the history), or the first of a new epoch that is not its first message
        (interrupted while Redis lost the history and others sent on), means the member
        missed some: one whose client speaks ``dws`` is closed with 4003 instead, and its
        client reconnects and recovers them or is told it cannot (the others get what
        comes, as members of any group). So does a first message that is not its epoch's
        first for a member with no last position (Redis could not be read at its join):
        those before it may have come after the join, while this process was cut off."""
        self.deliver_items(Items([item]))

    def deliver_items(self, items: Items) -> None:
        """:meth:`deliver` for each of ``items``, in order, handed to the member in one
        ``deliver_batch`` (the batch ``items`` made for every member, when this one gets
        them all)."""
        with self.lock:
            buffer = self.buffer
            if buffer is not None:
                for item in items.items:
                    buffer.append(item)
                    self.buffered += len(item.message)
                    while len(buffer) > BUFFER or (self.buffered > self.limit and len(buffer) > 1):
                        self.buffered -= len(buffer.popleft().message)
                        self.dropped = True
                return
            kept, gap = self._take(items.items)
            if kept:
                if len(kept) == len(items.items):
                    batch = items.batch(self.envelope)
                else:
                    batch = Batch([i.envelope() if self.envelope else i.message for i in kept])
                deliver_batch(self.member, batch)
            if gap is None:
                return
            last = self._stop()
        self._close_for_gap(last, gap)

    def _take(self, items: list[Item]) -> tuple[list[Item], Item | None]:
        """Of ``items``, the ones to deliver (duplicates left out; the last becomes
        ``last``), up to the first that skips offsets after ``last`` when the member's
        client speaks ``dws`` (returned second, else None): in ``last``'s epoch, one past
        the next offset; in another epoch, or without ``last``, any but its epoch's first.
        Call with ``lock`` held."""
        kept: list[Item] = []
        for item in items:
            position, last = item.position, self.last
            if (
                self.envelope
                and position is not None
                and position.offset
                > (last.offset + 1 if last is not None and position.epoch == last.epoch else 1)
            ):
                # Another epoch: the history was lost (Redis restarted without persistence,
                # flushed) and begun again while this process was not subscribed. No last
                # position (Redis could not be read at the join): what came before this
                # message may have come after the join, while this process was not
                # subscribed. Its client would take this position as its own and later
                # "recover" from it, never told of the messages before it.
                return kept, item
            if self._fresh(item):
                kept.append(item)
        return kept, None

    def _stop(self) -> Position | None:
        """After a gap: nothing more for the member (its client recovers from the last
        position it got, returned). Call with ``lock`` held."""
        self.buffer = deque()
        self.buffered = 0
        return self.last

    def _close_for_gap(self, last: Position | None, gap: Item) -> None:
        logger.info(
            "Group %r: a member missed messages after %s (got %s): closing it (%d) so that "
            "its client reconnects and recovers them",
            self.group,
            "its join (no position)" if last is None else last,
            gap.position,
            GAP_CLOSE,
        )
        threading.Thread(target=_close_for_gap, args=(self.member,), daemon=True).start()

    def _deliver(self, item: Item, send: Callable[[Message], None]) -> bool:
        if not self._fresh(item):
            return False
        send(self._payload(item))
        return True

    def _payload(self, item: Item) -> Message:
        """What the member gets for ``item``: its envelope, or the message alone."""
        return item.envelope() if self.envelope else item.message

    def _fresh(self, item: Item) -> bool:
        """False for a duplicate (at or before the last position delivered, same epoch);
        else True, and ``item``'s position becomes the last (call with ``lock`` held)."""
        position, last = item.position, self.last
        if position is not None:
            if last is not None and position.epoch == last.epoch and position.offset <= last.offset:
                return False
            self.last = position
        return True


def _close_for_gap(member: Sink) -> None:
    close = getattr(member, "close", None)
    if close is not None:
        try:
            close(GAP_CLOSE, "missed messages: reconnect to recover them")
        except Exception:  # already closed, or closing: the same outcome
            logger.debug("Closing a member after a gap failed", exc_info=True)


class Followers:
    """The followers of every history group in this process: group -> member id -> it;
    and the joins of each member to each group under way (:meth:`joining`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, dict[int, Follower]] = {}
        # (group, member id) -> [its lock, the joins holding or waiting for it]
        self._joins: dict[tuple[str, int], list[Any]] = {}

    @contextlib.contextmanager
    def joining(self, group: str, member: Any) -> Iterator[None]:
        """Hold the lock of ``member``'s joins to ``group`` (for a whole join, replay
        included): a second join of one connection to one group, from another thread,
        waits for the first, then goes on from where it left (two replays side by side
        would each send what the other does, interleaved). Only those joins ever wait for
        it: live delivery, leaves and every other connection's joins do not. Reentrant:
        a join made inside one (a member's ``send`` joining again) goes on as before."""
        key = (group, id(member))
        with self._lock:
            entry = self._joins.get(key)
            if entry is None:
                entry = self._joins[key] = [threading.RLock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._joins[key]  # while one holds it, the member's id is its own

    def joins(self, group: str, member: Any) -> int:
        """How many joins of ``member`` to ``group`` hold or wait for :meth:`joining`."""
        with self._lock:
            entry = self._joins.get((group, id(member)))
            return 0 if entry is None else int(entry[1])

    def add(self, group: str, member: Any, follower: Follower) -> None:
        with self._lock:
            self._groups.setdefault(group, {})[id(member)] = follower

    def get(self, group: str) -> dict[int, Follower] | None:
        """The followers of ``group`` (a live dict: read it, do not change it), or None."""
        return self._groups.get(group)

    def remove(self, group: str, member: Any) -> None:
        with self._lock:
            followers = self._groups.get(group)
            if followers is not None:
                followers.pop(id(member), None)
                if not followers:
                    del self._groups[group]

    def remove_all(self, member: Any, groups: set[str]) -> None:
        for group in groups:
            self.remove(group, member)


# -- reading the history ----------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """Part of a group's history, as a layer reads it: the current ``epoch``, the offset of
    the newest message (``head``; 0 before the first), and the messages still kept after
    the offset asked for, oldest first, at most the count asked for and about
    :data:`PAGE_BYTES` (the message that crosses it included). An entry that is
    missing (trimmed, expired) is simply not there: ``entries[0][0]`` tells."""

    epoch: str
    head: int
    entries: list[tuple[int, Message]]


class History(Protocol):
    def read(self, group: str, after: int, count: int) -> Page: ...


def recover(
    layer: History,
    follower: Follower,
    since: str | None,
    send: Callable[[Message], None],
) -> Recovery:
    """Bring a just-registered, buffering ``follower`` up to date and make it live.

    Reads the history after ``since`` page by page and sends it with ``send`` (blocking:
    the view's own thread pays for the replay, and the connection's buffer stays bounded),
    what came live meanwhile too (read from the history) while that gets less each round,
    then delivers what is still buffered, newer than the last replayed. Without
    ``since`` nothing is replayed. Raises what ``send`` raises (``ConnectionClosed``) and
    what ``layer.read`` raises; the caller then removes the follower."""
    group = follower.group
    asked = Position.parse(since) if since is not None else None
    had = follower.last  # a member joined again: what it was handed is on its way
    if asked is not None and had is not None and had.epoch == asked.epoch:
        asked = max(asked, had, key=operator.attrgetter("offset"))
    page = layer.read(group, asked.offset if asked is not None else 0, 0 if asked is None else PAGE)
    missed = 0
    recovered = False
    position = Position(page.epoch, page.head)
    if asked is not None and asked.epoch == page.epoch and asked.offset <= page.head:
        recovered = True
        last = asked.offset
        held: int | None = None  # bytes held back when the replay last caught up
        newest: int | None = None  # the newest offset held back when the page was read
        while True:
            if (
                page.epoch != asked.epoch
                or (last < page.head and (not page.entries or page.entries[0][0] != last + 1))
                or (newest is not None and page.head < newest)
            ):
                # History lost while replaying, or trimmed or expired since the position,
                # or gone back behind what was held back (Redis lost writes it had
                # acknowledged: restarted from an older copy, a failover to a replica that
                # lagged): what it lacks never comes, however often it is read again.
                # Catching up (held), what was held back may still follow on from last.
                recovered = held is not None and _follows(follower, asked.epoch, last)
                break
            for offset, message in page.entries:
                follower._deliver(Item(group, message, Position(page.epoch, offset)), send)
                last = offset
                missed += 1
            position = Position(page.epoch, last)
            # Caught up with the history as read, and with the buffer? The buffer holds all
            # that came live since the member was registered, unless it overflowed or this
            # process's subscription was interrupted meanwhile: what it lacks is read again.
            with follower.lock:
                buffer = follower.buffer
                assert buffer is not None
                if last >= page.head and not _behind(follower, page.epoch, last):
                    # What came live during the replay is sent as the replay is, at the
                    # client's pace, read from the history, while that makes it less:
                    # handed over at once when the member goes live, it would overflow the
                    # send queue of a client whose link the replay kept busy (1008).
                    ahead = _held(buffer, page.epoch, last)
                    if not ahead or (held is not None and ahead >= held):
                        break
                    held = ahead
                follower.dropped = False
                newest = _newest(buffer, page.epoch)
            try:
                page = layer.read(group, last, PAGE)
            except GroupsUnavailable:
                if held is None:
                    raise
                recovered = _follows(follower, asked.epoch, last)  # caught up already
                break
    if not recovered:
        position = Position(page.epoch, page.head)
    if not page.epoch:  # nothing kept: no epoch until the next message makes one
        recovery = Recovery(since=since, position=None, recovered=False)
        go_live(follower, None, recovery)
        return recovery
    if asked is not None and not recovered:
        logger.debug(
            "Recovery of group %r from %s failed (history now %s, %d replayed)",
            group,
            since,
            position,
            missed,
        )
    recovery = Recovery(
        since=since,
        position=str(position),
        recovered=recovered,
        missed=missed,
    )
    go_live(follower, position, recovery)
    return recovery


def _behind(follower: Follower, epoch: str, last: int) -> bool:
    """True if what ``follower`` held back does not follow on from offset ``last`` of
    ``epoch``: it overflowed past it, or it skips offsets (call with ``lock`` held)."""
    buffer = follower.buffer
    assert buffer is not None
    # (A head past last + 1 in this epoch is what _skips finds first.)
    return (
        follower.dropped
        and (not buffer or buffer[0].position is None or buffer[0].position.epoch != epoch)
    ) or _skips(buffer, epoch, last)


def _follows(follower: Follower, epoch: str, last: int) -> bool:
    """:func:`_behind`'s opposite, taking ``follower``'s lock."""
    with follower.lock:
        return not _behind(follower, epoch, last)


def _held(buffer: deque[Item], epoch: str, last: int) -> int:
    """The size of the messages of ``epoch`` after offset ``last`` held back in ``buffer``
    (characters of text, bytes of binary)."""
    return sum(
        len(item.message)
        for item in buffer
        if item.position is not None
        and item.position.epoch == epoch
        and item.position.offset > last
    )


def _newest(buffer: deque[Item], epoch: str) -> int | None:
    """The highest offset of ``epoch`` held back in ``buffer`` (None: none): the history
    had it when it came, and has it at any later read, unless it went back."""
    return max(
        (
            item.position.offset
            for item in buffer
            if item.position is not None and item.position.epoch == epoch
        ),
        default=None,
    )


def _skips(buffer: deque[Item], epoch: str, last: int) -> bool:
    """True if the buffered messages of ``epoch`` after offset ``last`` do not follow on
    from it one by one: some came while this process was not subscribed (they are in the
    history). Each one is checked, not the first alone: a hole behind messages held back
    would otherwise go live with the member."""
    for item in buffer:
        position = item.position
        if position is not None and position.epoch == epoch and position.offset > last:
            if position.offset > last + 1:
                return True
            last = position.offset
    return False


def go_live(follower: Follower, position: Position | None, recovery: Recovery) -> None:
    """Tell a ``dws`` client how the join went, deliver what the follower buffered after
    ``position``, and deliver live from now on.

    The buffered messages are checked for gaps as live ones are: this process's
    subscription may have been interrupted after :func:`recover` last read the history,
    and a message sent then is neither replayed nor buffered. A member whose client speaks
    ``dws`` is closed with 4003 at the gap, as when live."""
    with follower.lock:
        if position is not None:
            follower.last = position
        if follower.envelope:
            follower.member.deliver(joined_envelope(follower.group, recovery))
        buffer, follower.buffer = follower.buffer, None
        follower.buffered = 0
        kept, gap = follower._take(list(buffer or ()))
        for item in kept:
            follower.member.deliver(follower._payload(item))
        if gap is None:
            return
        last = follower._stop()
    follower._close_for_gap(last, gap)
