"""Fuzz targets: one function per parser, ``bytes -> None``, shared by the atheris driver
(``python -m tests.fuzz.run TARGET``), the corpus replay (``test_corpus.py``) and the
hypothesis properties (``test_properties.py``).

A target raises only when it finds a bug: an exception other than the library's own
protocol errors (``InvalidHandshake``, ``ProtocolError``), a broken invariant
(``AssertionError``), or memory held beyond what the limits allow. The first bytes of
an input choose the configuration (side, compression, limits, how the bytes are split),
so that one corpus file replays exactly.

Targets:

- ``handshake``: a raw HTTP request head, parsed as a WSGI server would, then
  ``parse_request``, the Origin check, permessage-deflate negotiation, and the 101 our
  server would send, which the client side must accept.
- ``response``: a raw HTTP response head through the client side (``parse_response``,
  ``PerMessageDeflate.from_response``).
- ``frames``: a byte stream through ``Connection.receive_data`` in chunks, server or
  client side, with or without permessage-deflate (window bits 8 to 15, context takeover
  on or off), under small limits; on the server side also through the default backend's
  C receive loop first (``_fastpath.scan``, compressed frames included), as its fast
  path reads: the same events, the same output.
- ``deflate``: compressed fragments through ``PerMessageDeflate.decompress_fragment``
  with output budgets; and a message compressed, as the Python path and as the fast
  path's C API do (``_deflate.compress_message``): the same bytes.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dwebsocket.backends.default.state import fastpath as _fastpath
from dwebsocket.exceptions import InvalidHandshake, ProtocolError
from dwebsocket.protocol import connection as core
from dwebsocket.protocol import deflate as deflate_module
from dwebsocket.protocol import frames
from dwebsocket.protocol.connection import Close, Connection, Event, Ping, Pong, State
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.handshake import (
    build_response,
    generate_key,
    parse_extensions,
    parse_request,
    parse_response,
    parse_token_list,
)

__all__ = ["TARGETS", "deflate", "frames_target", "handshake", "response"]

#: The message limits the ``frames`` target picks from (its first byte decides).
LIMITS = (0, 1, 125, 1024, 65536)
#: What the core may hold besides the payload bytes of one message: an incomplete frame
#: header (14 bytes) and Python object overheads (the parts list, the merged tail).
SLACK = 16 * 1024
#: The fast path's per-read bound on what it inflates (DefaultWebSocket's backlog), small
#: here so that inputs reach it.
BACKLOG = 4096


class Input:
    """Reads configuration out of the front of a fuzz input; the rest is the payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def rest(self) -> bytes:
        return self.data[self.pos :]


# -- handshake --------------------------------------------------------------------------


