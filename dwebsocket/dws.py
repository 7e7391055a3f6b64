"""The ``dws`` envelope: dwebsocket's own messages between the library and its clients.

A text message that begins with ``{"dws"`` and is a JSON object belongs to this protocol
(``docs/protocol.rst``); every other message is the application's and passes through
untouched. A client announces that
it speaks the envelope with ``dws=1`` in the URL's query string (dwebsocket's browser
client and :mod:`dwebsocket.client` do); only then does the library send it envelopes.
Every type is listed in ``docs/protocol.rst``.

Client to server, answered here without the view ever seeing them:

``{"dws":"ping"}``
    answered with ``{"dws":"pong"}``: the browser cannot send WebSocket pings, so its
    client checks a silent connection this way.

Server to client (built in :mod:`dwebsocket.groups.history`): ``msg`` (a group message with
its position), ``joined`` (how a join of a history group went).

Sending: an application's text that begins with ``{"dws"`` would be taken by the client
for the library's own (a user relaying a forged ``joined`` or ``msg`` to other users'
clients through a group, say). To a client that speaks the envelope it goes as the
application's message in a ``msg`` envelope of no group (:func:`outgoing`): the view's
``send()`` (:func:`adopt`'s subclass; the ASGI backend's own) and the groups' fan-out do
that; the library's own envelopes go out as they are (``deliver()``, ``_send_own()``).

Receiving: a connection whose client announced ``dws`` gets a subclass of its backend's
class (:func:`adopt`) whose ``wait()`` and ``read()`` take the envelope's messages out of
the stream. Other connections keep their class, so their receive path (the default
backend's C fast path included) pays nothing for this.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import TooManyFieldsSent

from dwebsocket.exceptions import InvalidState
from dwebsocket.typing import Message
from dwebsocket.websocket import WebSocket, wait_timeout

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = [
    "NOT_ENVELOPE",
    "PONG",
    "VERSION",
    "adopt",
    "announced",
    "envelope",
    "envelope_kind",
    "outgoing",
    "speaks",
]

logger = logging.getLogger("dwebsocket")

#: The envelope's version, as clients announce it (``?dws=1``).
VERSION = "1"
PREFIX = '{"dws"'
PONG = '{"dws":"pong"}'

_T = TypeVar("_T")
_W = TypeVar("_W", bound=WebSocket)
_M = TypeVar("_M", bound=Message)


def announced(request: HttpRequest) -> bool:
    """True if the client's URL says it speaks the envelope (``dws=1``). Never raises."""
    query = request.META.get("QUERY_STRING", "")
    if "dws=" not in query:
        return False
    try:
        return request.GET.get("dws") == VERSION
    except TooManyFieldsSent:  # a query Django will not read announces nothing
        return False


def speaks(websocket: object) -> bool:
    """True if ``websocket`` is a connection whose client speaks the envelope."""
    return bool(getattr(websocket, "dws", False))


def envelope(group: str | None, message: Message, position: str | None) -> str:
    """A ``msg`` envelope: ``{"dws":"msg","g":group,"p":position,"d":text}``, binary
    messages as base64 in ``"b"`` instead of ``"d"`` (one frame carries message and
    position). With no group and no position, the clients hand the page the message
    itself (:func:`outgoing`)."""
    fields: dict[str, Any] = {"dws": "msg", "g": group, "p": position}
    if isinstance(message, str):
        fields["d"] = message
    else:
        fields["b"] = base64.b64encode(message).decode("ascii")
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def outgoing(message: _M) -> _M:
    """``message`` as it must go to a client that speaks the envelope: in a ``msg``
    envelope of no group if it is text that begins like one, else itself."""
    if isinstance(message, str) and message.startswith(PREFIX):
        return envelope(None, message, None)  # type: ignore[return-value]
    return message


def adopt(websocket: _W, request: HttpRequest) -> _W:
    """Give ``websocket`` the envelope-aware subclass of its class if its client announced
    the envelope; return it. Called once, before the view runs."""
    if announced(request):
        websocket.__class__ = _subclass(type(websocket))  # type: ignore[assignment]
    return websocket


_subclasses: dict[type[WebSocket], type[WebSocket]] = {}


