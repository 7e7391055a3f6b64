"""Helpers for the protocol tests: an independent frame writer and ways to feed bytes."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

from dwebsocket.protocol.connection import Connection, Event

#: The masking key of the RFC 6455 5.7 examples.
KEY = b"\x37\xfa\x21\x3d"


def xor(payload: bytes, key: bytes) -> bytes:
    """Byte-by-byte masking: slow and obviously right, unlike the code under test."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes = KEY,
    length_bytes: int | None = None,
    length: int | None = None,
) -> bytes:
    """Write any frame, valid or not (RFC 6455 5.2), independently of ``encode_frame``.

    ``length_bytes`` forces the length encoding (0, 2 or 8 extra bytes; non-minimal is
    legal); ``length`` lies about the payload length.
    """
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    if length_bytes == 0:
        header = bytes([b0, mask_bit | n])
    elif length_bytes == 2:
        header = bytes([b0, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([b0, mask_bit | 127]) + n.to_bytes(8, "big")
    if masked:
        return header + key + xor(payload, key)
    return header + payload


def feed(conn: Connection, pieces: Iterable[bytes]) -> tuple[list[Event], bytes]:
    """Feed ``pieces`` one call each; return all events and all queued output."""
    events: list[Event] = []
    out = b""
    for piece in pieces:
        events += conn.receive_data(piece)
        out += conn.data_to_send()
    return events, out


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (sorted, deduplicated, empty pieces dropped)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def close_frame(code: int, reason: bytes = b"", *, masked: bool = False) -> bytes:
    """A close frame with ``code`` (as the server would send it: unmasked by default)."""
    return frame(0x8, code.to_bytes(2, "big") + reason, masked=masked)


class LosingEncoder:
    """The server's encoder whose next ``compress()`` fails as one that ran out of memory
    after zlib took the input: the stream moved on, its output is lost."""

    def __init__(self, encoder: object) -> None:
        self.encoder, self.fail = encoder, True

    def compress(self, data: bytes) -> bytes:
        out: bytes = self.encoder.compress(data)  # type: ignore[attr-defined]
        if self.fail:
            self.fail = False
            raise MemoryError
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.encoder, name)
