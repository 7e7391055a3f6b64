"""permessage-deflate: negotiation matrix and the bounded codec (protocol.deflate)."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest

from dwebsocket.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.handshake import parse_extensions

# With _deflate's C streams and with the zlib module's (the twins).
pytestmark = pytest.mark.usefixtures("masking")


def negotiate(offer: str) -> tuple[PerMessageDeflate, str] | None:
    return PerMessageDeflate.negotiate(parse_extensions(offer))


# (offer, response, local_nct, remote_nct, local_bits, remote_bits); defaults: we cap
# both windows at 12 bits where the offer lets us.
MATRIX = [
    ("permessage-deflate", "permessage-deflate", False, False, 12, 15),
    ("PerMessage-Deflate", "permessage-deflate", False, False, 12, 15),
    (
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=12",
        False,
        False,
        12,
        12,
    ),
    (
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=10",
        False,
        False,
        12,
        10,
    ),
    (
        "permessage-deflate; client_max_window_bits=15",
        "permessage-deflate; client_max_window_bits=12",
        False,
        False,
        12,
        12,
    ),
    (
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; client_max_window_bits=8",
        False,
        False,
        12,
        8,
    ),
    (
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10",
        False,
        False,
        10,
        15,
    ),
    (
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=8",
        False,
        False,
        8,
        15,
    ),
    (
        "permessage-deflate; server_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=12",
        False,
        False,
        12,
        15,
    ),
    (
        "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover",
        True,
        False,
        12,
        15,
    ),
    (
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_no_context_takeover",
        False,
        True,
        12,
        15,
    ),
    (
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover; "
        'server_max_window_bits="9"; client_max_window_bits',
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=12",
        True,
        True,
        9,
        12,
    ),
    # Autobahn 13.7: the first acceptable offer wins.
    (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, "
        "permessage-deflate; server_no_context_takeover, permessage-deflate",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
        True,
        False,
        8,
        15,
    ),
    # Declined offers are skipped, not errors.
    (
        "x-webkit-deflate-frame, permessage-deflate; unknown=1, permessage-deflate",
        "permessage-deflate",
        False,
        False,
        12,
        15,
    ),
    (
        "permessage-deflate; server_max_window_bits=7, permessage-deflate; "
        "server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover",
        True,
        False,
        12,
        15,
    ),
]

# The same offers with no caps configured (15 bits both ways).
UNCAPPED = [
    ("permessage-deflate", "permessage-deflate", 15, 15),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate", 15, 15),
    (
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=10",
        15,
        10,
    ),
    (
        "permessage-deflate; server_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=15",
        15,
        15,
    ),
    (
        "permessage-deflate; server_max_window_bits=11",
        "permessage-deflate; server_max_window_bits=11",
        11,
        15,
    ),
]


@pytest.mark.parametrize("offer,response,lbits,rbits", UNCAPPED)
def test_negotiation_uncapped(offer: str, response: str, lbits: int, rbits: int) -> None:
    result = PerMessageDeflate.negotiate(
        parse_extensions(offer),
        server_max_window_bits=15,
        client_max_window_bits=15,
        level=9,
        mem_level=8,
    )
    assert result is not None
    codec, value = result
    assert value == response
    assert (codec.local_max_window_bits, codec.remote_max_window_bits) == (lbits, rbits)
    assert (codec.level, codec.mem_level) == (9, 8)


@pytest.mark.parametrize("bits", [7, 16])
def test_negotiation_config_is_checked(bits: int) -> None:
    with pytest.raises(ValueError):
        PerMessageDeflate.negotiate([], server_max_window_bits=bits)
    with pytest.raises(ValueError):
        PerMessageDeflate.negotiate([], client_max_window_bits=bits)


DECLINED = [
    "",
    "x-webkit-deflate-frame",
    "permessage-deflate; unknown",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; client_no_context_takeover=yes",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=09",
    "permessage-deflate; client_max_window_bits=0",
    "permessage-deflate; client_max_window_bits=abc",
]


@pytest.mark.parametrize("offer,response,lnct,rnct,lbits,rbits", MATRIX)
def test_negotiation_matrix(
    offer: str, response: str, lnct: bool, rnct: bool, lbits: int, rbits: int
) -> None:
    result = negotiate(offer)
    assert result is not None
    codec, value = result
    assert value == response
    assert (
        codec.local_no_context_takeover,
        codec.remote_no_context_takeover,
        codec.local_max_window_bits,
        codec.remote_max_window_bits,
    ) == (lnct, rnct, lbits, rbits)
    # The client reading our answer agrees, mirrored.
    client = PerMessageDeflate.from_response(value)
    assert client.local_no_context_takeover == rnct
    assert client.remote_no_context_takeover == lnct
    # Without server_max_window_bits in the response the client assumes 15 bits, and a
    # decoder with a larger window reads a smaller window's stream.
    assert client.remote_max_window_bits >= lbits
    assert client.local_max_window_bits == rbits
    message = b"permessage-deflate " * 500
    assert client.decompress(codec.compress(message), None) == message
    assert codec.decompress(client.compress(message), None) == message


@pytest.mark.parametrize("offer", DECLINED)
def test_negotiation_declines(offer: str) -> None:
    assert negotiate(offer) is None


def test_client_offer_is_accepted() -> None:
    assert negotiate(PerMessageDeflate.client_offer()) is not None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x-other",
        "permessage-deflate, permessage-deflate",
        "permessage-deflate; client_max_window_bits",  # only valid in an offer
        "permessage-deflate; unknown",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate;",
    ],
)
def test_from_response_rejects(value: str) -> None:
    with pytest.raises(InvalidHandshake):
        PerMessageDeflate.from_response(value)


def test_invalid_window_bits() -> None:
    with pytest.raises(ValueError):
        PerMessageDeflate(local_max_window_bits=16)
    with pytest.raises(ValueError):
        PerMessageDeflate(remote_max_window_bits=7)
    assert "local_max_window_bits=15" in repr(PerMessageDeflate())


# -- the codec --------------------------------------------------------------------------

TEXT = b"The quick brown fox jumps over the lazy dog. " * 20


def pair(**kwargs: object) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A sender and a receiver agreeing on the same parameters."""
    sender = PerMessageDeflate(**kwargs)  # type: ignore[arg-type]
    receiver = PerMessageDeflate(
        remote_no_context_takeover=sender.local_no_context_takeover,
        remote_max_window_bits=sender.local_max_window_bits,
    )
    return sender, receiver


