"""permessage-deflate (RFC 7692): negotiation and the per-message codec.

:meth:`PerMessageDeflate.negotiate` answers a client's offers (server side),
:meth:`~PerMessageDeflate.client_offer` / :meth:`~PerMessageDeflate.from_response` are
the client side. The codec compresses whole messages and decompresses them fragment by
fragment with a bound on the output, so a decompression bomb costs at most the limit.

The zlib streams are ``_deflate.Deflater`` and ``_deflate.Inflater`` (C, zlib called
directly; an idle connection's streams are shared, see ``_deflate.c``) where that
extension is built, else :class:`PyDeflater` and :class:`PyInflater` over Python's
``zlib`` module: the same calls, the same bytes. The rules are here either way.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from ..exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from ..typing import BytesLike
from .accelerator import speedups_disabled
from .handshake import ExtensionOffer, parse_extensions

__all__ = ["PerMessageDeflate", "PyDeflater", "PyInflater"]

EXTENSION_NAME = "permessage-deflate"

# What a lost compressor raises (PyDeflater, _deflate.Deflater): RFC 7692 7.2.3, its next
# message could not be decoded in the context its earlier ones built.
_LOST = "a compression failed part way: the stream lost its context (reset() starts a new one)"

# RFC 7692 7.2.1: a sync flush ends with an empty stored block, 00 00 ff ff, which the
# sender strips and the receiver appends back (7.2.2).
_TAIL = b"\x00\x00\xff\xff"

#: Defaults of the codec: a 4 KiB window, zlib's default level, memLevel 5 (see negotiate).
DEFAULT_WINDOW_BITS = 12
DEFAULT_LEVEL = 6
DEFAULT_MEM_LEVEL = 5

# RFC 7692 7.1.2.1: window bits are 8 to 15, written without leading zeros.
_WINDOW_BITS = re.compile(r"8|9|1[0-5]")


class PyDeflater:
    """A raw deflate stream: ``zlib.compressobj``'s calls and :meth:`reset`; the twin of
    ``_deflate.Deflater`` (the same zlib calls, the same bytes). Like it, a stream whose
    call ran out of memory (zlib may have taken input whose output is lost) is lost: it
    raises ``zlib.error`` until :meth:`reset`, never bytes a peer would decode wrongly."""

    __slots__ = ("_args", "_lost", "_z")

    def __init__(
        self, level: int, wbits: int, mem_level: int, strategy: int, no_context_takeover: bool
    ) -> None:
        self._args = (level, zlib.DEFLATED, -wbits, mem_level, strategy)
        self._z: zlib._Compress | None = None
        self._lost = False

    def _stream(self) -> zlib._Compress:
        if self._lost:
            raise zlib.error(_LOST)
        z = self._z
        if z is None:
            z = self._z = zlib.compressobj(*self._args)
        return z

    def compress(self, data: BytesLike) -> bytes:
        z = self._stream()
        try:
            return z.compress(data)
        except MemoryError:
            self._lost = True
            raise

    def flush(self, mode: int) -> bytes:
        z = self._stream()
        try:
            return z.flush(mode)
        except MemoryError:
            self._lost = True
            raise

    def reset(self) -> None:
        """Forget the context: the next message starts a fresh stream."""
        self._z = None
        self._lost = False


class PyInflater:
    """A raw inflate stream: ``zlib.decompressobj``'s calls and :meth:`reset`; the twin
    of ``_deflate.Inflater``."""

    __slots__ = ("_wbits", "_z")

    def __init__(self, wbits: int, no_context_takeover: bool) -> None:
        self._wbits = -wbits
        self._z: zlib._Decompress | None = None

    @property
    def eof(self) -> bool:
        return self._z is not None and self._z.eof

    @property
    def unused_data(self) -> bytes:
        return b"" if self._z is None else self._z.unused_data

    def decompress(self, data: BytesLike, max_length: int = 0) -> bytes:
        z = self._z
        if z is None:
            z = self._z = zlib.decompressobj(self._wbits)
        return z.decompress(data, max_length)

    def reset(self) -> None:
        """Forget the context and the end of the stream."""
        self._z = None


def _load_codecs() -> Any:
    if speedups_disabled():
        return None
    try:  # zlib called directly (_deflate.c), where zlib's headers were found at build
        from . import _deflate
    except ImportError:  # pragma: no cover - exercised when the extension is not built
        return None
    return _deflate


#: ``dwebsocket.protocol._deflate``, or None (not built, or turned off).
_codecs: Any = _load_codecs()

#: The stream types in use: ``_deflate``'s when it is built, else the twins above.
Deflater: Any = _codecs.Deflater if _codecs is not None else PyDeflater
Inflater: Any = _codecs.Inflater if _codecs is not None else PyInflater


def _parse_params(
    params: Sequence[tuple[str, str | None]], *, server: bool
) -> tuple[bool, bool, int | None, int | bool | None] | None:
    """Check one permessage-deflate parameter list (RFC 7692 7.1).

    Returns ``(server_no_context_takeover, client_no_context_takeover,
    server_max_window_bits, client_max_window_bits)``, where the last one is True for a
    valueless ``client_max_window_bits`` (only allowed in an offer, ``server=True``), or
    None if a parameter is unknown, repeated or has an invalid value.
    """
    seen = set()
    server_nct = client_nct = False
    server_bits: int | None = None
    client_bits: int | bool | None = None
    for name, value in params:
        if name in seen:
            return None
        seen.add(name)
        if name == "server_no_context_takeover":
            if value is not None:
                return None
            server_nct = True
        elif name == "client_no_context_takeover":
            if value is not None:
                return None
            client_nct = True
        elif name == "server_max_window_bits":
            if value is None or not _WINDOW_BITS.fullmatch(value):
                return None
            server_bits = int(value)
        elif name == "client_max_window_bits":
            if value is None:
                if not server:
                    return None
                client_bits = True
            elif not _WINDOW_BITS.fullmatch(value):
                return None
            else:
                client_bits = int(value)
        else:
            return None
    return server_nct, client_nct, server_bits, client_bits


class PerMessageDeflate:
    """The negotiated permessage-deflate codec of one connection (RFC 7692).

    "local" is this endpoint's compressor, "remote" the peer's (our decompressor).
    Not thread-safe: one codec per connection, used by one ``Connection``.
    """

    def __init__(
        self,
        *,
        local_no_context_takeover: bool = False,
        remote_no_context_takeover: bool = False,
        local_max_window_bits: int = 15,
        remote_max_window_bits: int = 15,
        level: int = DEFAULT_LEVEL,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> None:
        if not 8 <= local_max_window_bits <= 15 or not 8 <= remote_max_window_bits <= 15:
            raise ValueError("window bits must be between 8 and 15")
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.level = level
        self.mem_level = mem_level
        bits, strategy = local_max_window_bits, zlib.Z_DEFAULT_STRATEGY
        if bits == 8:
            # zlib refuses an 8-bit window for raw deflate (madler/zlib#171). Z_RLE only
            # emits distance-1 matches, valid under any window, so 9 bits honour 8.
            bits, strategy = 9, zlib.Z_RLE
        #: The compressor and the decompressor (stream types above); each holds zlib
        #: memory only while in use.
        self.encoder = Deflater(level, bits, mem_level, strategy, local_no_context_takeover)
        # A 9-bit window also reads 8-bit streams, and zlib-based peers asked for 8 bits
        # really use 9 (see above).
        self.decoder = Inflater(max(remote_max_window_bits, 9), remote_no_context_takeover)

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_max_window_bits={self.local_max_window_bits}, "
            f"remote_max_window_bits={self.remote_max_window_bits})"
        )

    # -- negotiation, server side ------------------------------------------------------

    @classmethod
    def negotiate(
        cls,
        offers: Sequence[ExtensionOffer],
        *,
        server_max_window_bits: int = DEFAULT_WINDOW_BITS,
        client_max_window_bits: int = DEFAULT_WINDOW_BITS,
        level: int = DEFAULT_LEVEL,
        mem_level: int = DEFAULT_MEM_LEVEL,
    ) -> tuple[PerMessageDeflate, str] | None:
        """Accept the first acceptable permessage-deflate offer among ``offers``.

        ``offers`` is ``HandshakeRequest.extensions``. Returns the codec and the
        ``Sec-WebSocket-Extensions`` response value, or None when no offer is acceptable
        (an offer with unknown, repeated or invalid parameters is declined, RFC 7692 5.)

        ``server_max_window_bits`` caps our compression window and
        ``client_max_window_bits`` the one we ask the client for, when its offer lets
        us (8-15; 15 means no cap). ``level`` and ``mem_level`` go to zlib. The defaults
        (4 KiB windows, memLevel 5) keep a connection's zlib state near 50 KiB instead
        of the 300 KiB of zlib's defaults, at little cost on typical messages.
        Raises ``ValueError`` for window bits outside 8-15.
        """
        if not 8 <= server_max_window_bits <= 15 or not 8 <= client_max_window_bits <= 15:
            raise ValueError("window bits must be between 8 and 15")
        for name, params in offers:
            if name.lower() != EXTENSION_NAME:
                continue
            parsed = _parse_params(params, server=True)
            if parsed is None:
                continue
            server_nct, client_nct, server_bits, client_bits = parsed
            response = [EXTENSION_NAME]
            # RFC 7692 7.1.1.1: a server accepting server_no_context_takeover says so.
            if server_nct:
                response.append("server_no_context_takeover")
            # 7.1.1.2: optional in the response; saying it lets us drop the decoder's
            # window between messages.
            if client_nct:
                response.append("client_no_context_takeover")
            # 7.1.2.1: the response may only carry server_max_window_bits if the offer
            # did, with the same or a smaller value. Without it we still compress with
            # a smaller window: any decoder reads that.
            local_bits = min(server_bits or 15, server_max_window_bits)
            if server_bits is not None:
                response.append(f"server_max_window_bits={local_bits}")
            # 7.1.2.2: client_max_window_bits in the offer (with or without a value)
            # lets us cap the client's window, hence our decoder's memory.
            remote_bits = 15
            if client_bits is not None:
                offered = 15 if client_bits is True else int(client_bits)
                remote_bits = min(offered, client_max_window_bits)
                if client_bits is not True or remote_bits < 15:
                    response.append(f"client_max_window_bits={remote_bits}")
            codec = cls(
                local_no_context_takeover=server_nct,
                remote_no_context_takeover=client_nct,
                local_max_window_bits=local_bits,
                remote_max_window_bits=remote_bits,
                level=level,
                mem_level=mem_level,
            )
            return codec, "; ".join(response)
        return None

    # -- negotiation, client side ------------------------------------------------------

    @classmethod
    def client_offer(cls) -> str:
        """Return the ``Sec-WebSocket-Extensions`` value a client sends to offer deflate."""
        return f"{EXTENSION_NAME}; client_max_window_bits"

    @classmethod
    def from_response(cls, value: str) -> PerMessageDeflate:
        """Return the codec for the server's answer to :meth:`client_offer`.

        Raises ``InvalidHandshake`` if the answer is malformed or not something the
        offer allowed (another extension, unknown or repeated parameters).
        """
        extensions = parse_extensions(value)
        if len(extensions) != 1 or extensions[0][0].lower() != EXTENSION_NAME:
            raise InvalidHandshake(f"unexpected Sec-WebSocket-Extensions in response: {value!r}")
        parsed = _parse_params(extensions[0][1], server=False)
        if parsed is None:
            raise InvalidHandshake(f"invalid permessage-deflate response: {value!r}")
        server_nct, client_nct, server_bits, client_bits = parsed
        assert client_bits is not True  # _parse_params(server=False) refuses it
        return cls(
            local_no_context_takeover=client_nct,
            remote_no_context_takeover=server_nct,
            local_max_window_bits=client_bits or 15,
            remote_max_window_bits=server_bits or 15,
        )

    # -- codec -------------------------------------------------------------------------

    def compress(self, data: BytesLike) -> bytes:
        """Return one whole message compressed, trailing ``00 00 ff ff`` stripped (7.2.1)."""
        encoder = self.encoder
        out = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
        # RFC 7692 7.1.1: without context takeover every message starts a fresh window.
        if self.local_no_context_takeover:
            encoder.reset()
        return out[:-4]  # type: ignore[no-any-return]

    def decompress(self, data: BytesLike, max_size: int | None) -> bytes:
        """Return one whole compressed message decompressed (RFC 7692 7.2.2).

        Raises ``PayloadTooBig`` if the output would exceed ``max_size`` bytes (None: no
        limit); zlib never produces more than ``max_size + 1`` bytes. Raises
        ``ProtocolError`` (1002) for corrupt data.
        """
        return self.decompress_fragment(data, True, max_size)

    def decompress_fragment(self, data: BytesLike, fin: bool, max_size: int | None) -> bytes:
        """Decompress the next fragment of a message; ``fin`` for its last one.

        ``max_size`` bounds this fragment's output (pass what is left of the message
        limit). Raises like :meth:`decompress`.
        """
        decoder = self.decoder
        if fin:
            data = bytes(data) + _TAIL
        try:
            if max_size is None or max_size >= sys.maxsize:
                # No message reaches sys.maxsize, and zlib's bound (max_size + 1) is a C size.
                out = decoder.decompress(data)
            else:
                # A negative max_size refuses any output: still a bound for zlib (0 is none).
                out = decoder.decompress(data, max(max_size, 0) + 1)
                if len(out) > max_size:
                    raise PayloadTooBig(f"decompressed message exceeds {max_size} bytes")
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}") from None
        if decoder.eof:
            # The peer ended the deflate stream (BFINAL, RFC 7692 7.2.3.3): nothing but
            # our own appended tail may follow, and the next message starts afresh.
            if decoder.unused_data and not (fin and decoder.unused_data == _TAIL):
                raise ProtocolError("compressed data after the final deflate block")
            if fin:
                decoder.reset()
        elif fin and self.remote_no_context_takeover:
            decoder.reset()
        return out  # type: ignore[no-any-return]
