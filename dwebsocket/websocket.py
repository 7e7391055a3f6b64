"""``request.websocket``: the abstract API every backend implements."""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from django.dispatch import Signal
    from django.http import HttpRequest

    from dwebsocket.groups.batch import Batch
    from dwebsocket.groups.history import Recovery

from dwebsocket.conf import MAX_SECONDS
from dwebsocket.typing import BytesLike, Message

_T = TypeVar("_T")

logger = logging.getLogger("dwebsocket")

__all__ = ["Message", "WebSocket"]


def to_json(data: Any, cls: type[json.JSONEncoder] | None) -> str:
    """``send_json``'s text: ``data`` encoded by ``cls`` (Django's ``DjangoJSONEncoder``
    by default)."""
    if cls is None:
        from django.core.serializers.json import DjangoJSONEncoder

        cls = DjangoJSONEncoder
    return json.dumps(data, cls=cls)


#: ``close_reason`` (with ``close_code`` 1006) of a connection its view refused: what the
#: ``ConnectionClosed`` of a later ``accept()`` or ``send()`` says.
REFUSED_REASON = "the view answered with HTTP"

#: The attribute of a WebSocket request holding when dwebsocket first saw it
#: (``time.monotonic()``): :mod:`dwebsocket.users` looks for what was sent to the user's
#: groups since, once the socket has joined them.
REQUEST_STARTED = "_dwebsocket_started"


def wait_timeout(timeout: float | None) -> float | None:
    """A ``wait()`` timeout as the backends' waits take it: None (no end) for None, a
    negative number, or more than ``conf.MAX_SECONDS`` (a week: infinity and NaN too,
    which no platform wait takes: ``poll()`` waits at most about 24.8 days); else
    ``timeout``."""
    if timeout is None or not 0 <= timeout <= MAX_SECONDS:
        return None
    return timeout


def not_json() -> tuple[int, str]:
    """What ``wait_json`` closes with after a message that is not JSON (logged once)."""
    logger.info("Closing a WebSocket with 1007: its message is not JSON")
    return 1007, "invalid JSON"


