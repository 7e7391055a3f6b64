"""Groups: send one message to every WebSocket in a named group, in every process.

::

    request.websocket.join("room-42")             # in the WebSocket view
    dwebsocket.groups.send("room-42", "hello")    # anywhere: a view, a command, a worker

A connection leaves its groups when it closes. ``WEBSOCKET_GROUPS_URL`` picks the layer that
carries messages: unset or ``memory://`` stays inside the process (:mod:`.memory`);
``redis://host:port/db`` reaches every process connected to that Redis (:mod:`.redis`),
as do ``redis-sentinel://`` (the master Sentinels name, followed across failovers) and
``redis-cluster://`` (a Redis Cluster, sharded pub/sub) (:mod:`.topology`).
The setting is read at each call, so ``override_settings`` works; a layer is built on first
use and rebuilt when the setting changes or the process forks.

Groups named in ``WEBSOCKET_GROUPS_HISTORY`` keep their last messages: :func:`send` returns
each one's position, and ``join(group, since=position)`` delivers what a member missed
after that position before the live messages (:mod:`.history`).

Delivery never waits for a member: each gets the message through its never-blocking
:meth:`~dwebsocket.websocket.WebSocket.deliver`, which closes a member whose outgoing buffer
is over ``WEBSOCKET_SEND_QUEUE_SIZE`` with 1008 (policy violation).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import TooManyFieldsSent

from dwebsocket import metrics
from dwebsocket.exceptions import GroupsUnavailable, InvalidSetting
from dwebsocket.groups.history import Follower, Page, Position, Recovery, go_live, policy, recover
from dwebsocket.groups.memory import Member, MemoryLayer, Registry
from dwebsocket.groups.presence import Local, Present, check_info, load_info, member_key
from dwebsocket.log import redact as redact  # re-exported: its home was here

if TYPE_CHECKING:
    from django.http import HttpRequest

    from dwebsocket.typing import BytesLike, Message
    from dwebsocket.websocket import WebSocket

__all__ = [
    "MAX_MESSAGE_SIZE",
    "GroupsUnavailable",
    "Member",
    "Position",
    "Present",
    "Recovery",
    "asend",
    "get_layer",
    "join",
    "leave",
    "members",
    "presence",
    "send",
    "since",
]

logger = logging.getLogger("dwebsocket.groups")


class Layer(Protocol):
    url: str

    def join(self, group: str, member: Member) -> None: ...
    def leave(self, group: str, member: Member) -> None: ...
    def leave_all(self, member: Member) -> None: ...
    def send(self, group: str, message: Message, *, fail_silently: bool = True) -> str | None: ...
    def read(self, group: str, after: int, count: int) -> Page: ...
    def control(self, group: str, payload: bytes, *, fail_silently: bool = True) -> None: ...
    def control_many(
        self, groups: Sequence[str], payload: bytes, *, fail_silently: bool = True
    ) -> None: ...
    def recent_controls(self, group: str, within: float) -> list[tuple[bytes, float]]: ...
    def recent_controls_many(
        self, groups: list[str], within: float
    ) -> list[list[tuple[bytes, float]] | None]: ...
    def present(self, group: str, entry: Local, count: int, info: str, joined: bool) -> None: ...
    def listen(self, group: str) -> None: ...
    def presence(self, group: str) -> list[Present]: ...
    def close(self) -> None: ...


#: The largest group message :func:`send` takes, in bytes (UTF-8 for text), on every layer.
#: Redis closes a subscriber whose output buffer passes 32 MB (its default
#: ``client-output-buffer-limit pubsub 32mb 8mb 60``), and every process subscribed to
#: the group has one message in it: one larger message would cut every process off, losing
#: what it and the messages after it carry for all members (a history group's dws members
#: closed 4003), and never reach anyone. 8 MiB is Redis's soft limit: a message this size
#: passes unless the subscriber stays that far behind for a minute.
MAX_MESSAGE_SIZE = 8 * 1024 * 1024

_lock = threading.Lock()


def _new_registry() -> Registry:
    registry = Registry()
    registry.dropped = _dropped
    return registry


def _dropped(member: Member) -> None:
    """A closed member that its registry dropped by itself (its close signal never came:
    a backend that could not send it, a member of the application's that sends none, one
    whose deliver() raised) leaves its presence and its events too, as
    :func:`leave_all` has it: in the background, as the caller may be the Redis reader,
    and a leave on Redis waits for it."""
    if _registry.presence.involves(member):
        from dwebsocket.backends.default.registry import spawn

        spawn(_on_closed, None, member)


_registry = _new_registry()
_layer: Layer | None = None
_pid = os.getpid()


def get_layer() -> Layer:
    """The layer ``WEBSOCKET_GROUPS_URL`` names, built on first use.

    Raises :class:`~dwebsocket.exceptions.InvalidSetting` (check ``dwebsocket.E020``) for
    a URL no layer serves or can read, or a Redis URL without redis-py installed."""
    from dwebsocket.conf import settings

    global _layer, _registry, _pid
    url = settings.WEBSOCKET_GROUPS_URL or MemoryLayer.url
    layer = _layer
    if layer is not None and layer.url == url and _pid == os.getpid():
        return layer
    with _lock:
        if _pid != os.getpid():
            # A forked child has none of its parent's sockets, and no reader thread.
            _registry, _layer, _pid = _new_registry(), None, os.getpid()
        elif _layer is not None and _layer.url != url:
            _layer.close()
            _layer = None
        if _layer is None:
            _layer = _make_layer(url, _registry)
        return _layer


#: The URL schemes of the Redis layer (:mod:`.redis`): one server, a master found through
#: Sentinels, a Redis Cluster (:mod:`.topology`).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis-sentinel", "redis-cluster")


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a ``WEBSOCKET_GROUPS_URL`` (a sentence naming the
    setting and what it takes, the URL's password hidden), or None: no layer serves its
    scheme, the Redis layer cannot read it (a port, a database, an option, a master name),
    or redis-py is not installed. Builds nothing, connects to nothing."""
    if url == MemoryLayer.url:
        return None
    if url.partition("://")[0].lower() not in REDIS_SCHEMES:
        return (
            "WEBSOCKET_GROUPS_URL must be memory://, redis://host:port/db, "
            "redis-sentinel://host:port[,host:port...]/master_name or "
            f"redis-cluster://host:port[,host:port...], not {redact(url)!r}"
        )
    try:
        from dwebsocket.groups import topology
    except ImportError:
        return (
            "WEBSOCKET_GROUPS_URL names Redis but redis-py is not installed: "
            "pip install 'dwebsocket[redis]'"
        )
    problem = topology.url_problem(url)
    if problem is None:
        return None
    scheme = url.partition("://")[0].lower()
    form = _FORMS.get(scheme, "redis://host:port/db")
    return f"WEBSOCKET_GROUPS_URL {redact(url)!r}: {problem} (it takes {form})"


