"""The connection state machine (protocol.connection): bytes in, events and bytes out."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwebsocket.exceptions import InvalidState, PayloadTooBig, ProtocolError
from dwebsocket.protocol.connection import (
    Close,
    Connection,
    Event,
    Ping,
    Pong,
    State,
    _truncate_reason,
    plain_frames,
)
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import encode_frame

from .support import LosingEncoder, bytewise, close_frame, feed, frame, split, xor

pytestmark = pytest.mark.usefixtures("masking")

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def server(**kwargs: object) -> Connection:
    return Connection(**kwargs)  # type: ignore[arg-type]


def deflate_pair(offer: str = "permessage-deflate") -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """(client codec, server codec) as negotiated for ``offer``."""
    from dwebsocket.protocol.handshake import parse_extensions

    result = PerMessageDeflate.negotiate(parse_extensions(offer))
    assert result is not None
    codec, response = result
    return PerMessageDeflate.from_response(response), codec


def parse_close(data: bytes) -> tuple[int, bytes]:
    """(code, reason) of the single unmasked close frame in ``data``."""
    assert data[0] == 0x88, data
    assert data[1] == len(data) - 2
    return int.from_bytes(data[2:4], "big"), data[4:]


# -- parsing known bytes --------------------------------------------------------------


def test_rfc_examples_received_by_server() -> None:
    conn = server()
    events, out = feed(
        conn,
        [
            bytes.fromhex("818537fa213d7f9f4d5158"),  # masked "Hello"
            frame(0x1, b"Hel", fin=False) + frame(0x0, b"lo"),
            frame(0x9, b"Hello"),
            frame(0x2, bytes(256)),
            frame(0x2, bytes(65536)),
        ],
    )
    assert events == ["Hello", "Hello", Ping(b"Hello"), bytes(256), bytes(65536)]
    assert out == bytes.fromhex("8a0548656c6c6f")  # the pong, unmasked
    assert conn.state is State.OPEN


def test_rfc_examples_received_by_client() -> None:
    conn = Connection(client=True)
    events = conn.receive_data(
        bytes.fromhex("810548656c6c6f")
        + bytes.fromhex("010348656c")
        + bytes.fromhex("80026c6f")
        + bytes.fromhex("8a0548656c6c6f")
        + b"\x82\x7e\x01\x00"
        + bytes(256)
    )
    assert events == ["Hello", "Hello", Pong(b"Hello"), bytes(256)]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("length_bytes", [0, 2, 8])
def test_non_minimal_lengths_are_accepted(length_bytes: int) -> None:
    assert server().receive_data(frame(0x1, b"Hello", length_bytes=length_bytes)) == ["Hello"]
    assert server().receive_data(frame(0x9, b"Hi", length_bytes=length_bytes)) == [Ping(b"Hi")]


def test_events_are_plain_types() -> None:
    events = server().receive_data(frame(0x1, "é".encode()) + frame(0x2, b"\x00"))
    assert [type(e) for e in events] == [str, bytes]


def test_bytes_like_input() -> None:
    data = frame(0x1, b"ab") + frame(0x2, b"cd")
    assert server().receive_data(bytearray(data)) == ["ab", b"cd"]
    assert server().receive_data(memoryview(data)) == ["ab", b"cd"]
    conn = server()
    assert conn.receive_data(memoryview(data)[:3]) == []
    assert conn.receive_data(bytearray(data[3:])) == ["ab", b"cd"]


def test_empty_messages() -> None:
    events = server().receive_data(
        frame(0x1, b"") + frame(0x2, b"") + frame(0x1, b"", fin=False) + frame(0x0, b"")
    )
    assert events == ["", b"", ""]


def test_control_frames_interleaved_in_fragmented_message() -> None:
    conn = server()
    events, out = feed(
        conn,
        [
            frame(0x1, b"fra", fin=False),
            frame(0x9, b"p1"),
            frame(0x0, b"gme", fin=False),
            frame(0xA, b"p2"),
            frame(0x9, b""),
            frame(0x0, b"nted"),
        ],
    )
    assert events == [Ping(b"p1"), Pong(b"p2"), Ping(b""), "fragmented"]
    assert out == b"\x8a\x02p1\x8a\x00"


def test_fragmented_binary_and_multibyte_utf8_across_fragments() -> None:
    text = "€uro ✓ 𝄞".encode()
    pieces = [
        frame(0x1 if i == 0 else 0x0, text[i : i + 1], fin=i == len(text) - 1)
        for i in range(len(text))
    ]
    assert server().receive_data(b"".join(pieces)) == ["€uro ✓ 𝄞"]
    data = os.urandom(1000)
    pieces = [
        frame(0x2, data[:10], fin=False),
        frame(0x0, data[10:500], fin=False),
        frame(0x0, data[500:]),
    ]
    assert server().receive_data(b"".join(pieces)) == [data]


# -- encoding -------------------------------------------------------------------------


def test_server_frames_exact_bytes() -> None:
    conn = server()
    assert conn.send_text("Hello") == bytes.fromhex("810548656c6c6f")
    assert conn.send_binary(b"\x00" * 125)[:2] == b"\x82\x7d"
    assert conn.send_binary(bytearray(126))[:4] == b"\x82\x7e\x00\x7e"
    assert conn.send_text("x" * 70000)[:10] == bytes.fromhex("817f0000000000011170")
    assert conn.send_message("é") == b"\x81\x02\xc3\xa9"
    assert conn.send_message(memoryview(b"ab")) == b"\x82\x02ab"
    assert conn.send_ping(b"Hello") == bytes.fromhex("890548656c6c6f")
    assert conn.send_pong() == b"\x8a\x00"
    assert conn.send_close(1001, "bye") == b"\x88\x05\x03\xe9bye"


def test_any_bytes_like_is_sent_as_its_bytes() -> None:
    # The frame carries bytes(data), its length counted in bytes: a memoryview of 4-byte
    # items once got a header of len() (3) before 12 bytes, which the peer read as frames.
    import array

    items = memoryview(array.array("i", [1, 2, 3]))
    strided = memoryview(b"abcdef")[::2]
    codec = deflate_pair()
    for data in (items, strided):
        for conn, peer in (
            (server(), Connection(client=True)),
            (Connection(client=True), server()),
            (server(deflate=codec[1]), Connection(client=True, deflate=codec[0])),
        ):
            assert peer.receive_data(conn.send_binary(data)) == [bytes(data)]
            assert peer.receive_data(conn.send_message(data)) == [bytes(data)]
        assert Connection(client=True).receive_data(plain_frames([data])) == [bytes(data)]
        assert encode_frame(2, data) == encode_frame(2, bytes(data))
    with pytest.raises(ValueError):  # 160 bytes: too long for a control frame
        server().send_ping(memoryview(array.array("i", range(40))))  # type: ignore[arg-type]


@given(
    st.lists(
        st.one_of(
            st.text(max_size=300),
            st.binary(max_size=300),
            st.sampled_from(["x" * 125, "x" * 126, b"y" * 65535, b"y" * 65536]),
        ),
        max_size=8,
    )
)
@settings(max_examples=200, deadline=None)
def test_plain_frames_are_what_a_plain_server_connection_sends(
    messages: list[str | bytes],
) -> None:
    """The frames a group encodes once for all its members (``plain_frames``), byte for
    byte what each member's own connection would have encoded, message by message."""
    conn = server()
    expected = b"".join(conn.send_message(m) for m in messages)
    assert plain_frames(messages) == expected
    assert conn.send_messages(messages) == expected
    assert conn.send_messages(messages, lambda: plain_frames(messages)) == expected