class WebSocket(abc.ABC):
    """One WebSocket connection, as a view sees it.

    Text messages are ``str``, binary messages ``bytes``. The opening handshake runs lazily:
    the first call that needs the connection (``wait``, ``read``, ``send``, iteration, ...)
    accepts it, so until then the view may still answer with any HTTP response (a 403, say).
    Once it has (or has raised), the connection is refused for good: an ``accept()`` or
    ``send()`` that another thread starts then raises ``ConnectionClosed`` (1006,
    ``REFUSED_REASON``) and leaves the socket to the server.

    Backends subclass this and implement the abstract methods; everything else is shared:
    the accepted state and its guard, the subprotocol check, the end of a session and the
    signals.
    """

    #: The request this connection answers.
    request: HttpRequest
    #: Subprotocols the client offered (``Sec-WebSocket-Protocol``), in its order.
    offered_subprotocols: list[str]
    #: The subprotocol chosen by ``accept(subprotocol=...)``, or None.
    subprotocol: str | None = None
    #: Close code and reason once closed (1006 when the TCP connection just ended).
    close_code: int | None = None
    close_reason: str = ""
    #: The ``sender`` of this connection's signals when it is not its own class: the
    #: backend's class, for the envelope-aware subclass a ``dws`` client gets.
    _signal_sender: ClassVar[type[WebSocket] | None] = None

    # -- the handshake ----------------------------------------------------------------

    @abc.abstractmethod
    def accept(self, subprotocol: str | None = None) -> None:
        """Complete the opening handshake, choosing ``subprotocol`` (one of
        ``offered_subprotocols``, else ``ValueError``). Idempotent; does not block beyond
        writing the 101 response."""

    def accept_connection(self) -> None:
        """dwebsocket 0.5 name of :meth:`accept`."""
        self.accept()

    #: Set by the backend's :meth:`accept` once the 101 response is sent.
    _accepted: bool = False

    @property
    def accepted(self) -> bool:
        """True once the 101 response is sent."""
        return self._accepted

    @property
    def protocols(self) -> list[str]:
        """dwebsocket 0.5 name of :attr:`offered_subprotocols`."""
        return self.offered_subprotocols

    def _ensure_accepted(self) -> None:
        """Accept now unless done: every call that needs the connection runs this first
        (the handshake is lazy). Raises what :meth:`accept` raises."""
        if not self._accepted:
            self.accept()

    def _check_subprotocol(self, subprotocol: str | None) -> None:
        """Raise ``ValueError`` unless ``subprotocol`` is None or one the client offered
        (RFC 6455 4.2.2: the server selects one of the client's values, or none)."""
        if subprotocol is not None and subprotocol not in self.offered_subprotocols:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client "
                f"(offered: {self.offered_subprotocols})"
            )

    def end_session(self, code: int, *, abort: bool = False) -> None:
        """Called by dwebsocket when the view is done (:mod:`dwebsocket.session`): close
        with ``code``. ``abort`` is True when the view was killed by a ``BaseException``
        (greenlet kill, worker timeout): a backend that can then sends its close frame
        without waiting for the peer's. Backends override this to end a session their
        own way (and free what they hold); this one calls :meth:`close`."""
        self.close(code)

    def refuse_session(self) -> bool:
        """Called by dwebsocket when the view is done without accepting (it answered with
        HTTP, or raised): return True if the connection is still the server's, and from
        then on refused: ``accept()``, and every call that would accept (``send()``,
        ``wait()``, ...), raises ``ConnectionClosed`` (1006) without touching the socket,
        whatever thread calls it, so that the server's HTTP answer is all the client
        gets. False if the backend has it already (accepted, an accept under way in
        another thread, or closed by one): the session then ends it. Never blocks for
        long (at most for an accept under way). Backends override this to make the
        check and the refusal one step against a concurrent accept; this one only
        checks."""
        return not (self.accepted or self.is_closed())

    def _send_signal(self, signal: Signal, **kwargs: object) -> None:
        """Send ``signal`` (``websocket_opened``, ``websocket_closed``) for this
        connection. ``send_robust``: a failing receiver (logged by Django) must not break
        the I/O path, which may be a background flusher."""
        sender = self._signal_sender or type(self)
        signal.send_robust(sender=sender, request=self.request, websocket=self, **kwargs)

    # -- receiving ----------------------------------------------------------------------

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> Message | None:
        """Return the next message, blocking up to ``timeout`` seconds (None or negative:
        forever). Returns None when the connection is closed or the timeout expired;
        :meth:`is_closed` tells which."""

    @abc.abstractmethod
    def read(self, fallback: _T | None = None) -> Message | _T | None:
        """Return a message that is ready now, or ``fallback``. Never blocks."""

    @abc.abstractmethod
    def count_messages(self) -> int:
        """Number of complete messages ready now. Never blocks."""

    def has_messages(self) -> bool:
        """True if a complete message is ready now. Never blocks."""
        return self.count_messages() > 0

    def _buffered(self) -> tuple[Message, ...] | None:
        """The messages :meth:`count_messages` counts, oldest first (a snapshot), for
        the ``dws`` subclass to leave out the envelope's; None if the backend cannot
        tell (it then counts them all)."""
        return None

    def __iter__(self) -> Iterator[Message]:
        """Yield every message until the peer closes the connection. An exception that
        comes out of the iterator (a ``gevent.Timeout`` around the loop, a kill) ends it,
        as it ends any generator: ``for message in request.websocket`` again starts a new
        one, which reads on."""
        while True:
            message = self.wait()
            if message is None:
                if self.is_closed():
                    return
                continue  # pragma: no cover - wait() without timeout returns None only closed
            yield message

    def wait_json(self, timeout: float | None = None) -> Any:
        """:meth:`wait` for the next message and decode it as JSON (text or UTF-8 binary).

        Returns None, as :meth:`wait` does, when the connection is closed or the timeout
        expired -- and also after a message that is not JSON: the peer broke the
        contract, so the connection is closed with 1007 (invalid payload data) instead
        of the view raising (one traceback per bad client). A JSON ``null`` is returned
        as None too: use :meth:`wait` and :func:`json.loads` when null is meaningful."""
        message = self.wait(timeout)
        if message is None:
            return None
        try:
            return json.loads(message)
        except ValueError:  # JSONDecodeError, or binary that is not UTF-8
            self.close(*not_json())
            return None

    # -- sending and closing --------------------------------------------------------------

    @abc.abstractmethod
    def send(self, message: str | BytesLike) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame.

        Safe to call from any thread or greenlet. Blocks until the frame is handed to the
        kernel (or, for backends that must, to the connection's own greenlet). Raises
        :class:`~dwebsocket.exceptions.ConnectionClosed` once the connection is closed."""

    def _send_own(self, message: Message) -> None:
        """:meth:`send` for the library's own ``dws`` envelopes (a history replay): as
        they are, where ``send()`` escapes the application's text that looks like one
        (:func:`dwebsocket.dws.outgoing`)."""
        self.send(message)

    def send_json(self, data: Any, *, cls: type[json.JSONEncoder] | None = None) -> None:
        """Send ``data`` as JSON in a text frame. The encoder is Django's
        ``DjangoJSONEncoder`` (dates, decimals, UUIDs, lazy strings), as for
        ``JsonResponse``; ``cls`` picks another."""
        self.send(to_json(data, cls))

    @abc.abstractmethod
    def deliver(self, message: Message) -> None:
        """Queue ``message`` for sending without ever blocking the caller (used by groups).

        Each connection has a bounded outgoing buffer; a connection whose buffer overflows is
        closed with 1008 (policy violation). Messages for a closed connection are dropped.
        A ``str`` that UTF-8 cannot encode (a lone surrogate) is refused here, whether or
        not the connection is accepted yet: ``UnicodeEncodeError``, nothing queued."""

    def deliver_batch(self, batch: Batch) -> None:
        """:meth:`deliver` each of ``batch.messages``, in order (groups hand a member the
        messages that arrived together in one call). Never blocks. Backends that can
        queue them at once (one write for all) override it."""
        for message in batch.messages:
            self.deliver(message)

    @abc.abstractmethod
    def ping(self, data: bytes = b"") -> None:
        """Send a ping frame. Raises ``ConnectionClosed`` once closed."""

    @abc.abstractmethod
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (bounded by ``WEBSOCKET_CLOSE_TIMEOUT``). Idempotent."""

    @abc.abstractmethod
    def is_closed(self) -> bool:
        """True once the connection is closed, by either side."""

    @property
    def closed(self) -> bool:
        """dwebsocket 0.5 attribute: same as :meth:`is_closed`."""
        return self.is_closed()

    # -- groups -----------------------------------------------------------------------------

    #: True when the client speaks dwebsocket's ``dws`` envelope (it announced ``dws=1``):
    #: group messages of history groups then reach it with their position.
    dws: bool = False

    def join(
        self,
        group: str,
        since: str | None = None,
        *,
        presence: dict[str, Any] | None = None,
        events: bool = False,
    ) -> Recovery:
        """Add this connection to ``group``; ``dwebsocket.groups.send(group, ...)`` reaches it.
        Left automatically when the connection closes.

        For a group that keeps history, ``since`` resumes after that position (see
        :func:`dwebsocket.groups.join`); returns a :class:`~dwebsocket.groups.Recovery`.
        ``presence=info`` makes it a present member (:func:`dwebsocket.groups.presence`),
        ``events=True`` has it receive the group's join and leave events."""
        from dwebsocket import groups

        return groups.join(group, self, since, presence=presence, events=events)

    def leave(self, group: str) -> None:
        """Remove this connection from ``group`` (no error if it was not a member)."""
        from dwebsocket import groups

        groups.leave(group, self)
