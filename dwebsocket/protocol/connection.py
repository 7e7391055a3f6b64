"""The WebSocket connection state machine (RFC 6455 5-7), sans I/O.

Feed received bytes to :meth:`Connection.receive_data`, get events back: messages as
plain ``str`` (text) and ``bytes`` (binary), ``Ping``, ``Pong`` and one final ``Close``.
Bytes the protocol produces by itself (pongs, the close reply, the close that fails the
connection) wait in :meth:`Connection.data_to_send`; the ``send_*`` methods return the
bytes of the caller's own frames. The I/O layer writes both, in the order it got them:
``data_to_send()`` right after each ``receive_data()``.

The receive loop is the hot path: it reads headers straight out of the buffer at an
offset and handles a whole small unfragmented frame inline, with no per-frame objects.
When the C accelerator is built, ``scan_messages`` takes such frames first and the loop
goes on from where it stopped. Everything else (fragments, control frames, compression,
errors) goes the slow way.
"""

from __future__ import annotations

import codecs
import enum
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..exceptions import InvalidState, PayloadTooBig, ProtocolError
from .accelerator import speedups
from .deflate import PerMessageDeflate
from .frames import (
    as_octets,
    encode_close_payload,
    encode_frame,
    frame_header,
    parse_close_payload,
    scan_messages,
    unmask,
)

__all__ = [
    "Close",
    "Connection",
    "Event",
    "Ping",
    "Pong",
    "ReceiveState",
    "State",
    "plain_frames",
]


class State(enum.Enum):
    """Where the closing handshake stands (RFC 6455 7.1).

    OPEN: no close frame sent or received. CLOSING: we sent a close frame and wait for
    the peer's. CLOSED: close frames went both ways, the connection failed, or the
    transport ended.
    """

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping frame was received; the pong is already queued in ``data_to_send()``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong frame was received."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The connection is closing: the peer's close frame arrived (``code`` 1005 if it had
    none), the peer broke the protocol (the code we sent), or the transport ended (1006).
    Always the last event.
    """

    code: int
    reason: str


#: What ``receive_data`` returns, in order: text messages as ``str``, binary as ``bytes``.
Event = str | bytes | Ping | Pong | Close


class PyReceiveState:
    """What :class:`Connection` keeps current for an I/O layer's fast path (``Connection.rx``).

    ``open``: the connection is OPEN. ``scan_limit``: the largest payload a fast path may
    take itself out of the next bytes received (whole, final, masked-by-the-rules text or
    binary frames, as ``frames.scan_messages`` takes them; with permessage-deflate also
    compressed ones, as :meth:`PerMessageDeflate.decompress` takes them, bounded by
    ``max_message`` after decompression), or -1 when it may take nothing now (a frame or
    a fragmented message is in progress, or the connection is done). ``max_message``:
    the message limit after decompression (``sys.maxsize``: none). The C twin,
    ``_speedups.ReceiveState``, is a struct that the default backend's C fast path reads
    without running Python; this class stands in when the extension is not built.
    """

    __slots__ = ("max_message", "open", "scan_limit")

    def __init__(
        self, *, open: bool = True, scan_limit: int = -1, max_message: int = sys.maxsize
    ) -> None:
        self.open = open
        self.scan_limit = scan_limit
        self.max_message = max_message

    def __repr__(self) -> str:
        return (
            f"ReceiveState(open={self.open}, scan_limit={self.scan_limit}, "
            f"max_message={self.max_message})"
        )


#: ``_speedups.ReceiveState`` when the C accelerator is built, else :class:`PyReceiveState`.
ReceiveState: type[PyReceiveState] = (
    speedups.ReceiveState if speedups is not None else PyReceiveState
)

_OPEN, _CLOSING, _CLOSED = State.OPEN, State.CLOSING, State.CLOSED
_unpack_Q = struct.Struct("!Q").unpack_from
_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_NO_LIMIT = sys.maxsize
_OCTETS = (bytes, bytearray, memoryview)
_scan = scan_messages  # None: pure Python (tests set it so to run both)
# What each frame of a message costs against its wire budget besides its payload (about
# a masked header), so that no message can run on over endless empty fragments.
_FRAME_COST = 8
# Fragments shorter than this are merged before they are kept: an object per tiny
# fragment would cost many times the fragment itself.
_SMALL = 256

# The headers of final unmasked frames with payloads under 126 bytes, made once.
_TEXT_HEADERS = [frame_header(0x81, n, False) for n in range(126)]
_BINARY_HEADERS = [frame_header(0x82, n, False) for n in range(126)]


def _plain_frame(data: bytes | bytearray | memoryview, text: bool) -> bytes:
    """An unmasked (RFC 6455 5.1), uncompressed frame of one message: what a server
    connection without an extension sends, the same bytes for every such connection."""
    if type(data) is memoryview:
        data = as_octets(data)
    n = len(data)
    if n < 126:
        return (_TEXT_HEADERS if text else _BINARY_HEADERS)[n] + data
    return encode_frame(0x1 if text else 0x2, data)


def plain_frames(messages: Sequence[str | bytes | bytearray | memoryview]) -> bytes:
    """The frames of ``messages``, in order, as a server connection without an extension
    sends them (``Connection.send_messages``): a group encodes them once for all its
    members. ``str`` as text, bytes-like as binary."""
    return b"".join(
        [
            _plain_frame(m.encode(), True) if isinstance(m, str) else _plain_frame(m, False)
            for m in messages
        ]
    )


def _binary_octets(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``as_octets(data)`` of a binary message; ``TypeError`` if it is none."""
    if not isinstance(data, _OCTETS):
        raise TypeError(f"cannot send {type(data).__name__}: expected str or bytes")
    return as_octets(data)