def test_send_messages_encodes_itself_where_frames_differ() -> None:
    """A client (masked) or permessage-deflate connection does not take the plain frames."""
    shared = lambda: b"not these"  # noqa: E731
    client = Connection(client=True)
    assert client.send_messages(["a", b"b"], shared)[:1] == b"\x81"
    deflating = Connection(deflate=PerMessageDeflate())
    assert deflating.send_messages(["a" * 50], shared)[:1] == b"\xc1"  # RSV1: compressed
    closed = server()
    closed.send_close()
    with pytest.raises(InvalidState):
        closed.send_messages(["a"], shared)


def test_client_frames_are_masked_with_fresh_keys() -> None:
    conn = Connection(client=True)
    frames = [conn.send_text("Hello") for _ in range(300)]  # spans the key batch refill
    keys = {f[2:6] for f in frames}
    assert len(keys) > 290
    for f in frames:
        assert f[:2] == b"\x81\x85"
        assert xor(f[6:], f[2:6]) == b"Hello"
    f = conn.send_binary(bytes(300))
    assert f[:4] == b"\x82\xfe\x01\x2c"
    assert xor(f[8:], f[4:8]) == bytes(300)
    f = conn.send_close(1000)
    assert f[:2] == b"\x88\x82" and xor(f[6:], f[2:6]) == b"\x03\xe8"


def test_control_frame_limits_on_send() -> None:
    conn = server()
    with pytest.raises(ValueError):
        conn.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        conn.send_close(1000, "x" * 124)
    with pytest.raises(ValueError):
        conn.send_close(1006)
    assert conn.state is State.OPEN


# -- splitting never changes the outcome -----------------------------------------------

STREAMS: list[tuple[str, bytes]] = [
    ("messages", frame(0x1, b"Hello") + frame(0x2, bytes(300)) + frame(0x2, bytes(70000))),
    ("fragments", frame(0x1, b"caf", fin=False) + frame(0x9, b"!") + frame(0x0, "é".encode())),
    ("close", frame(0x1, b"a") + frame(0x8, b"\x03\xe8bye") + frame(0x1, b"ignored")),
    ("bad utf-8", frame(0x1, b"ok", fin=False) + frame(0x0, b"\xff", fin=False) + frame(0x0, b"z")),
    ("bad opcode", frame(0x1, b"a") + frame(0x3, b"xyz")),
    ("too big", frame(0x2, b"a") + frame(0x2, bytes(2000))),
    ("eof mid-frame", frame(0x1, b"a") + frame(0x1, b"abcdef")[:5]),
]


@pytest.mark.parametrize("name,stream", STREAMS, ids=[s[0] for s in STREAMS])
def test_whole_and_bytewise_agree(name: str, stream: bytes) -> None:
    whole = server(max_message_size=1000)
    expected = feed(whole, [stream, b""])
    by_byte = server(max_message_size=1000)
    assert feed(by_byte, [*bytewise(stream), b""]) == expected
    assert (whole.state, whole.close_code, whole.error) == (
        by_byte.state,
        by_byte.close_code,
        by_byte.error,
    ) or str(whole.error) == str(by_byte.error)


