"""Frame-level building blocks of RFC 6455: opcodes, close codes, masking, encoding.

Parsing lives in :mod:`.connection`, where the receive loop reads headers straight out of
its buffer (no per-frame objects); this module holds what both directions share.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any

from ..exceptions import ProtocolError
from .accelerator import speedups

__all__ = [
    "CloseCode",
    "Opcode",
    "apply_mask",
    "as_octets",
    "encode_close_payload",
    "encode_frame",
    "frame_header",
    "is_valid_close_code",
    "parse_close_payload",
    "unmask",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 5.2, 11.8)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 7.4.1 and the IANA registry, RFC 6455 11.7)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


_CHUNK = 4096  # big-int XOR slows down past a few KiB: mask longer data in chunks


def _py_apply_mask(data: bytes | bytearray | memoryview, key: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte masking ``key`` repeated (RFC 6455 5.3); returns bytes.

    Pure Python: big-integer XOR, far faster than any per-byte loop. ``data`` and ``key``
    are read as ``bytes(...)`` reads them (any bytes-like object, contiguous or not).
    """
    key = bytes(key)
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes long")
    if type(data) is not bytes and type(data) is not bytearray:
        view = memoryview(data)
        one_piece = view.ndim == 1 and view.itemsize == 1 and view.c_contiguous
        data = view if one_piece else view.tobytes()  # len() counts its bytes
    n = len(data)
    if n <= _CHUNK:
        key_stream = key * ((n >> 2) + 1)
        return (int.from_bytes(data, "little") ^ int.from_bytes(key_stream[:n], "little")).to_bytes(
            n, "little"
        )
    # Made for each call, not kept: a client picks a new key for every frame (RFC 6455
    # 5.3), so a cache of keys would never be hit and would hold 4 KiB per key.
    key_int = int.from_bytes(key * (_CHUNK >> 2), "little")
    view = memoryview(data)
    from_bytes = int.from_bytes
    parts = [
        (from_bytes(view[i : i + _CHUNK], "little") ^ key_int).to_bytes(_CHUNK, "little")
        for i in range(0, n - _CHUNK + 1, _CHUNK)
    ]
    rest = n % _CHUNK
    if rest:
        parts.append(_py_apply_mask(view[n - rest :], key))
    return b"".join(parts)


def _py_unmask(buf: bytes | bytearray, start: int, end: int) -> bytes:
    """Return ``buf[start:end]`` unmasked with the key at ``buf[start - 4:start]``."""
    if not 4 <= start <= end <= len(buf):
        raise ValueError("unmask(): need 4 <= start <= end <= len(buf)")
    return _py_apply_mask(buf[start:end], buf[start - 4 : start])


_pack_H = struct.Struct("!H").pack
_pack_Q = struct.Struct("!Q").pack


def _py_frame_header(b0: int, length: int, masked: bool) -> bytes:
    """The header of a frame (RFC 6455 5.2): first byte ``b0`` (FIN, RSV bits, opcode),
    then the payload length in 7, 7+16 or 7+64 bits, with the mask bit if ``masked`` (the
    key follows, written by the caller). Raises ``ValueError`` for a negative length."""
    if not 0 <= b0 <= 255 or length < 0:
        raise ValueError("frame_header(): need 0 <= b0 <= 255 and length >= 0")
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 0x10000:
        return bytes((b0, mask_bit | 126)) + _pack_H(length)
    return bytes((b0, mask_bit | 127)) + _pack_Q(length)


_speedups: Any = speedups
_BytesLike = bytes | bytearray | memoryview
_c_apply_mask = _speedups.apply_mask if _speedups is not None else None
_c_frame_header = _speedups.frame_header if _speedups is not None else None
_c_unmask = _speedups.unmask if _speedups is not None else None
#: ``scan_messages(buf, pos, masked, max_length, out) -> int``: the receive loop's fast
#: path in C (see ``_speedups.c``); None when the extension is not built.
scan_messages: Callable[[bytes | bytearray, int, int, int, list[Any]], int] | None = (
    _speedups.scan_messages if _speedups is not None else None
)

#: ``apply_mask(data, key) -> bytes``: the C version when it is built, else pure Python.
apply_mask: Callable[[_BytesLike, bytes | bytearray], bytes] = (
    _c_apply_mask if _c_apply_mask is not None else _py_apply_mask
)
#: ``unmask(buf, start, end) -> bytes``: unmask a payload in place in a receive buffer.
unmask: Callable[[bytes | bytearray, int, int], bytes] = (
    _c_unmask if _c_unmask is not None else _py_unmask
)

#: ``frame_header(b0, length, masked) -> bytes``: the one frame-header encoder (the C
#: version, which the default backend's fast path also uses, when it is built).
frame_header: Callable[[int, int, bool], bytes] = (
    _c_frame_header if _c_frame_header is not None else _py_frame_header
)


def as_octets(data: _BytesLike) -> _BytesLike:
    """``data``, or ``bytes(data)`` when ``len(data)`` does not count its bytes or they
    are not in one piece (a memoryview of wider items, several dimensions or strides):
    a frame carries ``bytes(data)``, and its header counts those bytes."""
    if type(data) is memoryview and (data.ndim != 1 or data.itemsize != 1 or not data.c_contiguous):
        return data.tobytes()
    return data


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask_key: bytes | None = None,
) -> bytes:
    """Return the bytes of one frame (RFC 6455 5.2); masked with ``mask_key`` if given.

    Lengths use the shortest encoding. Raises ``ValueError`` for an invalid opcode, a
    control frame that is fragmented or longer than 125 bytes, or a bad mask key.
    """
    if opcode not in _OPCODES:
        raise ValueError(f"invalid opcode {opcode}")
    if type(payload) is memoryview:
        payload = as_octets(payload)
    n = len(payload)
    if opcode >= 8 and (n > 125 or not fin):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    header = frame_header(b0, n, mask_key is not None)
    if mask_key is not None:
        return header + mask_key + apply_mask(payload, mask_key)
    return header + payload


_OPCODES = frozenset(int(op) for op in Opcode)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 7.4).

    1000-1003 and 1007-1014 are registered for use; 3000-4999 belong to libraries and
    applications. 1004 is reserved; 1005, 1006 and 1015 must never be sent.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode_close_payload(code: int, reason: str = "") -> bytes:
    """Return the payload of a close frame: 2-byte code then UTF-8 reason (RFC 6455 5.5.1).

    Raises ``ValueError`` for a code that may not be sent or a payload over 125 bytes,
    ``TypeError`` for a code that is not an int or a reason that is not a str (``None``
    raised ``AttributeError`` from deep in a view's ``close()``).
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"close codes are int, not {type(code).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"close reasons are str, not {type(reason).__name__}")
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    payload = _pack_H(code) + reason.encode()
    if len(payload) > 125:
        raise ValueError("close reason is too long (at most 123 bytes of UTF-8)")
    return payload


def parse_close_payload(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    """Return ``(code, reason)`` from a close frame's payload; ``(1005, "")`` if empty.

    Raises ``ProtocolError`` (1002) for a 1-byte payload or a code that may not be sent,
    and ``ProtocolError`` with code 1007 when the reason is not UTF-8.
    """
    n = len(payload)
    if n == 0:
        return 1005, ""
    if n == 1:
        raise ProtocolError("close frame payload of 1 byte")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", 1007) from None
    return code, reason