#: What a Redis URL looks like, by scheme, for the messages of :func:`url_problem`.
_FORMS = {
    "unix": "unix:///path/to/redis.sock?db=N",
    "rediss": "rediss://host:port/db",
    "redis-sentinel": "redis-sentinel://host:port[,host:port...]/master_name",
    "redis-cluster": "redis-cluster://host:port[,host:port...]",
}


#: The last ``WEBSOCKET_GROUPS_URL`` :func:`check_settings` found right.
_url_checked: str | None = None


def check_settings() -> None:
    """Raise :class:`~dwebsocket.exceptions.InvalidSetting` if ``WEBSOCKET_GROUPS_URL``
    or ``WEBSOCKET_GROUPS_HISTORY`` has a wrong value (what checks ``dwebsocket.E020``
    and ``dwebsocket.E023`` report). Every handshake calls it: a wrong one refuses it with
    503 and one ERROR line (``dwebsocket.handshake.misconfigured``) rather than failing
    its session at its first join or send, with a traceback each time. Builds no layer,
    connects to nothing, never blocks."""
    global _url_checked
    from dwebsocket.conf import settings

    url = settings.WEBSOCKET_GROUPS_URL or MemoryLayer.url
    if url != _url_checked:
        _raise_for(url)
        _url_checked = url
    settings.WEBSOCKET_GROUPS_HISTORY  # noqa: B018 -- read to be checked