def test_compress_strips_tail() -> None:
    sender, receiver = pair()
    data = sender.compress(TEXT)
    assert not data.endswith(b"\x00\x00\xff\xff")
    assert len(data) < len(TEXT) // 4
    assert zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff") == TEXT
    assert receiver.decompress(data, None) == TEXT
    assert receiver.decompress(sender.compress(b""), 0) == b""
    assert receiver.decompress(b"\x02\x00", 0) == b""  # 7.2.3.6: an empty message
    assert receiver.decompress(b"\x00", 0) == b""


def test_rfc7692_examples() -> None:
    # RFC 7692 7.2.3.1/7.2.3.2: "Hello" compressed, and again with context takeover.
    receiver = PerMessageDeflate()
    assert receiver.decompress(bytes.fromhex("f248cdc9c90700"), 100) == b"Hello"
    assert receiver.decompress(bytes.fromhex("f200110000"), 100) == b"Hello"
    # 7.2.3.3: stored (uncompressed) block.
    assert PerMessageDeflate().decompress(bytes.fromhex("000500faff48656c6c6f00"), 5) == b"Hello"


def test_context_takeover() -> None:
    sender, receiver = pair()
    first, second = sender.compress(TEXT), sender.compress(TEXT)
    assert len(second) < len(first)  # the second refers to the first
    assert receiver.decompress(first, None) == TEXT
    assert receiver.decompress(second, None) == TEXT


def test_no_context_takeover() -> None:
    sender, receiver = pair(local_no_context_takeover=True)
    first, second = sender.compress(TEXT), sender.compress(TEXT)
    assert first == second
    # Each message decodes on its own.
    assert PerMessageDeflate().decompress(second, None) == TEXT
    assert receiver.decompress(first, None) == TEXT
    assert receiver.decompress(second, None) == TEXT


@pytest.mark.parametrize("bits", [8, 9, 10, 12, 15])
def test_window_bits(bits: int) -> None:
    sender, receiver = pair(local_max_window_bits=bits)
    strict = zlib.decompressobj(-max(bits, 9))  # a peer with exactly that window
    data = os.urandom(2000) + TEXT * 10
    for _ in range(3):
        compressed = sender.compress(data)
        assert strict.decompress(compressed + b"\x00\x00\xff\xff") == data
        assert receiver.decompress(compressed, None) == data