def _limit(value: int | None) -> int:
    """A size limit as the receive loop compares it: sys.maxsize for None and for any
    limit no frame or message can reach (RFC 6455 5.2: 63-bit lengths), -1 for any
    negative one (each refuses every message alike); rx, a C struct, holds C sizes."""
    return _NO_LIMIT if value is None else min(max(value, -1), _NO_LIMIT)


def _truncate_reason(reason: str) -> str:
    """Cut ``reason`` so that it fits in a close frame (123 bytes of UTF-8)."""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode(errors="ignore")


class Connection:
    """One WebSocket connection, after the handshake; server side unless ``client``.

    ``deflate`` is the negotiated permessage-deflate codec, if any.
    ``max_message_size`` bounds a message after decompression and ``max_frame_size`` a
    frame's payload on the wire; None means no limit. Exceeding either fails the
    connection with 1009, and so does a message whose frames take more than the limit
    plus an eighth plus 4 KiB on the wire, counting 8 bytes per frame besides its
    payload (a message of endless empty fragments ends too). Not thread-safe: the I/O
    layer serializes calls.
    """

    # Slots: 30 attributes overflow CPython's key-sharing dict (bench/FINDINGS.md, sec. 11).
    __slots__ = (
        "_buf",
        "_compressed",
        "_done",
        "_fast_max",
        "_frag",
        "_mask_bit",
        "_mask_keys",
        "_max_frame",
        "_max_frame_size",
        "_max_message",
        "_max_message_size",
        "_max_wire",
        "_need",
        "_out",
        "_parts",
        "_scan_limit",
        "_size",
        "_tail",
        "_text_decoder",
        "_wire",
        "client",
        "close_code",
        "close_reason",
        "close_received",
        "close_sent",
        "deflate",
        "eof",
        "error",
        "rx",
        "state",
    )

    def __init__(
        self,
        *,
        client: bool = False,
        deflate: PerMessageDeflate | None = None,
        max_message_size: int | None = 2**20,
        max_frame_size: int | None = None,
    ) -> None:
        self.client = client
        self.deflate = deflate
        #: What a fast path of the I/O layer may read (see :class:`PyReceiveState`).
        self.rx = ReceiveState(open=True, scan_limit=-1)
        self._set_limits(max_message_size, max_frame_size)

        self.state = State.OPEN
        #: The code of the peer's close frame (1005 if it had none); the code we sent when
        #: the peer broke the protocol; 1006 when the transport ended first. None before.
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_sent = False
        self.close_received = False
        #: The violation that failed the connection, if any.
        self.error: ProtocolError | None = None
        #: True once ``receive_data(b"")`` reported the end of the transport.
        self.eof = False

        # Servers require masked frames, clients unmasked ones (RFC 6455 5.1).
        self._mask_bit = 0 if client else 0x80
        self._mask_keys = b""

        self._buf = bytearray()  # the start of an incomplete frame
        self._need = 0  # len(_buf) worth parsing again
        self._out: list[bytes] = []
        self._done = False  # Close was emitted: ignore all further input

        # The fragmented message in progress (RFC 6455 5.4).
        self._frag = 0  # its opcode (TEXT or BINARY), 0 if none
        self._compressed = False
        self._parts: list[bytes] | list[str] = []
        self._tail: bytes | str = b""  # small fragments not yet in _parts
        self._text_decoder: codecs.IncrementalDecoder | None = None
        self._size = 0  # bytes so far, after decompression
        self._wire = 0  # bytes so far, on the wire (payloads plus _FRAME_COST per frame)
        self._sync_rx()

    def _set_limits(self, max_message_size: int | None, max_frame_size: int | None) -> None:
        self._max_message_size = max_message_size
        self._max_frame_size = max_frame_size
        self._max_message = _limit(max_message_size)
        self._max_frame = _limit(max_frame_size)
        # A compressed message cannot be much longer than its decompressed form; this
        # bounds what we buffer before decompressing (deflate's worst case is a 5-byte
        # header per stored block; allow generous slack for odd encoders).
        self._max_wire = self._max_message + (self._max_message >> 3) + 4096
        self._fast_max = min(self._max_message, self._max_frame)
        # rx.scan_limit at a frame boundary. A compressed frame of up to _fast_max bytes
        # passes _check_header() too (_max_wire > _max_message).
        self._scan_limit = self._fast_max

    def _sync_rx(self) -> None:
        """Bring ``rx.scan_limit`` up to date after the limits changed."""
        at_boundary = not self._buf and not self._frag and not self._done
        self.rx.scan_limit = self._scan_limit if at_boundary else -1
        self.rx.max_message = self._max_message

    @property
    def max_message_size(self) -> int | None:
        """Limit of a message's size after decompression, in bytes; None: no limit."""
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int | None) -> None:
        self._set_limits(value, self._max_frame_size)
        self._sync_rx()

    @property
    def max_frame_size(self) -> int | None:
        """Limit of a frame's payload on the wire, in bytes; None: no limit."""
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int | None) -> None:
        self._set_limits(self._max_message_size, value)
        self._sync_rx()

    def __repr__(self) -> str:
        side = "client" if self.client else "server"
        return f"<Connection {side} {self.state.name} close_code={self.close_code}>"

    # -- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes received from the peer; ``b""`` means the transport ended (EOF).

        Returns the events they complete, in order. Pongs to pings, the reply to a
        close frame and the close frame failing the connection on a protocol violation
        are queued for :meth:`data_to_send`. Never raises for anything the peer sends:
        a violation ends with ``Close(code, reason)`` and sets :attr:`error`. After the
        ``Close`` event, returns ``[]``.
        """
        if not data:
            return self._receive_eof()
        if self._done:
            return []
        buf: bytes | bytearray = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)

        events: list[Event] = []
        append = events.append
        n = len(buf)
        mask_bit = self._mask_bit
        fast_max = self._fast_max
        frag = self._frag
        # The fast path below, in C when it is built: it takes the frames it can and the
        # loop goes on from where it stopped.
        scan = _scan
        pos = 0 if scan is None or frag else scan(buf, 0, mask_bit, fast_max, events)
        need = 2
        try:
            while True:
                if n - pos < 2:
                    need = 2
                    break
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    start = pos + 2
                elif length == 126:
                    if n - pos < 4:
                        need = 4
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                else:
                    if n - pos < 10:
                        need = 10
                        break
                    length = _unpack_Q(buf, pos + 2)[0]
                    if length >> 63:
                        # RFC 6455 5.2: the most significant bit MUST be 0.
                        raise ProtocolError("64-bit payload length with the high bit set")
                    start = pos + 10
                if b1 & 0x80 != mask_bit:
                    raise ProtocolError(
                        "unmasked frame from client" if mask_bit else "masked frame from server"
                    )
                if mask_bit:
                    start += 4
                end = start + length

                if (b0 == 0x81 or b0 == 0x82) and not frag and length <= fast_max:
                    # Fast path: a whole unfragmented, uncompressed message.
                    if end > n:
                        need = end - pos
                        break
                    payload = unmask(buf, start, end) if mask_bit else bytes(buf[start:end])
                    pos = end
                    if b0 == 0x81:
                        try:
                            append(payload.decode())
                        except UnicodeDecodeError:
                            raise ProtocolError("invalid UTF-8 in text message", 1007) from None
                    else:
                        append(payload)
                    continue

                self._check_header(b0, length)
                if end > n:
                    need = end - pos
                    break
                payload = unmask(buf, start, end) if mask_bit else bytes(buf[start:end])
                pos = end
                self._receive_frame(b0, payload, events)
                if self._done:
                    self._buf = bytearray()
                    return events
                frag = self._frag
        except ProtocolError as exc:
            self._fail(exc, events)
            self._buf = bytearray()
            return events

        # Keep the incomplete tail for the next call.
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(memoryview(buf)[pos:])
        self._need = need
        self.rx.scan_limit = -1 if self._buf or self._frag else self._scan_limit
        return events

    def _check_header(self, b0: int, length: int) -> None:
        """Validate a frame header before its payload arrives (fail fast)."""
        opcode = b0 & 0x0F
        if b0 & 0x70:
            # RFC 6455 5.2: RSV bits only with an extension defining them; RFC 7692 6:
            # permessage-deflate defines RSV1, on the first frame of a data message.
            if b0 & 0x30:
                raise ProtocolError("reserved bits RSV2/RSV3 set")
            if self.deflate is None:
                raise ProtocolError("reserved bit RSV1 set without a negotiated extension")
            if opcode not in (1, 2):
                raise ProtocolError("reserved bit RSV1 set on a control or continuation frame")
        if opcode >= 8:
            if opcode > 10:
                raise ProtocolError(f"reserved opcode {opcode}")
            # RFC 6455 5.5: control frames are never fragmented, payload <= 125 bytes.
            if not b0 & 0x80:
                raise ProtocolError("fragmented control frame")
            if length > 125:
                raise ProtocolError("control frame payload longer than 125 bytes")
            return
        if opcode == 0:
            if not self._frag:
                raise ProtocolError("continuation frame without a message to continue")
            compressed = self._compressed
            size, wire = self._size, self._wire
        elif opcode <= 2:
            if self._frag:
                raise ProtocolError("new data frame while a fragmented message is in progress")
            compressed = bool(b0 & 0x40)
            size = wire = 0
        else:
            raise ProtocolError(f"reserved opcode {opcode}")
        if length > self._max_frame:
            raise PayloadTooBig(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        if not compressed and size + length > self._max_message:
            raise PayloadTooBig(f"message exceeds the limit of {self._max_message} bytes")
        if wire + length + _FRAME_COST > self._max_wire:
            raise PayloadTooBig(
                f"{'compressed' if compressed else 'fragmented'} message exceeds the limit "
                f"of {self._max_message} bytes on the wire"
            )

    def _receive_frame(self, b0: int, payload: bytes, events: list[Event]) -> None:
        """Handle one complete frame whose header passed :meth:`_check_header`."""
        opcode = b0 & 0x0F
        if opcode >= 8:
            if opcode == 9:
                # RFC 6455 5.5.2: answer with a pong carrying the same data, unless we
                # already sent our close frame (5.5.1: nothing may follow it).
                if not self.close_sent:
                    self._out.append(self._encode(0xA, payload))
                events.append(Ping(payload))
            elif opcode == 0xA:
                events.append(Pong(payload))
            else:
                self._receive_close(payload, events)
            return

        fin = b0 & 0x80
        if opcode:
            self._frag = opcode
            self._compressed = compressed = bool(b0 & 0x40)
            self._size = self._wire = 0
            if fin and compressed:
                # A whole compressed message in one frame (an uncompressed one took
                # the fast path).
                assert self.deflate is not None
                payload = self.deflate.decompress(payload, self.max_message_size)
                self._frag = 0
                if opcode == 1:
                    try:
                        events.append(payload.decode())
                    except UnicodeDecodeError:
                        raise ProtocolError("invalid UTF-8 in text message", 1007) from None
                else:
                    events.append(payload)
                return
            self._parts = []
            self._tail = "" if opcode == 1 else b""
            self._text_decoder = _utf8_decoder() if opcode == 1 else None

        self._wire += len(payload) + _FRAME_COST
        if self._compressed:
            assert self.deflate is not None
            budget = None if self.max_message_size is None else self._max_message - self._size
            payload = self.deflate.decompress_fragment(payload, bool(fin), budget)
        self._size += len(payload)
        decoder = self._text_decoder
        piece: bytes | str = payload
        if decoder is not None:
            # RFC 6455 8.1: fail as soon as the bytes cannot be UTF-8 (incremental).
            try:
                piece = decoder.decode(payload, bool(fin))
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in text message", 1007) from None
            if not fin:
                # The codec waits for the third byte before refusing a UTF-16 surrogate
                # (ED A0..BF); no valid text starts that way, so fail now.
                pending = decoder.getstate()[0]
                if len(pending) > 1 and pending[0] == 0xED and pending[1] >= 0xA0:
                    raise ProtocolError("invalid UTF-8 in text message", 1007)
        parts = self._parts
        tail = self._tail
        if len(piece) < _SMALL:
            tail += piece  # type: ignore[operator]
            if len(tail) >= _SMALL or fin:
                parts.append(tail)  # type: ignore[arg-type]
                tail = piece[:0]
        else:
            if tail:
                parts.append(tail)  # type: ignore[arg-type]
                tail = piece[:0]
            parts.append(piece)  # type: ignore[arg-type]
        self._tail = tail
        if fin:
            events.append("".join(parts) if decoder is not None else b"".join(parts))  # type: ignore[arg-type]
            self._frag = 0
            self._parts = []
            self._text_decoder = None

    def _receive_close(self, payload: bytes, events: list[Event]) -> None:
        code, reason = parse_close_payload(payload)
        self.close_received = True
        self.close_code, self.close_reason = code, reason
        if not self.close_sent:
            # RFC 6455 5.5.1: answer with a close frame, echoing the status code.
            reply = 1000 if code == 1005 else code
            self._out.append(self._encode(0x8, encode_close_payload(reply)))
            self.close_sent = True
        self._closed(events, Close(code, reason))

    def _fail(self, exc: ProtocolError, events: list[Event]) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7) because of ``exc``."""
        self.error = exc
        if not self.close_sent:
            payload = encode_close_payload(exc.code, _truncate_reason(exc.reason))
            self._out.append(self._encode(0x8, payload))
            self.close_sent = True
        self.close_code, self.close_reason = exc.code, exc.reason
        self._closed(events, Close(exc.code, exc.reason))

    def _receive_eof(self) -> list[Event]:
        self.eof = True
        if self._done:
            return []
        # RFC 6455 7.1.5: closed without a close frame is 1006.
        self.close_code, self.close_reason = 1006, ""
        events: list[Event] = []
        self._closed(events, Close(1006, ""))
        return events

    def _closed(self, events: list[Event], close: Close) -> None:
        self.state = _CLOSED
        self.rx.open = False
        self.rx.scan_limit = -1
        self._done = True
        self._frag = 0
        self._parts = []
        self._tail = b""
        self._text_decoder = None
        events.append(close)

    # -- output ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Return and forget the bytes the protocol queued itself; ``b""`` if none.

        Write them right after :meth:`receive_data`, before any frame sent in response
        to the events it returned: a pong must precede the echo of a message that was
        completed after the ping (Autobahn 5.6).
        """
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    @property
    def should_close_transport(self) -> bool:
        """Whether to flush :meth:`data_to_send` and then close the TCP connection.

        True once the transport ended, the connection failed, or (server side) close
        frames went both ways. RFC 6455 7.1.1: the server closes TCP first, so a client
        after a clean close waits for the server's EOF (or its own timeout).
        """
        if self.eof or self.error is not None:
            return True
        return self.close_sent and self.close_received and not self.client

    def _mask_key(self) -> bytes:
        # RFC 6455 5.3/10.3: unpredictable keys; read the entropy in batches.
        keys = self._mask_keys
        if not keys:
            keys = os.urandom(1024)
        self._mask_keys = keys[4:]
        return keys[:4]

    def _encode(
        self, opcode: int, payload: bytes | bytearray | memoryview, rsv1: bool = False
    ) -> bytes:
        if self.client:
            return encode_frame(opcode, payload, rsv1=rsv1, mask_key=self._mask_key())
        return encode_frame(opcode, payload, rsv1=rsv1)

    def _deflated(self, opcode: int, data: bytes | bytearray | memoryview) -> bytes:
        """The frame of one message compressed with permessage-deflate (RSV1, RFC 7692
        6.1). Compressing moves the context on, the peer's copy of which decodes our next
        messages (7.2.3): a failure part way (``MemoryError``; or a frame made and then
        lost) leaves no way to send one the peer would decode as we meant, so it fails
        the connection (1011, :meth:`_lose_compressor`) before raising."""
        assert self.deflate is not None
        try:
            return self._encode(opcode, self.deflate.compress(data), True)
        except BaseException:
            self._lose_compressor()
            raise

    def _lose_compressor(self) -> None:
        """Fail the connection (RFC 6455 7.1.7) after a compression failed part way:
        queue a close frame with 1011 (internal error) in :meth:`data_to_send`, which is
        the last frame we send, and record it as ``close_code`` and ``close_reason``
        (the peer's answer replaces them). The closing handshake then ends as one we
        started."""
        if not self.close_sent and self.state is not _CLOSED:
            self._out.append(self.send_close(1011, "compression failed"))
            self.close_code, self.close_reason = 1011, "compression failed"

    def _check_open(self) -> None:
        if self.state is not _OPEN:
            raise InvalidState(f"cannot send: the connection is {self.state.name}")

    def send_text(self, text: str) -> bytes:
        """Return the frame of a text message. Raises ``InvalidState`` unless OPEN; with
        permessage-deflate, a compression that fails (``MemoryError``) fails the
        connection first: a close frame with 1011 waits in :meth:`data_to_send`."""
        if self.state is not _OPEN:
            self._check_open()
        data = text.encode()
        if self.deflate is not None:
            return self._deflated(0x1, data)
        if self.client:
            return encode_frame(0x1, data, mask_key=self._mask_key())
        return _plain_frame(data, True)

    def send_binary(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return the frame of a binary message. Raises like :meth:`send_text`."""
        if self.state is not _OPEN:
            self._check_open()
        if self.deflate is not None:
            if not isinstance(data, _OCTETS):  # here, not part way: see _deflated()
                raise TypeError(f"cannot send {type(data).__name__}: expected bytes")
            return self._deflated(0x2, as_octets(data))
        if self.client:
            return encode_frame(0x2, data, mask_key=self._mask_key())
        return _plain_frame(data, False)

    def send_message(self, message: str | bytes | bytearray | memoryview) -> bytes:
        """Return the frame of ``message``: ``str`` as text, bytes-like as binary."""
        if isinstance(message, str):
            return self.send_text(message)
        return self.send_binary(message)

    def send_messages(
        self,
        messages: Sequence[str | bytes | bytearray | memoryview],
        plain: Callable[[], bytes] | None = None,
    ) -> bytes:
        """Return the frames of ``messages``, in order, as one bytes object: what
        :meth:`send_message` returns for each. ``plain``, if given, returns
        :func:`plain_frames` of the same messages, encoded once for many connections; it
        is used when this one is a server connection without an extension. Raises
        ``InvalidState`` unless OPEN, ``TypeError`` (or ``UnicodeEncodeError``) for any
        message before compressing one; a compression that fails fails the connection,
        as in :meth:`send_text`, and none of the frames is returned."""
        if self.state is not _OPEN:
            self._check_open()
        if self.deflate is None:
            if plain is not None and not self.client:
                return plain()
            return b"".join([self.send_message(message) for message in messages])
        # Every message's type and encoding first: a TypeError or UnicodeEncodeError
        # after some were compressed would lose frames the compressor's context (and so
        # the peer's next messages) already counts on.
        payloads = [
            (0x1, m.encode()) if isinstance(m, str) else (0x2, _binary_octets(m)) for m in messages
        ]
        try:
            return b"".join([self._deflated(opcode, data) for opcode, data in payloads])
        except BaseException:
            self._lose_compressor()  # the frames made are dropped: no more may follow
            raise

    def send_ping(self, data: bytes = b"") -> bytes:
        """Return a ping frame (at most 125 bytes of data). Raises ``InvalidState``
        unless OPEN, ``ValueError`` if ``data`` is too long."""
        self._check_open()
        return self._encode(0x9, data)

    def send_pong(self, data: bytes = b"") -> bytes:
        """Return an unsolicited pong frame (RFC 6455 5.5.3); raises like :meth:`send_ping`."""
        self._check_open()
        return self._encode(0xA, data)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake: return our close frame, ``b""`` if one was sent
        already or the connection is CLOSED. ``code`` 1005 sends a close frame without a
        status. Raises ``ValueError`` for a code that may not be sent or a reason longer
        than 123 bytes of UTF-8.
        """
        if self.close_sent or self.state is _CLOSED:
            return b""
        payload = b"" if code == 1005 and not reason else encode_close_payload(code, reason)
        self.close_sent = True
        self.state = _CLOSING
        self.rx.open = False
        return self._encode(0x8, payload)