def _raise_for(url: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        from dwebsocket.conf import GROUPS_URL

        raise InvalidSetting(GROUPS_URL.name, redact(url), problem, GROUPS_URL.check_id)


def _make_layer(url: str, registry: Registry) -> Layer:
    _raise_for(url)
    if url == MemoryLayer.url:
        return MemoryLayer(registry)
    from dwebsocket.groups.redis import RedisLayer

    return RedisLayer(url, registry)


def reset() -> None:
    """Close the current layer and forget every membership (for tests)."""
    global _layer, _registry, _warned_no_history
    with _lock:
        if _layer is not None:
            _layer.close()
        _layer, _registry = None, _new_registry()
        _warned_no_history = False


def _check_group(group: Any) -> None:
    if not isinstance(group, str):
        raise TypeError(f"group names are str, not {type(group).__name__}")
    if not group:
        raise ValueError("group name is empty")
    if group[0] == "}":
        # Its Redis keys and channel carry it as a Cluster hash tag, "{group}": empty then,
        # so they would hash to different slots. Refused on every layer alike.
        raise ValueError(f"group name {group!r} may not begin with '}}'")
    if not group.isascii():
        try:
            group.encode()
        except UnicodeEncodeError:  # a lone surrogate: no Redis channel or key can name it
            raise ValueError(f"group name {group!r} cannot be encoded as UTF-8") from None


_NO_HISTORY = Recovery(since=None, position=None, recovered=False)

#: The beginning of the names of dwebsocket's own groups (:mod:`dwebsocket.users`:
#: ``dwebsocket.user.<pk>``, ``dwebsocket.session.<key>``), which :func:`join` and
#: :func:`leave` refuse: a view joining a group its URL names would otherwise let any
#: client read another user's ``users.send`` messages, and one leaving a group its
#: client names let a banned user's socket out of the reach of ``users.disconnect``.
RESERVED_PREFIX = "dwebsocket."


def join(
    group: str,
    websocket: WebSocket | Member,
    since: str | None = None,
    *,
    presence: dict[str, Any] | None = None,
    events: bool = False,
) -> Recovery:
    """Add ``websocket`` to ``group``: from now on ``send(group, ...)`` reaches it.

    With Redis, the first local member of a group waits (up to the socket timeout) for the
    subscription to be confirmed, so nothing sent after ``join`` returns is missed; while
    the subscription is down it waits for one attempt to reconnect, made at once, and
    returns when that failed (Redis is still unreachable). Joining twice is harmless (a
    member of a history group joined again without ``since`` goes on as it was, nothing
    lost or repeated; its ``position`` is the last it got; with ``since``, what it was
    handed already is not replayed; two joins of one connection to one group at once are
    made one after the other, the second going on from where the first left); a closed
    connection is not added. Raises ``TypeError``/``ValueError`` for a group name that is
    not a non-empty str UTF-8 can encode, not beginning with ``}``.

    For a group that keeps history (``WEBSOCKET_GROUPS_HISTORY``), ``since`` is the position
    of the last message the client saw (:func:`since` reads it from the request): every
    message after it is sent first, blocking until the connection took them, then the live
    ones follow, in order, none twice. Returns a :class:`Recovery`: ``recovered`` False
    with ``since`` given (``failed``) means the history no longer reaches back to it (a
    malformed position counts as such): send the full state. ``since`` for a group without
    history always fails. Raises ``ConnectionClosed`` if the connection closes during the
    replay.

    ``presence`` (a JSON-able dict of at most 1 KiB, ``{}`` will do) makes the
    connection a present member: :func:`presence` lists it, one entry per user. With
    ``events``, the connection receives the group's join and leave events, one per user,
    as JSON text messages (:mod:`.presence`). ``TypeError``/``ValueError`` for an info
    that is not a small JSON-able dict.

    ``ValueError`` for a name beginning with ``dwebsocket.`` (:data:`RESERVED_PREFIX`):
    dwebsocket's own groups, which it alone joins (:func:`leave` refuses them too).
    """
    _check_own(group)
    if since is not None and not isinstance(since, str):
        raise TypeError(f"since is a position (str) or None, not {type(since).__name__}")
    info = check_info(presence) if presence is not None else None
    websocket = _connection(websocket)
    _connect_signal()
    recovery = _join(group, websocket, since)
    if (info is not None or events) and not websocket.is_closed():
        _present(group, websocket, info, events)
    return recovery


def _connection(websocket: WebSocket | Member) -> WebSocket | Member:
    """The object groups know ``websocket``'s connection by: for an ``async def`` view's
    ``request.websocket`` under ASGI, its sync ``ASGIWebSocket`` (``.sync``), which
    ``websocket_closed`` names (the connection leaves its groups on it) and whose sends
    block (a replay's); ``websocket`` itself otherwise. Never blocks."""
    module = sys.modules.get("dwebsocket.backends.asgi.websocket")
    if module is not None and isinstance(websocket, module.AsyncWebSocket):
        return websocket.sync  # type: ignore[no-any-return]
    return websocket


def _check_own(group: Any) -> None:
    """:func:`_check_group`, and refuse dwebsocket's own groups (:data:`RESERVED_PREFIX`)."""
    _check_group(group)
    if group.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"group name {group!r} is reserved: names beginning with {RESERVED_PREFIX!r} are "
            "dwebsocket's own (a user's or a session's sockets: see dwebsocket.users)"
        )


