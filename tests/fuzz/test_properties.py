"""Property-based fuzzing with hypothesis: structured inputs (frames that are almost
right, header values built from the grammar's own pieces) through the targets of
``tests.fuzz.targets``, and round trips that must be exact.

The example budget is ``DWEBSOCKET_FUZZ_EXAMPLES`` (200 in the ordinary test run;
``make fuzz`` runs 10,000: about 4 minutes). Only this module's tests use it: no
global profile.
"""

from __future__ import annotations

import os
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import apply_mask, encode_frame, frame_header
from dwebsocket.protocol.handshake import generate_key
from tests.fuzz import targets

EXAMPLES = int(os.environ.get("DWEBSOCKET_FUZZ_EXAMPLES", "200"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MASK = b"\x01\x02\x03\x04"

# -- frames -----------------------------------------------------------------------------


@st.composite
def raw_frame(draw: st.DrawFn) -> bytes:
    """One frame, usually well-formed, sometimes not in one way or another."""
    opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15))
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 4]) | st.integers(0, 7))
    masked = draw(st.booleans().map(lambda b: b or draw(st.integers(0, 9)) > 0))
    if opcode == 1:
        payload = draw(st.text(max_size=40)).encode() + draw(st.binary(max_size=2))
    elif opcode == 8:
        code = draw(st.sampled_from([1000, 1001, 1005, 1006, 3000, 4999, 999, 5000]))
        payload = draw(st.sampled_from([b"", struct.pack("!H", code)])) + draw(
            st.binary(max_size=4)
        )
    else:
        payload = draw(st.binary(max_size=300))
    length = len(payload)
    lie = draw(st.sampled_from([None, None, None, 0, 126, 65535, 65536, 2**63, 2**64 - 1]))
    if lie is not None:
        length = lie
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    form = draw(st.sampled_from(["shortest", "shortest", "16", "64"]))
    if form == "shortest" and length < 126:
        head += bytes([bit | length])
    elif form != "64" and length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", min(length, 2**64 - 1))
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        head += key
    return head + payload


@fuzz
@given(
    config=st.integers(0, 255),
    chunk=st.integers(1, 255),
    window=st.integers(0, 255),
    stream=st.lists(raw_frame(), max_size=12).map(b"".join),
)
def test_frame_streams(config: int, chunk: int, window: int, stream: bytes) -> None:
    targets.frames_target(bytes([config, chunk, window]) + stream)


@fuzz
@given(
    config=st.integers(0, 255),
    chunk=st.integers(1, 255),
    stream=st.binary(max_size=2000),
)
def test_random_bytes_as_frames(config: int, chunk: int, stream: bytes) -> None:
    targets.frames_target(bytes([config, chunk]) + stream)


@st.composite
def compressed_stream(draw: st.DrawFn) -> tuple[int, bytes]:
    """``(window byte, stream)``: messages a client compressed as negotiated by the window
    byte (``targets.frames_config``: 8 to 15 bits, context takeover or not), in fragments
    cut anywhere (a character's UTF-8 too), with control frames between them; now and
    then one not compressed, one ending the deflate stream, one with the tail left on, or
    one with a byte flipped."""
    window_byte = draw(st.integers(0, 255))
    bits, no_context = 8 + window_byte % 8, bool(window_byte & 0x80)
    encoder = PerMessageDeflate(local_max_window_bits=bits, local_no_context_takeover=no_context)
    stream = b""
    for item in draw(st.lists(message, min_size=1, max_size=5)):
        text = isinstance(item, str)
        data = item.encode() if text else item
        how = draw(st.sampled_from(["compressed"] * 6 + ["plain", "final", "tail", "flipped"]))
        payload = data if how == "plain" else encoder.compress(data)
        if how == "final":  # the peer ends the deflate stream (RFC 7692 7.2.3.3)
            z = zlib.compressobj(6, zlib.DEFLATED, -max(bits, 9))
            payload = z.compress(data) + z.flush()
        elif how == "tail":
            payload += b"\x00\x00\xff\xff"
        elif how == "flipped" and payload:
            at = draw(st.integers(0, len(payload) - 1))
            payload = payload[:at] + bytes([payload[at] ^ 0x10]) + payload[at + 1 :]
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            if i and draw(st.integers(0, 3)) == 0:
                stream += encode_frame(9, b"between", mask_key=MASK)
            stream += encode_frame(
                (1 if text else 2) if i == 0 else 0,
                piece,
                fin=i == len(pieces) - 1,
                rsv1=how != "plain" and i == 0,
                mask_key=MASK,
            )
    return window_byte, stream


@fuzz
@given(
    limit=st.integers(0, len(targets.LIMITS) - 1),
    chunk=st.integers(1, 255),
    pure_python=st.booleans(),
    compressed=compressed_stream(),
)
def test_compressed_streams(
    limit: int, chunk: int, pure_python: bool, compressed: tuple[int, bytes]
) -> None:
    """Valid compressed messages, and some that are not quite, through the server side's
    twins (the C loops, the fast path's included, and the pure-Python one) however they
    are split: the same messages, close and output."""
    window_byte, stream = compressed
    config = 0x02 | (0x04 if pure_python else 0) | (limit << 4)
    targets.frames_target(bytes([config, chunk, window_byte]) + stream)


