"""Frame encoding, masking and close payloads (dwebsocket.protocol.frames)."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwebsocket.exceptions import ProtocolError
from dwebsocket.protocol import frames
from dwebsocket.protocol.frames import (
    CloseCode,
    Opcode,
    encode_close_payload,
    encode_frame,
    is_valid_close_code,
    parse_close_payload,
)
from tests.requirements import c_extension

from .support import KEY, xor

pytestmark = pytest.mark.usefixtures("masking")


def test_opcode_and_close_code_values() -> None:
    assert [int(op) for op in Opcode] == [0, 1, 2, 8, 9, 10]
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.NO_STATUS_RCVD == 1005
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.TLS_HANDSHAKE == 1015
    assert len(CloseCode) == 15


# -- masking --------------------------------------------------------------------------


def test_apply_mask_rfc_example() -> None:
    # RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
    assert frames.apply_mask(b"Hello", KEY) == bytes.fromhex("7f9f4d5158")


@pytest.mark.parametrize(
    "n", [0, 1, 3, 4, 5, 7, 8, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 8192, 8195, 65536, 65539]
)
def test_apply_mask_lengths(n: int) -> None:
    data = bytes(range(256)) * (n // 256 + 1)
    data = data[:n]
    key = b"\x01\x80\xfe\x55"
    masked = frames.apply_mask(data, key)
    assert type(masked) is bytes
    assert masked == xor(data, key)
    assert frames.apply_mask(masked, key) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_apply_mask_accepts_bytes_like(kind: type) -> None:
    assert frames.apply_mask(kind(b"Hello"), kind(KEY)) == bytes.fromhex("7f9f4d5158")


def _views() -> list[memoryview]:
    import array

    data = bytes(range(24))
    return [
        memoryview(data).cast("B", (4, 6)),  # 2-D, C-contiguous, 1-byte items
        memoryview(bytearray(data)).cast("c", (2, 3, 4)),
        memoryview(data)[::3],  # strided
        memoryview(array.array("i", range(5))),  # wider items
    ]


@pytest.mark.parametrize("view", _views(), ids=["2d", "3d", "strided", "ints"])
def test_apply_mask_reads_any_view_as_bytes_of_it(view: memoryview) -> None:
    """Both twins mask ``bytes(view)``, whatever the view's shape (the C one always did;
    the Python one took ``len()`` of a C-contiguous multi-dimensional byte view, its
    first dimension, as its byte count)."""
    expected = xor(view.tobytes(), KEY)
    assert frames._py_apply_mask(view, KEY) == expected
    if frames._c_apply_mask is not None:
        assert frames._c_apply_mask(view, KEY) == expected
    key = memoryview(KEY).cast("B", (2, 2))
    assert frames._py_apply_mask(view, key) == expected


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_apply_mask_rejects_bad_key(key: bytes) -> None:
    with pytest.raises(ValueError):
        frames.apply_mask(b"data", key)


@given(st.binary(max_size=9000), st.binary(min_size=4, max_size=4))
@settings(max_examples=60, deadline=None)
def test_apply_mask_matches_bytewise(data: bytes, key: bytes) -> None:
    assert frames.apply_mask(data, key) == xor(data, key)
    assert frames._py_apply_mask(data, key) == xor(data, key)


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.binary(max_size=10))
@settings(max_examples=60, deadline=None)
def test_unmask_in_buffer(payload: bytes, key: bytes, tail: bytes) -> None:
    buf = b"\x81\x85" + key + xor(payload, key) + tail
    for impl in (frames.unmask, frames._py_unmask):
        assert impl(buf, 6, 6 + len(payload)) == payload
        assert impl(bytearray(buf), 6, 6 + len(payload)) == payload


@pytest.mark.parametrize("start,end", [(3, 5), (6, 5), (6, 100)])
def test_unmask_bounds(start: int, end: int) -> None:
    for impl in (frames.unmask, frames._py_unmask):
        with pytest.raises(ValueError):
            impl(b"\x00" * 10, start, end)


def _masked(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, mask_key=KEY)


@pytest.mark.parametrize(
    "stopper",
    [
        b"",  # nothing more
        _masked(1, b"x" * 200)[:-1],  # incomplete
        encode_frame(1, b"unmasked"),  # not masked as a client's frame must be
        _masked(1, b"\xed\xa0\x80"),  # invalid UTF-8 (a surrogate)
        _masked(0x9, b"ping"),  # a control frame
        _masked(1, b"fragment")[:0] + bytes([0x01]) + _masked(1, b"fragment")[1:],  # not final
        bytes([0xC1]) + _masked(1, b"compressed")[1:],  # RSV1
        _masked(2, b"y" * 300),  # over max_length
        b"\x82\xff\x80" + b"\x00" * 7 + KEY,  # a 64-bit length with the high bit set
    ],
)
def test_scan_messages_takes_simple_frames_and_stops_at_anything_else(stopper: bytes) -> None:
    c_extension(frames.scan_messages, "_speedups")
    text = "é" * 100  # 200 bytes: unmasked into a heap buffer, not the stack one
    head = b"junk" + _masked(1, b"hi") + _masked(2, b"\x00\x01") + _masked(1, text.encode())
    out: list[str | bytes] = []
    assert frames.scan_messages(head + stopper, 4, True, 256, out) == len(head)
    assert out == ["hi", b"\x00\x01", text]
    # A server's frames (unmasked), one of them with a 16-bit length.
    out = []
    data = encode_frame(2, b"z" * 1000) + encode_frame(1, b"ok")
    assert frames.scan_messages(data, 0, False, 1 << 20, out) == len(data)
    assert out == [b"z" * 1000, "ok"]


# -- encoding: RFC 6455 5.7 examples, byte for byte ----------------------------------


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"opcode": 1, "payload": b"Hello"}, "810548656c6c6f"),
        ({"opcode": 1, "payload": b"Hello", "mask_key": KEY}, "818537fa213d7f9f4d5158"),
        ({"opcode": 1, "payload": b"Hel", "fin": False}, "010348656c"),
        ({"opcode": 0, "payload": b"lo"}, "80026c6f"),
        ({"opcode": 9, "payload": b"Hello"}, "890548656c6c6f"),
        ({"opcode": 10, "payload": b"Hello", "mask_key": KEY}, "8a8537fa213d7f9f4d5158"),
        ({"opcode": 2, "payload": b""}, "8200"),
        ({"opcode": 1, "payload": b"\x00", "rsv1": True}, "c10100"),
        ({"opcode": 8, "payload": b"\x03\xe8"}, "880203e8"),
    ],
)
def test_encode_frame_exact_bytes(kwargs: dict[str, object], expected: str) -> None:
    assert encode_frame(**kwargs).hex() == expected  # type: ignore[arg-type]


def test_encode_frame_length_encodings() -> None:
    assert encode_frame(2, b"\x00" * 125)[:2] == b"\x82\x7d"
    assert encode_frame(2, b"\x00" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(2, b"\x00" * 256)[:4] == bytes.fromhex("827e0100")
    assert encode_frame(2, b"\x00" * 65535)[:4] == bytes.fromhex("827effff")
    big = encode_frame(2, b"\x00" * 65536)
    assert big[:10] == bytes.fromhex("827f0000000000010000")
    assert len(big) == 10 + 65536
    masked = encode_frame(2, b"\x01" * 65536, mask_key=KEY)
    assert masked[:14] == bytes.fromhex("82ff0000000000010000") + KEY
    assert masked[14:] == xor(b"\x01" * 65536, KEY)


def test_encode_frame_accepts_bytes_like() -> None:
    assert encode_frame(2, memoryview(b"ab")) == b"\x82\x02ab"
    assert encode_frame(2, bytearray(b"ab"), mask_key=KEY) == b"\x82\x82" + KEY + xor(b"ab", KEY)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"opcode": 3, "payload": b""},
        {"opcode": 11, "payload": b""},
        {"opcode": 9, "payload": b"x" * 126},
        {"opcode": 8, "payload": b"", "fin": False},
        {"opcode": 1, "payload": b"", "mask_key": b"abc"},
    ],
)
def test_encode_frame_rejects_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_frame(**kwargs)  # type: ignore[arg-type]


# -- close payloads (RFC 6455 5.5.1, 7.4) ---------------------------------------------

VALID_CODES = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_close_code_ranges_exhaustively() -> None:
    valid = {c for c in range(65536) if is_valid_close_code(c)}
    expected = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
    assert valid == expected


@pytest.mark.parametrize("code", VALID_CODES)
def test_close_payload_round_trip(code: int) -> None:
    payload = encode_close_payload(code, "bye ✓")
    assert payload == code.to_bytes(2, "big") + "bye ✓".encode()
    assert parse_close_payload(payload) == (code, "bye ✓")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_close_payload_invalid_codes(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close_payload(code)
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(code.to_bytes(2, "big"))
    assert info.value.code == 1002


def test_close_payload_edge_cases() -> None:
    assert parse_close_payload(b"") == (1005, "")
    assert parse_close_payload(b"\x03\xe8") == (1000, "")
    assert encode_close_payload(1000) == b"\x03\xe8"
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03")
    assert info.value.code == 1002
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8\xff\xfe")
    assert info.value.code == 1007
    assert len(encode_close_payload(1000, "x" * 123)) == 125
    with pytest.raises(ValueError):
        encode_close_payload(1000, "x" * 124)


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, None), (1000, b"bye"), ("1000", ""), (1000.0, ""), (True, "")]
)
def test_close_payload_of_the_wrong_types(code: object, reason: object) -> None:
    # close(1000, None) raised AttributeError ('NoneType' object has no attribute 'encode'),
    # close("1000") a TypeError about '<=', close(1000.0) a struct.error.
    with pytest.raises(TypeError, match=r"close (codes are int|reasons are str)"):
        encode_close_payload(code, reason)  # type: ignore[arg-type]


def test_py_apply_mask_keeps_nothing_per_key() -> None:
    """A client masks every frame with a new key: masking long payloads with 4,000 keys
    leaves nothing behind (a cache of keys once kept 4 KiB for each, up to 17 MiB)."""
    data = bytes(8192)
    frames._py_apply_mask(data, b"warm")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4000):
            key = i.to_bytes(4, "big")
            assert frames._py_apply_mask(data, key)[4096:4100] == key
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 64 * 1024, kept


# -- the C accelerator and its Python twins agree, byte for byte --

needs_c = pytest.mark.skipif(frames._c_apply_mask is None, reason="_speedups is not built")

_LENGTHS = [0, 1, 2, 125, 126, 127, 255, 256, 65535, 65536, 65537, 2**32, 2**63 - 1]


@needs_c
@pytest.mark.parametrize("length", _LENGTHS)
@pytest.mark.parametrize("b0", [0x01, 0x81, 0x82, 0xC1, 0x88, 0x00, 0xFF])
@pytest.mark.parametrize("masked", [False, True])
def test_frame_header_c_and_python(length: int, b0: int, masked: bool) -> None:
    assert frames._c_frame_header is not None
    c = frames._c_frame_header(b0, length, masked)
    assert c == frames._py_frame_header(b0, length, masked)
    assert frames.frame_header is frames._c_frame_header


@pytest.mark.parametrize("header", [frames._py_frame_header, frames._c_frame_header])
def test_frame_header_refuses_what_cannot_be_encoded(header: object) -> None:
    c_extension(header, "_speedups")
    for b0, length in [(-1, 0), (256, 0), (0x81, -1)]:
        with pytest.raises(ValueError):
            header(b0, length, False)  # type: ignore[operator]


def _buffers() -> list[object]:
    import array

    data = bytes(range(256)) * 40 + b"tail"
    return [
        b"",
        b"x",
        data,
        bytearray(data),
        memoryview(data),
        memoryview(data)[3:],  # contiguous, offset
        memoryview(data)[::2],  # not contiguous
        memoryview(data)[::-3],
        memoryview(bytearray(data)).cast("B", (len(data) // 4, 4))[::2],  # 2-D, strided
        array.array("H", range(3000)),  # items of 2 bytes: bytes(data) is what counts
        memoryview(array.array("i", range(10))),
    ]


@needs_c
@pytest.mark.parametrize("data", _buffers(), ids=lambda d: f"{type(d).__name__}-{len(bytes(d))}")  # type: ignore[call-overload]
@pytest.mark.parametrize("key", [b"\x01\x02\x03\x04", bytearray(b"abcd"), memoryview(b"wxyz")])
def test_apply_mask_c_and_python_agree_on_any_buffer(data: object, key: object) -> None:
    assert frames._c_apply_mask is not None
    expected = bytes(b ^ bytes(key)[i % 4] for i, b in enumerate(bytes(data)))  # type: ignore[call-overload]
    assert frames._c_apply_mask(data, key) == expected  # type: ignore[arg-type]
    assert frames._py_apply_mask(data, key) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
    ],
)
def test_dwebsocket_no_speedups_is_read_as_a_boolean(
    value: str | None, disabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwebsocket.protocol.accelerator import speedups_disabled

    if value is None:
        monkeypatch.delenv("DWEBSOCKET_NO_SPEEDUPS", raising=False)
    else:
        monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", value)
    assert speedups_disabled() is disabled


def test_no_speedups_loads_no_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    from dwebsocket.protocol import accelerator

    monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", "1")
    assert accelerator._load() is None
    monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", "0")
    assert accelerator._load() is accelerator.speedups