def _join_own(group: str, websocket: WebSocket | Member) -> None:
    """:func:`join` of one of dwebsocket's own groups (:data:`RESERVED_PREFIX`)."""
    _check_group(group)
    _connect_signal()
    _join(group, websocket, None)


#: A join with ``since`` of a group without history was logged at WARNING (see below).
_warned_no_history = False


def _no_history(group: str) -> None:
    """Log a join with ``since`` of a group that keeps no history: the ``since`` is the
    client's, so every reconnection with an old position does it (after a deploy that
    took the group's history away, say): the first at WARNING, the others at DEBUG."""
    global _warned_no_history
    if _warned_no_history:
        logger.debug("join(%r, since=...): the group keeps no history", group)
        return
    _warned_no_history = True
    logger.warning(
        "join(%r, since=...): the group keeps no history (WEBSOCKET_GROUPS_HISTORY); "
        "the next such joins in this process are logged at DEBUG",
        group,
    )


def _join(group: str, websocket: WebSocket | Member, since: str | None) -> Recovery:
    kept = policy(group)
    if websocket.is_closed():
        return _failed(since) if kept is not None else _NO_HISTORY
    layer = get_layer()
    if kept is None:
        if since is not None:
            _no_history(group)
        layer.join(group, websocket)
        if websocket.is_closed():  # closed meanwhile: its signal may have fired before
            layer.leave_all(websocket)
        return _failed(since) if since is not None else _NO_HISTORY
    # One join of a connection to a history group at a time (threads of a view, an async
    # view's): each finds the follower as the one before left it, and replays after that.
    with _registry.followers.joining(group, websocket):
        return _join_history(layer, group, websocket, since)