@fuzz
@given(
    limit=st.integers(1, len(targets.LIMITS) - 1),
    sizes=st.lists(st.integers(-2, 2), min_size=1, max_size=3),
    text=st.booleans(),
    fragmented=st.booleans(),
    chunk=st.sampled_from([1, 3, 64, 255]),
    pure_python=st.booleans(),
    window_byte=st.integers(0, 255),
)
def test_compressed_messages_at_the_limit(
    limit: int,
    sizes: list[int],
    text: bool,
    fragmented: bool,
    chunk: int,
    pure_python: bool,
    window_byte: int,
) -> None:
    """Compressed messages whose decompressed size lands just under, on or just over
    the message limit (where the C inflaters' budget of limit + 1 decides), whole or in
    two fragments with a ping between: the C loops and the pure-Python one agree."""
    bits, no_context = 8 + window_byte % 8, bool(window_byte & 0x80)
    encoder = PerMessageDeflate(local_max_window_bits=bits, local_no_context_takeover=no_context)
    stream = b""
    for delta in sizes:
        n = max(targets.LIMITS[limit] + delta, 0)
        data = b"a" * n if not text else ("é" * n).encode()[: n - n % 2] + b"a" * (n % 2)
        payload = encoder.compress(data)
        half = len(payload) // 2 if fragmented else len(payload)
        opcode = 1 if text else 2
        stream += encode_frame(opcode, payload[:half], fin=not fragmented, rsv1=True, mask_key=MASK)
        if fragmented:
            stream += encode_frame(9, b"", mask_key=MASK)
            stream += encode_frame(0, payload[half:], mask_key=MASK)
    config = 0x02 | (0x04 if pure_python else 0) | (limit << 4)
    targets.frames_target(bytes([config, chunk, window_byte]) + stream)


