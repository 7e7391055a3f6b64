"""The types of messages, for every module of dwebsocket.

A leaf: it imports nothing, so any module (the sans-I/O core included) may import it
without creating an import circle.
"""

from __future__ import annotations

__all__ = ["BytesLike", "Message"]

#: A message as ``wait()`` returns it: a text message is ``str``, a binary one ``bytes``.
Message = str | bytes

#: What a binary message may be sent as (``send()`` also takes a ``str``, as text).
BytesLike = bytes | bytearray | memoryview