@given(st.sampled_from(STREAMS), st.lists(st.integers(0, 80000), max_size=30))
@HYPOTHESIS
def test_random_chunks_agree(case: tuple[str, bytes], cuts: list[int]) -> None:
    _, stream = case
    expected = feed(server(max_message_size=1000), [stream, b""])
    assert feed(server(max_message_size=1000), [*split(stream, cuts), b""]) == expected


def message_specs() -> st.SearchStrategy[list[tuple[str, object]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("text"), st.text(max_size=300)),
            st.tuples(st.just("binary"), st.binary(max_size=300)),
            st.tuples(st.just("fragments"), st.lists(st.text(max_size=40), min_size=1, max_size=5)),
            st.tuples(st.just("ping"), st.binary(max_size=125)),
        ),
        max_size=12,
    )


def build_stream(specs: list[tuple[str, object]]) -> tuple[bytes, list[Event]]:
    """Frames for ``specs`` (written by the test helper) and the events they must give."""
    data, events = b"", []
    for kind, value in specs:
        if kind == "text":
            assert isinstance(value, str)
            data += frame(0x1, value.encode())
            events.append(value)
        elif kind == "binary":
            assert isinstance(value, bytes)
            data += frame(0x2, value)
            events.append(value)
        elif kind == "fragments":
            assert isinstance(value, list)
            for i, part in enumerate(value):
                data += frame(0x1 if i == 0 else 0x0, part.encode(), fin=i == len(value) - 1)
            events.append("".join(value))
        else:
            assert isinstance(value, bytes)
            data += frame(0x9, value)
            events.append(Ping(value))
    return data, events


@given(message_specs(), st.lists(st.integers(0, 5000), max_size=40), st.booleans())
@HYPOTHESIS
def test_generated_streams_in_random_chunks(
    specs: list[tuple[str, object]], cuts: list[int], bytewise_feed: bool
) -> None:
    stream, expected = build_stream(specs)
    pieces = bytewise(stream) if bytewise_feed else split(stream, cuts)
    events, out = feed(server(), pieces)
    assert events == expected
    pongs = b"".join(bytes([0x8A, len(e.data)]) + e.data for e in expected if isinstance(e, Ping))
    assert out == pongs


# -- protocol violations: the right close code, once ------------------------------------

Violation = tuple[str, bytes, int, dict[str, object]]
DEFLATE = {"deflate": PerMessageDeflate()}
VIOLATIONS: list[Violation] = [
    ("unmasked frame from client", frame(0x1, b"a", masked=False), 1002, {}),
    ("RSV2", frame(0x1, b"a", rsv=2), 1002, {}),
    ("RSV3", frame(0x1, b"a", rsv=1), 1002, {}),
    ("RSV1 without extension", frame(0x1, b"a", rsv=4), 1002, {}),
    ("RSV1+RSV2 with deflate", frame(0x1, b"a", rsv=6), 1002, DEFLATE),
    ("RSV1 on continuation", frame(0x1, b"a", fin=False) + frame(0x0, b"a", rsv=4), 1002, DEFLATE),
    ("RSV1 on ping", frame(0x9, b"", rsv=4), 1002, DEFLATE),
    *[(f"reserved opcode {op}", frame(op, b""), 1002, {}) for op in (3, 4, 5, 6, 7)],
    *[(f"reserved opcode {op}", frame(op, b""), 1002, {}) for op in (11, 12, 13, 14, 15)],
    ("ping of 126 bytes", frame(0x9, bytes(126)), 1002, {}),
    ("close of 126 bytes", frame(0x8, b"\x03\xe8" + bytes(124)), 1002, {}),
    ("fragmented ping", frame(0x9, b"", fin=False), 1002, {}),
    ("fragmented close", frame(0x8, b"", fin=False), 1002, {}),
    ("continuation without start", frame(0x0, b"a"), 1002, {}),
    ("text inside fragmented message", frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002, {}),
    ("binary inside fragmented message", frame(0x2, b"a", fin=False) + frame(0x2, b"b"), 1002, {}),
    ("64-bit length with MSB set", frame(0x2, b"", length=2**63, length_bytes=8), 1002, {}),
    (
        "invalid UTF-8",
        frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
        1007,
        {},
    ),
    ("invalid UTF-8 in fragment", frame(0x1, b"ok", fin=False) + frame(0x0, b"\xc0\xaf"), 1007, {}),
    ("truncated UTF-8 at the end", frame(0x1, b"a", fin=False) + frame(0x0, b"\xe2\x82"), 1007, {}),
    ("close payload of 1 byte", frame(0x8, b"\x03"), 1002, {}),
    ("close reason not UTF-8", frame(0x8, b"\x03\xe8\xff"), 1007, {}),
    ("frame over max_frame_size", frame(0x2, bytes(101)), 1009, {"max_frame_size": 100}),
    ("message over max_message_size", frame(0x1, bytes(101)), 1009, {"max_message_size": 100}),
    (
        "fragments over max_message_size",
        frame(0x2, bytes(60), fin=False) + frame(0x0, bytes(41)),
        1009,
        {"max_message_size": 100},
    ),
    ("corrupt compressed data", frame(0x1, b"\xff\xff\xff", rsv=4), 1002, DEFLATE),
    (
        "compressed invalid UTF-8",
        frame(0x1, PerMessageDeflate().compress(b"\xff"), rsv=4),
        1007,
        DEFLATE,
    ),
    (
        "decompressed over max_message_size",
        frame(0x2, PerMessageDeflate().compress(bytes(101)), rsv=4),
        1009,
        {**DEFLATE, "max_message_size": 100},
    ),
]