@st.composite
def large_frame(draw: st.DrawFn) -> bytes:
    """A frame of 3 KiB to 140 KiB, usually one the fast path reads into its message
    (final text or binary, masked), sometimes not: invalid UTF-8, unmasked, RSV bits, not
    final, another opcode, past the limit; now and then with its length in 64 bits."""
    n = draw(st.sampled_from([65536, 65537, 80_000, 100_000, 131_000]) | st.integers(3000, 140_000))
    kind = draw(
        st.sampled_from(["binary", "binary", "text", "text", "utf8", "bad-utf8"])
        | st.sampled_from(["unmasked", "rsv", "not-final", "ping-opcode", "continuation"])
    )
    seed = draw(st.binary(min_size=1, max_size=64))
    if kind == "utf8":
        payload = ("é€😀" * (n // 9 + 1)).encode()[:n]
        payload = payload.decode(errors="ignore").encode()  # whole characters only
    elif kind == "bad-utf8":
        payload = bytearray((b"a" * n)[:n])
        payload[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0x80, 0xC0, 0xFF, 0xED]))
        payload = bytes(payload)
    elif kind == "text":
        payload = (seed.hex().encode() * (n // (2 * len(seed)) + 1))[:n]
    else:
        payload = (seed * (n // len(seed) + 1))[:n]
    opcode = {"text": 1, "utf8": 1, "bad-utf8": 1, "ping-opcode": 9, "continuation": 0}.get(kind, 2)
    b0 = (0 if kind == "not-final" else 0x80) | (0x40 if kind == "rsv" else 0) | opcode
    if kind == "unmasked":
        return frame_header(b0, len(payload), False) + payload
    key = draw(st.binary(min_size=4, max_size=4))
    header = frame_header(b0, len(payload), True)
    if draw(st.integers(0, 3)) == 0:  # a longer length encoding than needed (still valid)
        header = bytes([b0, 0xFF]) + struct.pack("!Q", len(payload))
    return header + key + apply_mask(payload, key)


@fuzz
@given(
    frames=st.lists(large_frame() | raw_frame(), min_size=1, max_size=3),
    reads=st.lists(
        st.sampled_from([65536, 65536, 40000, 30000]) | st.integers(1, 65536),
        min_size=1,
        max_size=6,
    ),
    limit=st.sampled_from([4096, 65536, 100_000, 1 << 20]),
)
def test_large_frames_read_into_their_message(
    frames: list[bytes], reads: list[int], limit: int
) -> None:
    """The C fast path reads the rest of a large frame straight into its message: the
    same messages, close and output as the pure-Python core, however the bytes arrive."""
    targets.large_reads(b"".join(frames), reads, limit)


# -- exact round trips ------------------------------------------------------------------

message = st.text(max_size=300) | st.binary(max_size=3000)


@fuzz
@given(
    messages=st.lists(message, max_size=8),
    compressed=st.booleans(),
    no_context=st.booleans(),
    bits=st.integers(9, 15),
    fragment=st.integers(1, 500),
    chunk=st.integers(1, 4096),
)
def test_what_a_client_sends_arrives_exactly(
    messages: list[str | bytes],
    compressed: bool,
    no_context: bool,
    bits: int,
    fragment: int,
    chunk: int,
) -> None:
    """Any messages, fragmented anyhow, compressed or not, fed in any chunk size: the
    server side gets exactly them, in order, and no error."""
    encoder = PerMessageDeflate(local_no_context_takeover=no_context, local_max_window_bits=bits)
    decoder = PerMessageDeflate(remote_no_context_takeover=no_context, remote_max_window_bits=bits)
    server = Connection(deflate=decoder if compressed else None, max_message_size=1 << 20)
    wire = b""
    for item in messages:
        data = item.encode() if isinstance(item, str) else item
        if compressed:
            data = encoder.compress(data)
        pieces = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
        for i, piece in enumerate(pieces):
            opcode = (1 if isinstance(item, str) else 2) if i == 0 else 0
            wire += encode_frame(
                opcode, piece, fin=i == len(pieces) - 1, rsv1=compressed and i == 0, mask_key=MASK
            )
    received = []
    for start in range(0, len(wire), chunk):
        received += server.receive_data(wire[start : start + chunk])
    assert server.error is None, server.error
    assert received == messages
    assert all(type(a) is type(b) for a, b in zip(received, messages, strict=True))


@fuzz
@given(messages=st.lists(message, min_size=1, max_size=6), compressed=st.booleans())
def test_what_the_server_sends_a_client_reads(
    messages: list[str | bytes], compressed: bool
) -> None:
    server = Connection(deflate=PerMessageDeflate() if compressed else None)
    client = Connection(
        client=True, deflate=PerMessageDeflate() if compressed else None, max_message_size=None
    )
    wire = b"".join(server.send_message(m) for m in messages) + server.send_close(1000, "bye")
    events = client.receive_data(wire)
    assert events == [*messages, Close(1000, "bye")] and client.error is None


# -- handshake --------------------------------------------------------------------------

# The pieces RFC 7230 header values are made of, and the ones that break them.
piece = st.sampled_from(
    [
        "permessage-deflate",
        "client_max_window_bits",
        "server_max_window_bits",
        "server_no_context_takeover",
        "client_no_context_takeover",
        "x-webkit-deflate-frame",
        "chat",
        "websocket",
        "Upgrade",
        "keep-alive",
        "13",
        "8",
        "10",
        "15",
        "16",
        "08",
        ";",
        ",",
        "=",
        " ",
        "\t",
        '"',
        "\\",
        '"10"',
        '"a b"',
        "",
        "\x00",
        "é",
        "\x7f",
    ]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", max_size=6)
value = st.lists(piece, max_size=12).map("".join)


@fuzz
@given(
    method=st.sampled_from(["GET", "GET", "POST", "get", "HEAD"]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.10"]),
    key=st.sampled_from([generate_key(), "", "short", "dGhlIHNhbXBsZSBub25jZQ"]),
    upgrade=value | st.just("websocket"),
    connection=value | st.just("Upgrade"),
    version_header=st.sampled_from(["13", " 13 ", "8", "13, 8", ""]),
    extensions=st.none() | value,
    protocols=st.none() | value,
    origin=st.none()
    | st.sampled_from(
        [
            "https://127.0.0.1",
            "http://evil.example",
            "null",
            "http://[::1",
            "https://localhost:99999",
        ]
    ),
    content_length=st.none() | st.sampled_from(["0", "1", "-1", "x"]),
)
def test_handshakes(
    method: str,
    version: str,
    key: str,
    upgrade: str,
    connection: str,
    version_header: str,
    extensions: str | None,
    protocols: str | None,
    origin: str | None,
    content_length: str | None,
) -> None:
    headers = [
        ("Host", "127.0.0.1"),
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", version_header),
    ]
    optional = [
        ("Sec-WebSocket-Extensions", extensions),
        ("Sec-WebSocket-Protocol", protocols),
        ("Origin", origin),
        ("Content-Length", content_length),
    ]
    headers += [(name, v) for name, v in optional if v is not None]
    head = f"{method} /ws/ {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    targets.handshake(head.encode("utf-8"))


@fuzz
@given(st.binary(max_size=600))
def test_random_bytes_as_handshake(data: bytes) -> None:
    targets.handshake(b"GET / HTTP/1.1\r\n" + data)


@fuzz
@given(
    status=st.sampled_from(["101 Switching Protocols", "403 Forbidden", "1O1", "101"]),
    extensions=value,
    data=st.binary(max_size=200),
)
def test_responses(status: str, extensions: str, data: bytes) -> None:
    head = f"HTTP/1.1 {status}\r\nSec-WebSocket-Extensions: {extensions}\r\n".encode()
    targets.response(head + data + b"\r\n\r\n")


# -- deflate ----------------------------------------------------------------------------


@fuzz
@given(config=st.integers(0, 255), fragments=st.integers(0, 255), data=st.binary(max_size=3000))
def test_deflate_streams(config: int, fragments: int, data: bytes) -> None:
    targets.deflate(bytes([config, fragments]) + data)