def _join_history(
    layer: Layer, group: str, websocket: WebSocket | Member, since: str | None
) -> Recovery:
    """:func:`_join` of a history group (call under its ``followers.joining``)."""
    from dwebsocket import dws

    followers = _registry.followers.get(group)
    joined = followers.get(id(websocket)) if followers is not None else None
    if joined is not None and joined.member is not websocket:
        joined = None
    if joined is not None and since is None:
        # Already a member: its follower goes on. A new one would hold back what is in
        # flight to it now and then drop it as older than the history's head.
        layer.join(group, websocket)
        last = joined.last
        return Recovery(since=None, position=None if last is None else str(last), recovered=False)
    # Joined again with since: its follower recovers, so that what it handed over already
    # (queued to the connection, ahead of the replay) is neither replayed nor overtaken.
    follower = joined if joined is not None and joined.hold() else None
    if follower is None:
        follower = Follower(websocket, group, dws.speaks(websocket))
    _registry.followers.add(group, websocket, follower)
    layer.join(group, websocket)
    if websocket.is_closed():
        layer.leave_all(websocket)
        return _failed(since)
    # The library's envelopes as they are (send() escapes text that looks like one).
    own = getattr(websocket, "_send_own", None)
    send = own if own is not None else getattr(websocket, "send", websocket.deliver)
    try:
        return recover(layer, follower, since, send)
    except GroupsUnavailable as exc:
        logger.warning("Group %r: history unavailable (%s); joined without it", group, exc)
        recovery = _failed(since)
        go_live(follower, None, recovery)
        return recovery
    except BaseException:
        layer.leave(group, websocket)
        raise


def _failed(since: str | None) -> Recovery:
    return Recovery(since=since, position=None, recovered=False)


def since(request: HttpRequest, group: str) -> str | None:
    """The position the client asks to resume ``group`` from, or None.

    dwebsocket's clients add it to the URL when they reconnect: ``dws_since``, a JSON
    object of group name -> position. Anything malformed reads as None (the client then
    gets the full state). Never raises, never blocks."""
    try:
        raw = request.GET.get("dws_since")
    except TooManyFieldsSent:  # a query Django will not read asks for nothing
        return None
    if not raw or len(raw) > 65536:
        return None
    try:
        asked = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than json decodes
        return None
    value = asked.get(group) if isinstance(asked, dict) else None
    return value if isinstance(value, str) else None


def leave(group: str, websocket: WebSocket | Member) -> None:
    """Remove ``websocket`` from ``group``; no error if it was not a member. Blocks only
    for a present member on Redis (up to the socket timeout). ``ValueError`` for one of
    dwebsocket's own groups (:data:`RESERVED_PREFIX`): a socket leaves its user's and
    session's groups only by closing, so that ``users.disconnect`` still reaches it."""
    _check_own(group)
    websocket = _connection(websocket)
    layer = get_layer()
    layer.leave(group, websocket)
    _registry.presence.unlisten(group, websocket)
    removed = _registry.presence.remove(group, websocket)
    if removed is not None:
        entry, left, info = removed
        layer.present(group, entry, left, info, False)


def leave_all(websocket: WebSocket | Member) -> None:
    """Remove ``websocket`` from every group (done for you when it closes)."""
    layer = get_layer()
    layer.leave_all(websocket)
    for group, entry, left, info in _registry.presence.remove_all(websocket):
        layer.present(group, entry, left, info, False)


def _present(group: str, websocket: WebSocket | Member, info: str | None, events: bool) -> None:
    layer = get_layer()
    if events:
        _registry.presence.listen(group, websocket)
        layer.listen(group)
    if info is not None:
        key, user = member_key(websocket)
        entry = Local(key, user, info, load_info(info))
        again = _registry.presence.has(group, websocket)  # its info changes; nobody joined
        count, shown = _registry.presence.add(group, websocket, entry)
        layer.present(group, entry, count, shown, not again)
    if websocket.is_closed():  # closed meanwhile: its signal may have fired before
        leave_all(websocket)


