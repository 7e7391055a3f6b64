"""What the default backend's C fast path shares with the Python code of one connection.

``IOState`` holds the few fields of a ``DefaultWebSocket`` (and its ``Transport``) that
``_fastpath.c`` reads and writes: typed, named, and a C struct when the extension is
built, so the C code reads them as plain memory (no attribute lookup, no Python code can
run) and a refactor of the Python side cannot silently break it. The Python class below
is its twin, used when the extension is not built; ``tests/backends/default/
test_state.py`` checks that both have the same fields. The core's share
(``Connection.rx``, ``dwebsocket.protocol.connection.ReceiveState``) is the other half.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from dwebsocket.protocol.accelerator import speedups_disabled
from dwebsocket.typing import Message

__all__ = ["FIELDS", "IOState", "PyIOState", "fastpath"]

#: Field -> type, in the C struct's order.
FIELDS: dict[str, type] = {
    "shut": bool,  # the transport is shut down: nothing more in or out
    "unfed": bool,  # received bytes wait in DefaultWebSocket._unfed for the backlog
    "ping_outstanding": bool,  # a keepalive ping is unanswered ...
    "queued": int,  # bytes waiting in the outbox (Outbox keeps it current)
    "last_heard": float,  # monotonic time the peer was last heard from
    "ping_sent_at": float,  # ... since this monotonic time
    "db_checked": float,  # the last release_idle_connections() (Transport.wait_readable)
    # What the connection carried since the 101, for dwebsocket.metrics (each only grows):
    "messages_in": int,  # data messages the core completed
    "bytes_in": int,  # bytes read from the socket
    "messages_out": int,  # data messages encoded to send
    "bytes_out": int,  # bytes written to the socket (the 101 not included)
    # The messages received and not yet taken by the view: a collections.deque while
    # there are some, else None (an empty deque is a 64-slot block: an idle connection
    # keeps none). Made (DefaultWebSocket._feed) and dropped (_read_once) under the read
    # lock only; taken from by anyone. The only field that is an object: None here.
    "messages": type(None),
}


class PyIOState:
    """The Python twin of ``_fastpath.IOState`` (see the module docstring)."""

    __slots__ = tuple(FIELDS)

    def __init__(self) -> None:
        self.shut = False
        self.unfed = False
        self.ping_outstanding = False
        self.queued = 0
        self.last_heard = 0.0
        self.ping_sent_at = math.nan
        self.db_checked = -1.0
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.messages: deque[Message] | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"IOState({fields})"


fastpath: Any
if speedups_disabled():
    fastpath = None
else:
    try:  # the I/O fast path in C (_fastpath.c), built where a compiler was found
        from dwebsocket.backends.default import _fastpath as fastpath
    except ImportError:  # pragma: no cover - exercised when the extension is not built
        fastpath = None

#: The state type in use: the C struct when ``_fastpath`` is built, else the twin.
IOState: Any = fastpath.IOState if fastpath is not None else PyIOState