def _subclass(cls: type[WebSocket]) -> type[WebSocket]:
    """``cls`` whose ``wait()`` and ``read()`` answer the envelope's messages and return
    the others, and whose ``send()`` sends the application's text that looks like one in
    an envelope (:func:`outgoing`; ``_send_own()`` sends as it is, for the library's own
    envelopes). One level of plain inheritance: ``__class__`` can be assigned only between
    classes of one layout. ``count_messages()`` leaves the envelope's out: it counts
    what ``read()`` returns, and acts on those that come before any of them."""
    found = _subclasses.get(cls)
    if found is not None:
        return found
    base_wait, base_read, base_count = cls.wait, cls.read, cls.count_messages
    base_send = cls.send

    def send(self: WebSocket, message: Message) -> None:
        if isinstance(message, str) and message.startswith(PREFIX):  # outgoing(), inline
            message = envelope(None, message, None)
        base_send(self, message)

    def wait(self: WebSocket, timeout: float | None = None) -> Message | None:
        if timeout is not None:
            timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = base_wait(self, timeout)
            if message.__class__ is not str or not message.startswith(PREFIX):
                return message
            if not _envelope_message(self, message):
                return message
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())

    def read(self: WebSocket, fallback: _T | None = None) -> Message | _T | None:
        while True:
            message = base_read(self, fallback)
            if message is fallback:  # nothing ready (the fallback is the view's own)
                return message
            if message.__class__ is not str or not message.startswith(PREFIX):
                return message
            if not _envelope_message(self, message):
                return message

    def count_messages(self: WebSocket) -> int:
        count = base_count(self)  # reads what is ready, as the backend's does
        buffered = self._buffered()
        if buffered is None:
            return count
        # The envelope's messages ahead of the application's are acted on now (a ping
        # answered): a view that reads only when has_messages() says there is something
        # would never take a ping that came alone, and its client, never answered, would
        # give the connection up as dead. (Those behind an application message are, when
        # the view reads it: reading is the view's thread's, so the first is still the
        # one read. Counting from another thread, where the uWSGI backend cannot read,
        # leaves them to the view's.)
        while buffered and _is_envelope(buffered[0]):
            try:
                message = base_read(self, None)
            except InvalidState:
                break
            if not isinstance(message, str):  # nothing ready after all
                break
            _envelope_message(self, message)
            buffered = self._buffered() or ()
        return sum(1 for message in buffered if not _is_envelope(message))

    name = f"Dws{cls.__name__}"
    namespace = {
        "wait": wait,
        "read": read,
        "count_messages": count_messages,
        "send": send,
        "_send_own": base_send,
        "dws": True,
        "_signal_sender": cls._signal_sender or cls,  # receivers connect to the backend's
        "__module__": cls.__module__,
    }
    found = _subclasses[cls] = type(name, (cls,), namespace)
    return found


#: What :func:`envelope_kind` returns for a message that is the application's.
NOT_ENVELOPE = object()


def envelope_kind(text: str) -> Any:
    """The ``dws`` type of the envelope message ``text`` (any JSON value, ``null``
    included), or :data:`NOT_ENVELOPE` if it is the application's (not a JSON object
    with ``dws``). Never raises."""
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than json decodes
        return NOT_ENVELOPE
    if not isinstance(data, dict) or "dws" not in data:
        return NOT_ENVELOPE
    return data["dws"]


def _is_envelope(message: Message) -> bool:
    """Whether ``message`` is the envelope's (``wait()`` and ``read()`` take it out)."""
    return (
        isinstance(message, str)
        and message.startswith(PREFIX)
        and envelope_kind(message) is not NOT_ENVELOPE
    )


def _envelope_message(websocket: WebSocket, text: str) -> bool:
    """Act on an envelope message; False if ``text`` is not one after all (the
    application's, then)."""
    kind = envelope_kind(text)
    if kind is NOT_ENVELOPE:
        return False
    if kind == "ping":
        websocket.deliver(PONG)
    else:  # a newer client's: ignored, so that clients can be upgraded first
        logger.debug("Ignoring dws message of unknown type %r", kind)
    return True
