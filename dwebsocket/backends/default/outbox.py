"""What is waiting to be written on one connection, in order.

Every frame goes through one ordered queue, so frames reach the wire in the order the
core encoded them (permessage-deflate's shared context depends on it). Messages a group
delivers before the handshake wait as messages (they cannot be encoded yet) and go first
once it is done. The owner (``DefaultWebSocket``) guards an ``Outbox`` with its core lock
and writes what :meth:`Outbox.take` returns under its write lock.

``io.queued`` (the connection's ``IOState``) is the number of bytes queued, kept current
here: the C fast path sends a frame itself only when it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dwebsocket.typing import BytesLike, Message

__all__ = ["Outbox"]


class Outbox:
    """The frames of one connection waiting for the wire (see the module docstring).

    Not thread-safe: call every method with the owner's core lock held.
    """

    __slots__ = ("_early", "_early_size", "_frames", "_io", "_partial", "early_overflow")

    def __init__(self, io: Any) -> None:
        self._io = io
        self._frames: list[bytes] = []
        # The first frame is the rest of one partly written: an overflow must keep it.
        self._partial = False
        self._early: list[Message] = []
        self._early_size = 0
        #: Messages delivered before the handshake went over the limit: close with 1008.
        self.early_overflow = False

    def __bool__(self) -> bool:
        return bool(self._frames)

    @property
    def partial(self) -> bool:
        """The first frame queued is the rest of one the kernel took in part."""
        return self._partial

    @property
    def size(self) -> int:
        """Bytes queued."""
        return int(self._io.queued)

    def append(self, data: bytes, *, partial: bool = False) -> None:
        """Queue ``data``; ``partial``: it is the rest of a frame the kernel took in part,
        and nothing else is queued."""
        if partial:
            self._partial = True
        self._frames.append(data)
        self._io.queued += len(data)

    def take(self) -> bytes:
        """Everything queued, in order, as one bytes object (b"" if nothing)."""
        frames = self._frames
        if not frames:
            return b""
        self._frames, self._partial = [], False
        self._io.queued = 0
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def drop_whole_frames(self) -> None:
        """Drop every whole frame queued; keep the rest of one partly written, or a close
        frame queued next would land inside its payload."""
        self._frames = self._frames[:1] if self._partial else []
        self._io.queued = sum(map(len, self._frames))

    # -- before the handshake -------------------------------------------------------

    def add_early(self, messages: Sequence[str | BytesLike], limit: int) -> None:
        """Keep ``messages``, delivered before the handshake, unless the early messages
        would exceed ``limit`` bytes: then drop them all and set :attr:`early_overflow`.

        Raises ``UnicodeEncodeError`` for a ``str`` UTF-8 cannot encode (a lone
        surrogate), keeping none of ``messages``: as the core refuses it once accepted.
        Kept, it made the accept that encodes it fail after the takeover."""
        kept = []
        size = 0
        for message in messages:
            if isinstance(message, (bytearray, memoryview)):
                # A bytes-like's bytes (len() of a memoryview counts its items), as they
                # are now: the caller may reuse its buffer once deliver() returns.
                message = bytes(message)
            if isinstance(message, str) and not message.isascii():
                size += len(message.encode())  # UTF-8 on the wire; raises for a surrogate
            else:
                size += len(message)
            kept.append(message)
        if self.early_overflow or self._early_size + size > limit:
            self._early, self._early_size, self.early_overflow = [], 0, True
            return
        self._early.extend(kept)
        self._early_size += size

    def take_early(self) -> list[Message]:
        """The messages delivered before the handshake, in order; forgets them."""
        early, self._early, self._early_size = self._early, [], 0
        return early