@pytest.mark.parametrize("name,stream,code,kwargs", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violation(name: str, stream: bytes, code: int, kwargs: dict[str, object]) -> None:
    if "deflate" in kwargs:
        kwargs = {**kwargs, "deflate": PerMessageDeflate()}
    for pieces in ([stream], bytewise(stream)):
        conn = server(**kwargs)
        events, out = feed(conn, [*pieces, frame(0x1, b"after")])
        assert len(events) == 1 and isinstance(events[0], Close), events
        assert events[0].code == code
        assert conn.error is not None and conn.error.code == code
        assert isinstance(conn.error, ProtocolError)
        assert (conn.close_code, conn.close_reason) == (code, conn.error.reason)
        sent_code, reason = parse_close(out)
        assert sent_code == code
        assert reason.decode() == conn.error.reason
        assert conn.state is State.CLOSED
        assert conn.close_sent and not conn.close_received
        assert conn.should_close_transport
        assert conn.receive_data(frame(0x1, b"more")) == []
        assert conn.receive_data(b"") == []
        assert conn.data_to_send() == b""
        with pytest.raises(InvalidState):
            conn.send_text("no")
        assert conn.send_close() == b""


def test_masked_frame_from_server_fails_the_client() -> None:
    conn = Connection(client=True)
    assert conn.receive_data(frame(0x1, b"a", masked=True)) == [
        Close(1002, "masked frame from server")
    ]
    out = conn.data_to_send()
    assert out[:2] == b"\x88\x9a"  # the client's close is masked
    assert xor(out[6:], out[2:6]) == b"\x03\xeamasked frame from server"
    assert conn.should_close_transport


def test_violation_after_messages_keeps_them() -> None:
    conn = server()
    events = conn.receive_data(frame(0x1, b"one") + frame(0x2, b"two") + frame(0x3, b""))
    assert events == ["one", b"two", Close(1002, "reserved opcode 3")]


# -- fail fast: decide on the header, before the payload arrives -----------------------


def test_oversized_frame_fails_on_its_header() -> None:
    conn = server(max_frame_size=1000)
    header = frame(0x2, bytes(2000))[:8]  # header + mask key, no payload
    assert conn.receive_data(header)[0] == Close(
        1009, "frame of 2000 bytes exceeds the limit of 1000"
    )


def test_huge_length_fails_on_its_header() -> None:
    conn = server()  # default max_message_size: 1 MiB
    [close] = conn.receive_data(frame(0x2, b"", length=2**40, length_bytes=8))
    assert isinstance(close, Close) and close.code == 1009


def test_fragments_fail_as_soon_as_the_sum_exceeds() -> None:
    conn = server(max_message_size=1000)
    assert conn.receive_data(frame(0x2, bytes(600), fin=False)) == []
    # The next fragment's header is enough to know.
    [close] = conn.receive_data(frame(0x0, bytes(401))[:8])
    assert isinstance(close, Close) and close.code == 1009


def test_invalid_utf8_fails_before_the_message_ends() -> None:
    conn = server()
    [close] = conn.receive_data(frame(0x1, b"valid \xf4\x90\x80\x80", fin=False))
    assert close == Close(1007, "invalid UTF-8 in text message")


@pytest.mark.parametrize("prefix", [b"\xed\xa0", b"\xf4\x90", b"\xc0", b"\xe0\x80"])
def test_invalid_utf8_prefix_fails_at_the_fragment_boundary(prefix: bytes) -> None:
    conn = server()
    [close] = conn.receive_data(frame(0x1, b"ok" + prefix, fin=False))
    assert close == Close(1007, "invalid UTF-8 in text message")


def test_valid_utf8_split_across_fragments_is_kept() -> None:
    conn = server()
    assert conn.receive_data(frame(0x1, b"\xed\x9f", fin=False)) == []  # U+D7FF, not a surrogate
    assert conn.receive_data(frame(0x0, b"\xbf")) == ["\ud7ff"]


def test_bad_header_fails_before_payload() -> None:
    conn = server()
    [close] = conn.receive_data(frame(0x5, bytes(1000))[:6])
    assert isinstance(close, Close) and close.code == 1002


def test_compressed_message_limit_applies_after_decompression() -> None:
    client_codec, server_codec = deflate_pair()
    conn = server(deflate=server_codec, max_message_size=2**20)
    client = Connection(client=True, deflate=client_codec, max_message_size=None)
    bomb = client.send_binary(bytes(8 * 2**20))  # 8 MiB of zeros, ~8 KiB on the wire
    assert len(bomb) < 20_000
    [close] = conn.receive_data(bomb)
    assert isinstance(close, Close) and close.code == 1009
    # Fragmented: the limit spans fragments after decompression.
    client_codec, server_codec = deflate_pair()
    conn = server(deflate=server_codec, max_message_size=1000)
    data = PerMessageDeflate().compress(bytes(1500))
    events = conn.receive_data(frame(0x2, data[:5], fin=False, rsv=4) + frame(0x0, data[5:]))
    assert isinstance(events[-1], Close) and events[-1].code == 1009


def test_compressed_wire_size_is_bounded() -> None:
    # Incompressible data: the compressed frame is itself over the limit's slack.
    conn = server(deflate=PerMessageDeflate(), max_message_size=1000)
    [close] = conn.receive_data(frame(0x2, bytes(10000), rsv=4)[:8])
    assert isinstance(close, Close) and close.code == 1009


def test_no_limits() -> None:
    conn = server(max_message_size=None, max_frame_size=None)
    big = Connection(client=True).send_binary(bytes(3 * 2**20))
    assert conn.receive_data(big) == [bytes(3 * 2**20)]


def test_limits_can_change() -> None:
    conn = server()
    conn.max_message_size = 10
    assert conn.max_message_size == 10 and conn.max_frame_size is None
    [close] = conn.receive_data(frame(0x1, bytes(11)))
    assert isinstance(close, Close) and close.code == 1009
    conn = server(max_message_size=None)
    conn.max_frame_size = 10
    assert conn.max_frame_size == 10
    assert conn.receive_data(frame(0x2, bytes(10))) == [bytes(10)]
    [close] = conn.receive_data(frame(0x2, bytes(11)))
    assert isinstance(close, Close) and close.code == 1009


@pytest.mark.parametrize("limit", [sys.maxsize, 2**63, 2**64, 10**30])
def test_a_limit_no_message_can_reach_is_no_limit(limit: int) -> None:
    """A limit past what a frame can declare (RFC 6455 5.2: 63 bits) never applies, as
    None: with the C accelerator ``Connection()`` raised ``OverflowError`` past
    ``sys.maxsize`` (``rx`` is a C struct), and either way a compressed message raised
    ``OverflowError`` out of ``receive_data()`` (zlib's output bound is a C size)."""
    client_codec, server_codec = deflate_pair()
    conn = server(deflate=server_codec, max_message_size=limit, max_frame_size=limit)
    assert conn.max_message_size == limit and conn.max_frame_size == limit
    client = Connection(client=True, deflate=client_codec, max_message_size=None)
    message = bytes(1000) + b"end"
    data = client.send_binary(message)
    half = len(data) // 2
    assert conn.receive_data(data[:half]) + conn.receive_data(data[half:]) == [message]
    pieces = PerMessageDeflate().compress(message)
    assert PerMessageDeflate().decompress(pieces, limit) == message
    fragments = frame(0x2, pieces[:5], fin=False, rsv=4) + frame(0x0, pieces[5:])
    conn = server(deflate=PerMessageDeflate(), max_message_size=limit)
    assert conn.receive_data(fragments) == [message]
    conn = server(max_message_size=limit)
    assert conn.receive_data(frame(0x1, b"text")) == ["text"]
    conn.max_frame_size = limit
    assert conn.receive_data(frame(0x2, bytes(200))) == [bytes(200)]


@pytest.mark.parametrize("limit", [-1, -5, -(2**70)])
def test_a_negative_limit_refuses_every_message_compressed_or_not(limit: int) -> None:
    """A negative limit (which the settings refuse, but the core takes) fails every data
    message with 1009, as one of 0 does a non-empty one: a compressed message below -1
    raised ``ValueError`` out of ``receive_data()`` (zlib's bound was negative), and with
    the C accelerator a limit past -sys.maxsize raised ``OverflowError`` from
    ``Connection()``."""
    message = PerMessageDeflate().compress(b"hello")
    for frames in (
        frame(0x1, b"hello"),
        frame(0x1, message, rsv=4),
        frame(0x1, message[:2], fin=False, rsv=4) + frame(0x0, message[2:]),
    ):
        conn = server(deflate=PerMessageDeflate(), max_message_size=limit)
        [close] = conn.receive_data(frames)
        assert isinstance(close, Close) and close.code == 1009, close
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decompress(message, limit)


def test_limits_are_inclusive() -> None:
    conn = server(max_message_size=100, max_frame_size=60)
    assert conn.receive_data(frame(0x2, bytes(60), fin=False) + frame(0x0, bytes(40))) == [
        bytes(100)
    ]


# -- the closing handshake ---------------------------------------------------------------

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
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_peer_close_is_echoed(code: int) -> None:
    conn = server()
    events = conn.receive_data(frame(0x8, code.to_bytes(2, "big") + "bye ✓".encode()))
    assert events == [Close(code, "bye ✓")]
    assert conn.data_to_send() == b"\x88\x02" + code.to_bytes(2, "big")
    assert (conn.close_code, conn.close_reason) == (code, "bye ✓")
    assert conn.close_sent and conn.close_received and conn.error is None
    assert conn.state is State.CLOSED
    assert conn.should_close_transport


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes(code: int) -> None:
    conn = server()
    [close] = conn.receive_data(frame(0x8, code.to_bytes(2, "big")))
    assert close == Close(1002, f"invalid close code {code}")
    assert parse_close(conn.data_to_send())[0] == 1002


def test_empty_close_is_answered_with_1000() -> None:
    conn = server()
    assert conn.receive_data(frame(0x8)) == [Close(1005, "")]
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"
    assert conn.close_code == 1005


def test_everything_after_close_is_ignored() -> None:
    conn = server()
    events = conn.receive_data(
        frame(0x1, b"a") + close_frame(1000, masked=True) + frame(0x1, b"b") + b"\xff\xff"
    )
    assert events == ["a", Close(1000, "")]
    assert conn.receive_data(frame(0x9, b"")) == []
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"


def test_close_discards_partial_message() -> None:
    conn = server()
    events = conn.receive_data(frame(0x1, b"par", fin=False) + close_frame(1001, masked=True))
    assert events == [Close(1001, "")]


def test_server_initiated_close() -> None:
    conn = server()
    assert conn.send_close(1000, "done") == b"\x88\x06\x03\xe8done"
    assert conn.state is State.CLOSING
    assert conn.close_sent and conn.close_code is None
    assert conn.send_close() == b""
    for send in (conn.send_text, conn.send_binary, conn.send_ping, conn.send_pong):
        with pytest.raises(InvalidState):
            send("x" if send == conn.send_text else b"x")  # type: ignore[operator]
    assert not conn.should_close_transport
    # Messages still arrive while closing; pings get no pong after our close (5.5.1).
    assert conn.receive_data(frame(0x1, b"late") + frame(0x9, b"p")) == ["late", Ping(b"p")]
    assert conn.data_to_send() == b""
    assert conn.receive_data(frame(0x8, b"\x03\xe8")) == [Close(1000, "")]
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED
    assert conn.should_close_transport
    assert conn.receive_data(b"") == []
    assert conn.eof


def test_violation_while_closing_sends_no_second_close() -> None:
    conn = server()
    conn.send_close(1001)
    assert conn.receive_data(frame(0x3, b"")) == [Close(1002, "reserved opcode 3")]
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED and conn.should_close_transport


def test_client_waits_for_the_server_to_close_tcp() -> None:
    conn = Connection(client=True)
    conn.send_close()
    assert conn.receive_data(close_frame(1000)) == [Close(1000, "")]
    assert conn.state is State.CLOSED
    assert not conn.should_close_transport  # RFC 6455 7.1.1: the server closes first
    assert conn.receive_data(b"") == []
    assert conn.should_close_transport


def test_client_answers_server_close() -> None:
    conn = Connection(client=True)
    assert conn.receive_data(close_frame(1001, b"restart")) == [Close(1001, "restart")]
    out = conn.data_to_send()
    assert out[:2] == b"\x88\x82" and xor(out[6:], out[2:6]) == b"\x03\xe9"


def test_send_close_without_status() -> None:
    conn = server()
    assert conn.send_close(1005) == b"\x88\x00"


def test_eof_before_close() -> None:
    conn = server()
    assert conn.receive_data(frame(0x1, b"a")[:3]) == []
    assert conn.receive_data(b"") == [Close(1006, "")]
    assert (conn.close_code, conn.close_reason) == (1006, "")
    assert conn.state is State.CLOSED
    assert conn.should_close_transport and conn.error is None
    assert conn.receive_data(b"") == []
    assert conn.receive_data(frame(0x1, b"a")) == []
    assert conn.send_close() == b""
    assert conn.data_to_send() == b""


def test_eof_after_our_close() -> None:
    conn = server()
    conn.send_close()
    assert conn.receive_data(b"") == [Close(1006, "")]
    assert conn.close_code == 1006


def test_long_failure_reason_is_truncated() -> None:
    assert _truncate_reason("x" * 200) == "x" * 123
    assert _truncate_reason("é" * 100).encode() == "é".encode() * 61
    assert _truncate_reason("short") == "short"


def test_repr() -> None:
    assert repr(server()) == "<Connection server OPEN close_code=None>"


# -- round trips -------------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70001]


def round_trip(
    client: Connection, srv: Connection, messages: list[str | bytes]
) -> tuple[list[Event], list[Event]]:
    upstream = b"".join(client.send_message(m) for m in messages)
    downstream = b"".join(srv.send_message(m) for m in messages)
    return srv.receive_data(upstream), client.receive_data(downstream)


@pytest.mark.parametrize(
    "offer",
    [
        None,
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=8; client_max_window_bits=9",
    ],
)
def test_round_trip(offer: str | None) -> None:
    if offer is None:
        client, srv = Connection(client=True), Connection()
    else:
        client_codec, server_codec = deflate_pair(offer)
        client = Connection(client=True, deflate=client_codec)
        srv = Connection(deflate=server_codec)
    messages: list[str | bytes] = []
    for n in SIZES:
        messages += ["é" * (n // 2), os.urandom(n), "x" * n]
    for _ in range(2):  # twice: context takeover
        assert round_trip(client, srv, messages) == (messages, messages)
    assert srv.receive_data(client.send_ping(b"hi")) == [Ping(b"hi")]
    assert client.receive_data(srv.data_to_send()) == [Pong(b"hi")]
    assert srv.receive_data(client.send_close(4000, "bye")) == [Close(4000, "bye")]
    assert client.receive_data(srv.data_to_send()) == [Close(4000, "")]
    assert srv.should_close_transport and not client.should_close_transport


@given(
    st.lists(st.one_of(st.text(max_size=500), st.binary(max_size=500)), max_size=10),
    st.booleans(),
    st.lists(st.integers(0, 6000), max_size=20),
)
@HYPOTHESIS
def test_round_trip_property(messages: list[str | bytes], compress: bool, cuts: list[int]) -> None:
    if compress:
        client_codec, server_codec = deflate_pair()
        client = Connection(client=True, deflate=client_codec)
        srv = Connection(deflate=server_codec)
    else:
        client, srv = Connection(client=True), Connection()
    upstream = b"".join(client.send_message(m) for m in messages)
    assert feed(srv, split(upstream, cuts))[0] == messages
    downstream = b"".join(srv.send_message(m) for m in messages)
    assert feed(client, split(downstream, cuts))[0] == messages


# -- against an independent implementation: websockets' sans-I/O protocols --------------


def websockets_client(compress: bool) -> tuple[object, Connection]:
    """A websockets ClientProtocol handshaken with our server side; returns (it, ours)."""
    from websockets.client import ClientProtocol
    from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
    from websockets.uri import parse_uri

    from dwebsocket.protocol.handshake import build_response, parse_request

    from .test_handshake import request_headers

    client = ClientProtocol(
        parse_uri("ws://localhost/"),
        extensions=enable_client_permessage_deflate(None) if compress else None,
        max_size=None,
    )
    client.send_request(client.connect())
    request = parse_request(*request_headers(client.data_to_send()[0]))
    codec = None
    extensions = None
    if compress:
        negotiated = PerMessageDeflate.negotiate(request.extensions)
        assert negotiated is not None
        codec, extensions = negotiated
    client.receive_data(build_response(request, extensions=extensions))
    client.events_received()
    assert client.handshake_exc is None
    assert len(client.extensions) == int(compress)
    return client, Connection(deflate=codec, max_message_size=None)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "deflate"])
def test_websockets_client_to_our_server(compress: bool) -> None:
    client, srv = websockets_client(compress)
    data = os.urandom(100_000)
    text = "dwebsocket ✓ " * 1000
    client.send_text(text.encode())  # type: ignore[attr-defined]
    client.send_binary(data)  # type: ignore[attr-defined]
    client.send_text(b"frag", fin=False)  # type: ignore[attr-defined]
    client.send_ping(b"ping")  # type: ignore[attr-defined]
    client.send_continuation("mént".encode(), fin=False)  # type: ignore[attr-defined]
    client.send_continuation(b"ed", fin=True)  # type: ignore[attr-defined]
    client.send_binary(b"")  # type: ignore[attr-defined]
    client.send_close(1001, "going")  # type: ignore[attr-defined]
    wire = b"".join(client.data_to_send())  # type: ignore[attr-defined]
    expected = [text, data, Ping(b"ping"), "fragménted", b"", Close(1001, "going")]
    for pieces in ([wire], split(wire, range(0, len(wire), 997))):
        _, srv = websockets_client(compress)
        events, out = feed(srv, pieces)
        assert events == expected
    # Our pong and close reply, read by websockets.
    client.receive_data(out)  # type: ignore[attr-defined]
    frames = client.events_received()  # type: ignore[attr-defined]
    assert [(f.opcode.name, bytes(f.data)) for f in frames] == [
        ("PONG", b"ping"),
        ("CLOSE", b"\x03\xe9"),
    ]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "deflate"])