def test_window_bits_8_only_refers_to_the_previous_byte() -> None:
    # zlib cannot compress with an 8-bit window; RLE matches (distance 1) fit any window.
    sender = PerMessageDeflate(local_max_window_bits=8)
    assert len(sender.compress(b"a" * 10000)) < 100
    # A random 200-byte block repeated: matches at distance 200 would shrink it to ~220
    # bytes, as the 9-bit compressor does; the 8-bit one must not use them.
    block = os.urandom(200)
    assert len(sender.compress(block * 5)) > 900
    assert len(PerMessageDeflate(local_max_window_bits=9).compress(block * 5)) < 300


def test_fragments() -> None:
    sender, receiver = pair()
    data = sender.compress(TEXT)
    out = b"".join(
        receiver.decompress_fragment(data[i : i + 7], i + 7 >= len(data), None)
        for i in range(0, len(data), 7)
    )
    assert out == TEXT


class CountingInflater:
    """A decompressor passing everything to ``inner``, counting the bytes it produced."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.produced = 0

    def decompress(self, *args: Any) -> bytes:
        out: bytes = self.inner.decompress(*args)
        self.produced += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_bomb_is_bounded() -> None:
    bomb = PerMessageDeflate().compress(b"\x00" * (64 * 2**20))  # 64 MiB -> ~64 KiB
    assert len(bomb) < 100_000
    codec = PerMessageDeflate()
    codec.decoder = inflater = CountingInflater(codec.decoder)
    with pytest.raises(PayloadTooBig) as info:
        codec.decompress(bomb, 2**20)
    assert info.value.code == 1009
    assert inflater.produced == 2**20 + 1  # stopped one byte over the limit, not at 64 MiB
    assert (
        PerMessageDeflate().decompress(PerMessageDeflate().compress(b"x" * 100), 100) == b"x" * 100
    )
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decompress(PerMessageDeflate().compress(b"x" * 101), 100)


def test_limit_exactly_at_the_tail() -> None:
    # The output may reach the limit exactly, with the appended tail still unconsumed.
    data = os.urandom(5000)
    compressed = PerMessageDeflate().compress(data)
    assert PerMessageDeflate().decompress(compressed, 5000) == data
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decompress(compressed, 4999)


def test_corrupt_data() -> None:
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate().decompress(b"\xff\xff\xff\xff", None)
    assert info.value.code == 1002


def test_final_block_from_peer() -> None:
    # RFC 7692 7.2.3.3 allows BFINAL: the next message starts a new stream.
    receiver = PerMessageDeflate()
    for _ in range(2):
        finished = zlib.compressobj(wbits=-15)
        data = finished.compress(TEXT) + finished.flush()
        assert receiver.decompress(data, None) == TEXT
    finished = zlib.compressobj(wbits=-15)
    data = finished.compress(TEXT) + finished.flush()
    with pytest.raises(ProtocolError, match="after the final deflate block"):
        receiver.decompress(data + b"garbage", None)


def test_final_block_in_a_first_fragment() -> None:
    receiver = PerMessageDeflate()
    finished = zlib.compressobj(wbits=-15)
    data = finished.compress(TEXT) + finished.flush()
    assert receiver.decompress_fragment(data, False, None) == TEXT
    assert receiver.decompress_fragment(b"", True, None) == b""
    assert receiver.decompress(PerMessageDeflate().compress(TEXT), None) == TEXT


def test_a_flush_before_any_data_is_the_same_in_both_twins() -> None:
    # An empty message: flush() is the stream's first call (the Python twin then makes
    # its zlib stream there, as the C one does).
    from dwebsocket.protocol import deflate

    args = (6, 12, 5, zlib.Z_DEFAULT_STRATEGY, False)
    python = deflate.PyDeflater(*args).flush(zlib.Z_SYNC_FLUSH)
    assert python == zlib.compressobj(6, zlib.DEFLATED, -12, 5).flush(zlib.Z_SYNC_FLUSH)
    if deflate._codecs is not None:
        assert deflate._codecs.Deflater(*args).flush(zlib.Z_SYNC_FLUSH) == python


class _OutOfMemory:
    """A zlib stream whose every call runs out of memory (after taking its input, as
    zlib's own may: its output is lost)."""

    def compress(self, data: bytes) -> bytes:
        raise MemoryError

    def flush(self, mode: int) -> bytes:
        raise MemoryError


@pytest.mark.parametrize("call", ["compress", "flush"])
def test_a_python_deflater_that_ran_out_of_memory_is_lost_until_reset(call: str) -> None:
    # In-process, the Python twin's side of what tests/protocol/nomemory.py's
    # lost_compression sweeps with _testcapi for both (in a subprocess): a stream whose
    # call ran out of memory refuses (zlib.error) until reset(), then starts afresh.
    from dwebsocket.protocol import deflate

    stream = deflate.PyDeflater(6, 12, 5, zlib.Z_DEFAULT_STRATEGY, False)
    stream._z = _OutOfMemory()  # type: ignore[assignment]
    with pytest.raises(MemoryError):
        stream.compress(b"lost") if call == "compress" else stream.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(zlib.error):
        stream.compress(b"refused")
    with pytest.raises(zlib.error):
        stream.flush(zlib.Z_SYNC_FLUSH)
    stream.reset()
    sent = stream.compress(b"afresh") + stream.flush(zlib.Z_SYNC_FLUSH)
    assert zlib.decompressobj(-12).decompress(sent) == b"afresh"


def test_no_speedups_means_the_python_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    from dwebsocket.protocol import deflate

    monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", "1")
    assert deflate._load_codecs() is None
    monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", "0")  # "0" means speedups on
    assert (deflate._load_codecs() is None) == (deflate._codecs is None)


def test_a_thread_that_ends_leaves_no_codec_memory_behind() -> None:
    """A thread that compressed and decompressed a message, then ended, holds nothing any
    more: under runserver each connection (and each request that delivers to a group) is
    a thread of its own. The C streams' output buffer was per thread and never freed at
    thread exit: 256 KiB (the largest message's output, up to that) per such thread."""
    import threading
    import tracemalloc

    message = b"x" * 200_000

    def session() -> None:
        sender, receiver = pair()
        assert receiver.decompress(sender.compress(message), None) == message

    def sessions(count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=session)
            thread.start()
            thread.join(10)
            assert not thread.is_alive()

    session()  # the process's own buffers and pools, once
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sessions(8)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown // 8} bytes left behind per thread"


def _trim_the_c_output_buffer(codecs: object) -> None:
    """Leave _deflate's output buffer (one per process) as a fresh process has it: a call
    that needs more than its 256 KiB keep makes the next call free it."""
    import random

    big = codecs.Deflater(6, 15, 8, zlib.Z_DEFAULT_STRATEGY)  # type: ignore[attr-defined]
    big.compress(random.Random(0).randbytes(300_000))


def test_the_c_streams_write_the_zlib_modules_bytes_whatever_their_buffer() -> None:
    """Where a sync flush's output ends exactly at the end of the output buffer, zlib's next
    call (the buffer is full: the loop calls again) adds another empty stored block, and at
    level 0 the stored blocks' sizes follow the room given: the bytes depend on where the
    buffer ends. The C streams gave zlib their shared buffer's free room (its size the
    history of the process's messages), the zlib module gives blocks of 32 KiB, 64 KiB,
    256 KiB, ...: the default backend's send of a 4,081-byte message (random bytes, a
    4 KiB buffer) was 5 bytes longer than the Python path's (valid, but not the same
    frame), and a level-0 codec's blocks were cut elsewhere. Now the C streams give zlib
    the zlib module's blocks, from the start of each call's output."""
    import random

    from dwebsocket.protocol import deflate

    codecs = deflate._codecs
    if codecs is None:
        pytest.skip("_deflate is not built")
    rng = random.Random(4081)
    _trim_the_c_output_buffer(codecs)
    # The fast path's compression (the C API's compress_message()), through a 4 KiB and
    # an 8 KiB buffer: one of these sizes ends a flush at the buffer's end.
    for size in [*range(3980, 4100), *range(8100, 8200)]:
        message = rng.randbytes(size)
        args = (6, 12, 5, zlib.Z_DEFAULT_STRATEGY, False)
        expected = deflate.PyDeflater(*args)
        out = expected.compress(message) + expected.flush(zlib.Z_SYNC_FLUSH)
        assert codecs.compress_message(codecs.Deflater(*args), message) == out[:-4], size
    # A level-0 codec (stored blocks, cut to the room zlib is given): compress() and flush().
    _trim_the_c_output_buffer(codecs)
    for size in (100_000, 40_000, 70_000):
        message = rng.randbytes(size)
        args = (0, 15, 8, zlib.Z_DEFAULT_STRATEGY, False)
        python, c = deflate.PyDeflater(*args), codecs.Deflater(*args)
        for _ in range(2):
            assert c.compress(message) == python.compress(message), size
            assert c.flush(zlib.Z_SYNC_FLUSH) == python.flush(zlib.Z_SYNC_FLUSH), size