def _split_head(data: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    """``(method, path, version, headers)`` the way gevent/wsgiref read a request head:
    header names lower-cased, repeated headers joined with ", "; None if it has no
    request line of three words."""
    text = data.decode("latin-1")
    head = text.split("\r\n\r\n", 1)[0]
    request_line, *lines = head.split("\r\n")
    words = request_line.split()
    if len(words) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return words[0], words[1], words[2], headers


def _origin_check(origin: str | None) -> None:
    """The Django side of the Origin check, when Django is configured (the test run and
    the atheris driver both configure it)."""
    from django.conf import settings

    if not settings.configured:
        return
    from dwebsocket.handshake import origin_allowed

    assert isinstance(origin_allowed(origin), bool)


def handshake(data: bytes) -> None:
    parsed = _split_head(data)
    if parsed is None:
        return
    method, _path, version, headers = parsed
    for name in ("sec-websocket-protocol", "connection", "upgrade"):
        if name in headers:
            try:
                tokens = parse_token_list(headers[name], name)
            except InvalidHandshake:
                continue
            assert all(tokens)
    if "sec-websocket-extensions" in headers:
        with contextlib.suppress(InvalidHandshake):
            parse_extensions(headers["sec-websocket-extensions"])
    try:
        request = parse_request(method, version, headers)
    except InvalidHandshake as exc:
        assert exc.status in (400, 426) and exc.reason
        return
    _origin_check(request.origin)
    negotiated = PerMessageDeflate.negotiate(request.extensions)
    extensions = negotiated[1] if negotiated is not None else None
    subprotocol = request.subprotocols[0] if request.subprotocols else None
    answer = build_response(request, subprotocol=subprotocol, extensions=extensions)
    # What our server answers, its own client side must accept.
    result = parse_response(answer, request.key)
    assert result is not None and result[0] == 101 and result[2] == len(answer), answer
    if negotiated is not None:
        # The client's codec, from our answer, must fit ours: its decoder's window covers
        # our compressor's, our decoder's covers its compressor's, and context takeover
        # is off on both ends where it is off on one.
        server, value = negotiated
        client = PerMessageDeflate.from_response(value)
        assert client.remote_max_window_bits >= server.local_max_window_bits, value
        assert client.local_max_window_bits <= server.remote_max_window_bits, value
        assert client.local_no_context_takeover == server.remote_no_context_takeover, value
        assert client.remote_no_context_takeover == server.local_no_context_takeover, value


def response(data: bytes) -> None:
    key = generate_key()
    try:
        parsed = parse_response(data, key)
    except InvalidHandshake:
        return
    if parsed is None:
        assert b"\r\n\r\n" not in data
        return
    status, headers, consumed = parsed
    # Three digits, not necessarily a known class: "HTTP/1.1 011" parses as 11, which
    # is the caller's to judge (found by fuzzing: tests/fuzz/corpus/response/crash-011).
    assert 0 <= status <= 999 and 0 < consumed <= len(data)
    for name, value in headers:
        if name == "sec-websocket-extensions":
            with contextlib.suppress(InvalidHandshake):
                PerMessageDeflate.from_response(value)


# -- frames -----------------------------------------------------------------------------


def _held(conn: Connection) -> int:
    """Bytes the connection holds for the message and frame in progress (internals: the
    receive buffer, the parts of a fragmented message and their merged tail)."""
    return len(conn._buf) + sum(len(part) for part in conn._parts) + len(conn._tail)


def _to_core(conn: Connection, piece: bytes, got: list[Event], events: list[Event]) -> bytes:
    """Hand what the fast path left of a read to the core, as ``FastPath.wait()`` does: the
    fast path's events (``got``) and the core's join ``events``; returns the core's output."""
    if piece:
        got += conn.receive_data(piece)
    assert not (events and isinstance(events[-1], Close)) or not got, "events after Close"
    events += got
    return conn.data_to_send()


def _feed_frames(
    client: bool,
    deflate: PerMessageDeflate | None,
    limit: int,
    chunk: int,
    stream: bytes,
    eof: bool,
    pure_python: bool,
    fast: bool = False,
) -> tuple[Connection, list[Event], bytes]:
    """Feed ``stream`` to a new core ``chunk`` bytes at a time: (core, events, output).
    ``fast``: each chunk goes through the C fast path's receive loop first, the rest to
    the core, as ``FastPath.wait()`` hands a read over (``_fastpath.c``)."""
    conn = Connection(client=client, deflate=deflate, max_message_size=limit)
    saved = frames.apply_mask, core.unmask, core._scan  # type: ignore[attr-defined]
    if pure_python:
        frames.apply_mask, core.unmask = frames._py_apply_mask, frames._py_unmask  # type: ignore[attr-defined]
        core._scan = None  # type: ignore[attr-defined]
    try:
        events: list[Event] = []
        out = b""
        for start in range(0, len(stream), chunk):
            piece = stream[start : start + chunk]
            got = []
            rx = conn.rx
            if fast and rx.open and rx.scan_limit >= 0:
                codec = conn.deflate.decoder if conn.deflate is not None else None
                pos = _fastpath.scan(piece, rx.scan_limit, rx.max_message, codec, BACKLOG, got)
                assert 0 <= pos <= len(piece)
                piece = piece[pos:]
            out += _to_core(conn, piece, got, events)
            # Whatever the peer sends, the core holds at most one message's worth.
            assert _held(conn) <= 2 * limit + SLACK, (_held(conn), limit)
            _check_rx(conn)
        if eof:
            events += conn.receive_data(b"")
            out += conn.data_to_send()
    finally:
        frames.apply_mask, core.unmask, core._scan = saved  # type: ignore[attr-defined]
    return conn, events, out


def feed_reads_fast(
    stream: bytes, reads: list[int], limit: int
) -> tuple[Connection, list[Event], bytes]:
    """Feed ``stream`` to a server core as the backend's C fast path reads it: ``reads``
    are the sizes of successive reads (cycled); after each, the next read's worth of
    bytes has arrived too. A read that begins a large frame has the frame's rest read
    from the socket into its message (``_fastpath.read_large``: a pipe holds what has
    arrived); any other read goes through ``_fastpath.scan``; what neither takes goes to
    the core, as ``FastPath.wait()`` hands it over. (core, events, output)."""
    import os

    conn = Connection(max_message_size=limit)
    r, w = os.pipe()
    os.set_blocking(r, False)
    events: list[Event] = []
    out = b""
    pos = turn = 0
    try:
        while pos < len(stream):
            piece = stream[pos : pos + reads[turn % len(reads)]]
            pos += len(piece)
            turn += 1
            got: list[Event] = []
            rx = conn.rx
            if rx.open and rx.scan_limit >= 0:
                arrived = stream[pos : pos + min(reads[turn % len(reads)], 65536)]
                os.write(w, arrived)  # a pipe holds 64 KiB: all of it
                taken = _fastpath.read_large(piece, rx.scan_limit, r)
                left = b""
                while True:
                    try:
                        more = os.read(r, 65536)
                    except BlockingIOError:
                        break
                    left += more
                pos += len(arrived) - len(left)
                if taken is not None:
                    message, given_back = taken
                    if message is not None:
                        got.append(message)
                        piece = b""
                    else:
                        assert given_back is not None
                        piece = given_back
                else:
                    end = _fastpath.scan(piece, rx.scan_limit, rx.max_message, None, BACKLOG, got)
                    piece = piece[end:]
            out += _to_core(conn, piece, got, events)
            _check_rx(conn)
    finally:
        os.close(r)
        os.close(w)
    return conn, events, out


def large_reads(stream: bytes, reads: list[int], limit: int) -> None:
    """The C fast path's reads of large frames (``feed_reads_fast``) and the pure-Python
    core fed the same bytes agree: the same events, the same output."""
    conn, events, out = _feed_frames(False, None, limit, 4096, stream, False, True)
    fast, fast_events, fast_out = feed_reads_fast(stream, reads, limit)
    assert (events, conn.close_code) == (fast_events, fast.close_code), (events, fast_events)
    assert [type(e) for e in events] == [type(e) for e in fast_events]
    assert out == fast_out


def _check_rx(conn: Connection) -> None:
    """``Connection.rx``, which the backend's C fast path reads, says what the core is."""
    at_boundary = not conn._buf and not conn._frag and not conn._done
    assert conn.rx.open == (conn.state is State.OPEN), (conn.rx, conn.state)
    assert conn.rx.scan_limit == (conn._fast_max if at_boundary else -1), (conn.rx, conn._buf)
    assert conn.rx.max_message == conn._max_message


@contextlib.contextmanager
def _python_streams(python: bool) -> Iterator[None]:
    """Make PerMessageDeflate use the zlib module's streams (the twins) if ``python``."""
    if not python:
        yield
        return
    saved = deflate_module.Deflater, deflate_module.Inflater
    deflate_module.Deflater = deflate_module.PyDeflater
    deflate_module.Inflater = deflate_module.PyInflater
    try:
        yield
    finally:
        deflate_module.Deflater, deflate_module.Inflater = saved


def _frames_in(out: bytes, client: bool) -> list[Event]:
    """What the other side reads from ``out``, the core's output."""
    return Connection(client=not client, max_message_size=None).receive_data(out)


@dataclass(frozen=True)
class FramesConfig:
    """What the first three bytes of a ``frames`` input choose; ``stream`` is the rest."""

    client: bool
    compressed: bool
    pure_python: bool
    eof: bool
    limit: int
    chunk: int
    window: int  # 8 to 15 (zlib's 8 is 9: deflate.py); 0 without permessage-deflate
    no_context: bool  # no context takeover, both ways
    stream: bytes


def frames_config(data: bytes) -> FramesConfig:
    """``config byte, chunk byte, window byte, stream``, as the seeds and the properties
    write them."""
    source = Input(data)
    config = source.byte()
    chunk = source.byte() or 1
    window = source.byte()
    compressed = bool(config & 0x02)
    return FramesConfig(
        client=bool(config & 0x01),
        compressed=compressed,
        pure_python=bool(config & 0x04),
        eof=bool(config & 0x08),
        limit=LIMITS[(config >> 4) % len(LIMITS)],
        chunk=chunk,
        window=8 + window % 8 if compressed else 0,
        no_context=bool(window & 0x80),
        stream=source.rest(),
    )


def frames_target(data: bytes) -> None:
    c = frames_config(data)
    client, pure_python, eof, limit, chunk = c.client, c.pure_python, c.eof, c.limit, c.chunk
    stream, window, no_context = c.stream, c.window, c.no_context

    def feed(pure_python: bool, fast: bool = False) -> tuple[Connection, list[Event], bytes]:
        deflate = None
        if window:
            with _python_streams(pure_python):
                deflate = PerMessageDeflate(
                    remote_max_window_bits=window,
                    local_max_window_bits=window,
                    remote_no_context_takeover=no_context,
                    local_no_context_takeover=no_context,
                )
        return _feed_frames(client, deflate, limit, chunk, stream, eof, pure_python, fast)

    conn, events, out = feed(pure_python)
    if frames.scan_messages is not None:
        # The C fast path and the pure-Python loop agree on everything.
        # (A client masks what it sends with random keys: compare the frames, unmasked.)
        other, other_events, other_out = feed(not pure_python)
        assert (events, conn.close_code) == (other_events, other.close_code)
        assert _frames_in(out, client) == _frames_in(other_out, client)
    if _fastpath is not None and not client:
        # So does the backend's C receive loop, compressed frames included (zlib's
        # outcome kept for deflate.py's rules where the C code does not take a message).
        other, other_events, other_out = feed(False, fast=True)
        assert (events, conn.close_code) == (other_events, other.close_code), (
            events,
            other_events,
        )
        assert out == other_out

    closes = [e for e in events if isinstance(e, Close)]
    assert len(closes) <= 1 and (not closes or events[-1] is closes[0]), events
    for event in events:
        if isinstance(event, str):
            assert len(event.encode()) <= limit
        elif isinstance(event, bytes):
            assert len(event) <= limit
        else:
            assert isinstance(event, (Ping, Pong, Close)), event
    if conn.error is not None:
        assert closes and closes[0].code == conn.error.code
        assert frames.is_valid_close_code(conn.error.code)
    # What the core sends back (pongs, close frames) is valid framing for the other side.
    peer = Connection(client=not client, max_message_size=None)
    peer.receive_data(out)
    assert peer.error is None, (peer.error, out)
    if pure_python and stream:
        # The C and the pure-Python masking agree.
        key = (stream * 4)[:4]
        c_mask = frames._c_apply_mask
        if c_mask is not None:
            assert c_mask(stream, key) == frames._py_apply_mask(stream, key)


# -- deflate ----------------------------------------------------------------------------


def _inflate_all(codec: PerMessageDeflate, pieces: list[bytes], budget: int) -> list[object]:
    """Each fragment's output, or the error that ended the message (its text)."""
    outcome: list[object] = []
    total = 0
    try:
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            out = codec.decompress_fragment(piece, fin, budget - total)
            total += len(out)
            assert total <= budget
            outcome.append(out)
    except ProtocolError as exc:
        outcome.append((type(exc).__name__, exc.code, exc.reason))
    return outcome


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


#: 300 KiB of zeros, compressed: inflating it grows _deflate's output buffer (one per
#: process) past what it keeps (256 KiB), so that its next call starts a new one.
_BIG_OUTPUT = _raw_deflate(bytes(300_000))


def _fresh_output_buffer(codecs: Any) -> None:
    """Make _deflate's next call start from a new output buffer, as a process's first
    does: the bytes zlib writes may depend on where the room it is given ends."""
    codecs.Inflater(15).decompress(_BIG_OUTPUT)


def deflate(data: bytes) -> None:
    source = Input(data)
    config = source.byte()
    budget = LIMITS[config % len(LIMITS)]
    window = 9 + (config >> 3) % 7
    no_context = bool(config & 0x80)
    fragments = source.byte() % 8 + 1
    stream = source.rest()
    size = max(1, len(stream) // fragments)
    pieces = [stream[i : i + size] for i in range(0, len(stream), size)] or [b""]
    codecs = deflate_module._codecs
    parked = codecs is not None and bool(config & 0x40)
    limits = codecs.set_live_limit(1, 1) if parked else None  # every use parks another's
    try:
        results = []
        for python in (True, False) if codecs is not None else (True,):
            with _python_streams(python):
                codec = PerMessageDeflate(
                    remote_max_window_bits=window, remote_no_context_takeover=no_context
                )
                other = PerMessageDeflate(remote_max_window_bits=window)
                # Twice over (a second message in the same context), with another codec's
                # use in between (which parks this one's streams when `parked`).
                first = _inflate_all(codec, pieces, budget)
                _inflate_all(other, [b"\x02\x00"], 10)
                results.append((first, _inflate_all(codec, pieces, budget)))
                # What we compress, we (and zlib) decompress back; twice, so the second
                # message refers to the first (unless no context takeover).
                encoder = PerMessageDeflate(
                    local_max_window_bits=window, local_no_context_takeover=no_context
                )
                decoder = PerMessageDeflate(
                    remote_max_window_bits=window, remote_no_context_takeover=no_context
                )
                compressed = [encoder.compress(stream), encoder.compress(stream)]
                check = zlib.decompressobj(-15)
                for message in compressed:
                    if no_context:
                        check = zlib.decompressobj(-15)
                    assert check.decompress(message + b"\x00\x00\xff\xff") == stream
                    assert decoder.decompress(message, None) == stream
                # As the default backend's fast path sends (compress_message(), the C
                # API): a small message first, as in a process whose output buffer is
                # still the first one (4 KiB: its room decides where zlib's output ends).
                sender = PerMessageDeflate(
                    local_max_window_bits=window, local_no_context_takeover=no_context
                )
                if python:
                    sent = [sender.compress(b"x"), sender.compress(stream)]
                else:
                    _fresh_output_buffer(codecs)
                    sent = [codecs.compress_message(sender.encoder, m) for m in (b"x", stream)]
                results.append((compressed, sent))
        # The C streams and the zlib module's give the same bytes and the same outcomes.
        if len(results) == 4:
            assert results[0] == results[2], (results[0], results[2])
            assert results[1] == results[3]
    finally:
        if limits is not None:
            codecs.set_live_limit(*limits)


#: Target name -> function.
TARGETS: dict[str, Callable[[bytes], None]] = {
    "handshake": handshake,
    "response": response,
    "frames": frames_target,
    "deflate": deflate,
}