def test_our_server_to_websockets_client(compress: bool) -> None:
    client, srv = websockets_client(compress)
    data = os.urandom(70_000)
    wire = (
        srv.send_text("héllo" * 5000)
        + srv.send_binary(data)
        + srv.send_text("")
        + srv.send_ping(b"x")
        + srv.send_close(1000, "bye")
    )
    client.receive_data(wire)  # type: ignore[attr-defined]
    frames = client.events_received()  # type: ignore[attr-defined]
    assert [(f.opcode.name, bytes(f.data)) for f in frames] == [
        ("TEXT", ("héllo" * 5000).encode()),
        ("BINARY", data),
        ("TEXT", b""),
        ("PING", b"x"),
        ("CLOSE", b"\x03\xe8bye"),
    ]
    # websockets answers the ping and the close; we read both.
    assert srv.receive_data(b"".join(client.data_to_send())) == [  # type: ignore[attr-defined]
        Pong(b"x"),
        Close(1000, "bye"),
    ]


def websockets_server(compress: bool) -> tuple[object, Connection]:
    """Our client handshaken with a websockets ServerProtocol; returns (it, ours)."""
    from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
    from websockets.server import ServerProtocol

    from dwebsocket.protocol.handshake import build_request, generate_key, parse_response

    srv = ServerProtocol(
        extensions=enable_server_permessage_deflate(None) if compress else None,
        max_size=None,
    )
    key = generate_key()
    srv.receive_data(
        build_request(
            "localhost",
            "/",
            key=key,
            extensions=PerMessageDeflate.client_offer() if compress else None,
        )
    )
    [request] = srv.events_received()
    srv.send_response(srv.accept(request))  # type: ignore[arg-type]
    parsed = parse_response(b"".join(srv.data_to_send()), key)
    assert parsed is not None
    status, headers, _ = parsed
    assert status == 101
    codec = None
    for name, value in headers:
        if name == "sec-websocket-extensions":
            codec = PerMessageDeflate.from_response(value)
    assert (codec is not None) == compress
    return srv, Connection(client=True, deflate=codec, max_message_size=None)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "deflate"])