def presence(group: str) -> list[Present]:
    """Who is present in ``group``, in every process: one :class:`Present` per user (its
    sockets counted, the info of one of them), one per anonymous socket; in no particular
    order. A socket is present from ``join(group, presence=...)`` until it leaves or
    closes; the sockets of a process that died are gone within twice
    ``WEBSOCKET_PRESENCE_HEARTBEAT``. Blocks up to the socket timeout on Redis; raises
    :class:`GroupsUnavailable` if Redis cannot answer."""
    _check_group(group)
    return get_layer().presence(group)


def members(group: str) -> list[Member]:
    """The members of ``group`` in this process (not in others), in joining order."""
    _check_group(group)
    get_layer()  # a fork resets the registry
    return _registry.members(group)


def send(group: str, message: str | BytesLike, *, fail_silently: bool = True) -> str | None:
    """Send ``message`` to every member of ``group``, in every process.

    ``str`` is sent as a text message, bytes-like as a binary one, of at most
    :data:`MAX_MESSAGE_SIZE` bytes (UTF-8 for ``str``). Never blocks on a member:
    a slow one is closed (1008) rather than waited for. With Redis it waits at most the
    socket timeout for Redis itself. If Redis is unreachable the members in this process
    still get the message, the others do not, and nothing is raised unless
    ``fail_silently=False`` (then :class:`GroupsUnavailable`).
    Raises ``TypeError`` for a message that is neither ``str`` nor bytes-like, and
    ``UnicodeEncodeError`` (a ``ValueError``) for a ``str`` that UTF-8 cannot encode (a lone
    surrogate, such as ``json.loads`` makes of ``"\\ud800"``), ``ValueError`` for a message
    over :data:`MAX_MESSAGE_SIZE`: then no member gets it.

    Returns the message's position (``"epoch:offset"``) when the group keeps history
    (``WEBSOCKET_GROUPS_HISTORY``) and the message was kept, else None.
    """
    _check_group(group)
    if isinstance(message, (bytearray, memoryview)):
        message = bytes(message)
    elif not isinstance(message, (str, bytes)):
        raise TypeError(f"group messages are str or bytes, not {type(message).__name__}")
    size = len(message)
    if isinstance(message, str) and not message.isascii():
        # Here, not in each member's deliver(), which would drop every member of the group
        # (an ERROR each) for one client's text that a view passed on.
        size = len(message.encode())
    if size > MAX_MESSAGE_SIZE:
        raise ValueError(
            f"group message of {size} bytes is over dwebsocket.groups.MAX_MESSAGE_SIZE "
            f"({MAX_MESSAGE_SIZE} bytes): send a reference to the data (a URL, an id) instead"
        )
    metrics.group_send()
    return get_layer().send(group, message, fail_silently=fail_silently)


async def asend(group: str, message: str | BytesLike, *, fail_silently: bool = True) -> str | None:
    """:func:`send` for async code (an ``async def`` view under ASGI): the same arguments,
    return value and exceptions. With Redis it runs in a worker thread, so the event loop
    never waits for Redis; in-process (``memory://``) it just calls :func:`send`."""
    if isinstance(get_layer(), MemoryLayer):
        return send(group, message, fail_silently=fail_silently)
    from asgiref.sync import sync_to_async

    return await sync_to_async(send, thread_sensitive=False)(
        group, message, fail_silently=fail_silently
    )


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
    _leave_closed(websocket if websocket is not None else sender)


def _leave_closed(websocket: Member) -> None:
    """:func:`leave_all` for a connection that closed (what ``websocket_closed`` does, and
    a backend for one that closed without opening, which gets no such signal); logs what
    fails rather than raising. May block (Redis)."""
    try:
        leave_all(websocket)
    except Exception:  # never let the groups break a backend's close path
        logger.exception("Could not remove a closed WebSocket from its groups")


def _involved(websocket: Member) -> bool:
    """Whether ``websocket`` is in a group of this process, present in one or listening to
    its events. Never blocks."""
    return bool(_registry.groups_of(websocket)) or _registry.presence.involves(websocket)
