"""A run of group messages handed to each member in one call.

The Redis layer's reader takes every message that has arrived before it fans out; a
member then gets them all at once (``WebSocket.deliver_batch``): one lock pair and one
``write(2)`` per member for the run instead of per message, and the frames a plain
connection sends encoded once for every member (bench/FINDINGS.md, section 14).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dwebsocket.protocol.connection import plain_frames
from dwebsocket.typing import Message

__all__ = ["Batch", "deliver_batch"]


class Batch:
    """Messages for a member, in order, with their frames as a server connection without
    an extension sends them, encoded at most once (:meth:`frames`) however many members
    get the same batch. Read-only once made."""

    __slots__ = ("_frames", "messages")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self._frames: bytes | None = None

    def frames(self) -> bytes:
        """``protocol.connection.plain_frames(self.messages)``, computed once."""
        if self._frames is None:
            self._frames = plain_frames(self.messages)
        return self._frames

    def __len__(self) -> int:
        return len(self.messages)


class _Sink(Protocol):
    def deliver(self, message: Message) -> None: ...


def deliver_batch(member: _Sink, batch: Batch) -> None:
    """Hand ``batch`` to ``member``: in one call if it offers ``deliver_batch`` (every
    ``WebSocket`` does), else message by message. Never blocks."""
    method = getattr(member, "deliver_batch", None)
    if method is not None:
        method(batch)
    else:
        for message in batch.messages:
            member.deliver(message)