def test_our_client_with_websockets_server(compress: bool) -> None:
    srv, client = websockets_server(compress)
    data = os.urandom(70_000)
    messages: list[str | bytes] = ["Hello", data, "é" * 40000, b""]
    wire = b"".join(client.send_message(m) for m in messages) + client.send_ping(b"p")
    srv.receive_data(wire)  # type: ignore[attr-defined]
    frames = srv.events_received()  # type: ignore[attr-defined]
    assert [bytes(f.data) for f in frames] == [b"Hello", data, ("é" * 40000).encode(), b"", b"p"]
    for m in messages:
        if isinstance(m, str):
            srv.send_text(m.encode())  # type: ignore[attr-defined]
        else:
            srv.send_binary(m)  # type: ignore[attr-defined]
    srv.send_close(1000, "done")  # type: ignore[attr-defined]
    events = client.receive_data(b"".join(srv.data_to_send()))  # type: ignore[attr-defined]
    assert events == [Pong(b"p"), *messages, Close(1000, "done")]
    srv.receive_data(client.data_to_send())  # type: ignore[attr-defined]
    assert [f.opcode.name for f in srv.events_received()] == ["CLOSE"]  # type: ignore[attr-defined]


def test_receive_state_twin() -> None:
    from dwebsocket.protocol.connection import PyReceiveState

    state = PyReceiveState(open=False, scan_limit=3, max_message=7)
    assert (state.open, state.scan_limit, state.max_message) == (False, 3, 7)
    assert repr(state) == "ReceiveState(open=False, scan_limit=3, max_message=7)"


def test_rx_follows_the_core() -> None:
    conn = Connection(max_message_size=100)
    assert (conn.rx.open, conn.rx.scan_limit) == (True, 100)
    conn.receive_data(b"\x81\x85")  # a frame's start: held, nothing for a fast path
    assert conn.rx.scan_limit == -1
    conn.receive_data(b"\x00\x00\x00\x00hello")
    assert conn.rx.scan_limit == 100
    assert conn.rx.max_message == 100
    conn.max_message_size = 50
    assert (conn.rx.scan_limit, conn.rx.max_message) == (50, 50)
    conn.max_message_size = None
    assert (conn.rx.scan_limit, conn.rx.max_message) == (sys.maxsize, sys.maxsize)
    conn.max_message_size = 50
    conn.send_close(1000)
    assert (conn.rx.open, conn.rx.scan_limit) == (False, 50)
    conn.receive_data(b"")
    assert (conn.rx.open, conn.rx.scan_limit) == (False, -1)


# -- a compressor that cannot go on (RFC 7692 7.2.3: the peer decodes in our context) ----


def deflating_pair(offer: str = "permessage-deflate") -> tuple[Connection, Connection]:
    """(server, client) connections sharing a negotiated permessage-deflate."""
    client_codec, server_codec = deflate_pair(offer)
    return Connection(deflate=server_codec), Connection(client=True, deflate=client_codec)


@pytest.mark.parametrize(
    "offer", ["permessage-deflate", "permessage-deflate; server_no_context_takeover"]
)
def test_a_batch_with_an_item_of_another_type_compresses_none_of_it(offer: str) -> None:
    """send_messages checks every message's type before compressing any: the TypeError
    leaves the compressor where it was, so the peer decodes what comes next."""
    conn, peer = deflating_pair(offer)
    assert peer.receive_data(conn.send_text("a first message for context!")) == [
        "a first message for context!"
    ]
    with pytest.raises(TypeError):
        conn.send_messages(["hello, this is the lost one", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        conn.send_messages([b"bytes", "text", None])  # type: ignore[list-item]
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: str.encode() refuses it
        conn.send_messages(["text", "\ud800"])
    with pytest.raises(TypeError):  # and one message alone, as ever
        conn.send_binary(5)  # type: ignore[arg-type]
    assert conn.state is State.OPEN and conn.data_to_send() == b""
    later = ["hello, this is the lost one!", b"and binary"]
    assert peer.receive_data(conn.send_messages(later)) == later
    assert peer.receive_data(conn.send_text("hello, this is the lost one!")) == [
        "hello, this is the lost one!"
    ]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize(
    "offer", ["permessage-deflate", "permessage-deflate; server_no_context_takeover"]
)
def test_a_compressor_that_fails_mid_message_fails_the_connection(offer: str, batch: bool) -> None:
    """A compression that raises part way (MemoryError) leaves a stream the peer cannot
    follow: the connection fails with 1011 (RFC 6455 7.1.7) and sends no other frame."""
    conn, peer = deflating_pair(offer)
    first = conn.send_messages(["one", "two"]) if batch else conn.send_text("one")
    assert peer.receive_data(first)[:1] == ["one"]
    assert conn.deflate is not None
    conn.deflate.encoder = LosingEncoder(conn.deflate.encoder)
    with pytest.raises(MemoryError):
        if batch:
            conn.send_messages(["hello, this is the lost one", "and another"])
        else:
            conn.send_text("hello, this is the lost one")
    assert conn.state is not State.OPEN
    for send in (
        lambda: conn.send_text("hello, this is the lost one!"),
        lambda: conn.send_messages(["x"]),
    ):
        with pytest.raises(InvalidState):
            send()
    assert peer.receive_data(conn.data_to_send()) == [Close(1011, "compression failed")]
    # The closing handshake ends as usual: the peer's reply (its code) closes it.
    assert conn.receive_data(peer.data_to_send()) == [Close(1011, "")]
    assert conn.state is State.CLOSED and conn.should_close_transport
