"""Hostile clients against gevent.pywsgi: every attack gets its RFC 6455 close code (or
the connection dropped, where no close frame can get through) within a bounded time, the
server's peak RSS stays within ``MEMORY_BUDGET`` of where it was, and the server serves
the next client as before.

The server runs with ``HOSTILE_SETTINGS``: a 64 KiB message limit and a 2 s keepalive.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import zlib
from collections.abc import Iterator

import pytest

from dwebsocket.protocol.deflate import PerMessageDeflate
from tests.hardening.client import (
    TIMEOUT,
    Outcome,
    close_frame,
    echo,
    frame,
    handshake,
    open_websocket,
    outcome,
)
from tests.hardening.support import HOSTILE_SETTINGS, memory_bounded, settled, stats
from tests.servers import ServerProcess, flooding

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

LIMIT: int = HOSTILE_SETTINGS["WEBSOCKET_MAX_MESSAGE_SIZE"]
DEFLATE = PerMessageDeflate.client_offer()


@pytest.fixture(scope="module")
def baseline(hostile_server: ServerProcess) -> dict[str, int]:
    return stats(hostile_server)


@pytest.fixture
def server(hostile_server: ServerProcess, baseline: dict[str, int]) -> Iterator[ServerProcess]:
    """The module's server, memory-checked around each attack, and checked to still echo
    for a well-behaved client afterwards."""
    with memory_bounded(hostile_server):
        yield hostile_server
    assert_still_serving(hostile_server)


def assert_still_serving(server: ServerProcess) -> None:
    sock, rest = open_websocket(server)
    with sock:
        result = echo(sock, rest, frame(0x1, "still here ☃".encode()))
    assert result.messages == ["still here ☃"] and result.code == 1000


def attack(
    server: ServerProcess, payload: bytes, *, extensions: str | None = None, path: str = "/echo/"
) -> Outcome:
    """Open a WebSocket, send ``payload``, read what the server does until its EOF."""
    sock, rest = open_websocket(server, path, extensions=extensions)
    with sock:
        # The server may give up before it has read it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        return outcome(sock, rest)


def deflated(data: bytes) -> bytes:
    """``data`` compressed as one permessage-deflate message (RFC 7692 7.2.1)."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]


# -- lengths ----------------------------------------------------------------------------


def length_header(length: int) -> bytes:
    """A masked binary frame header announcing ``length`` (64-bit form) and no payload."""
    return bytes([0x82, 0x80 | 127]) + struct.pack("!Q", length) + b"mask"


@pytest.mark.parametrize(
    ("length", "code"),
    [(1 << 63, 1002), ((1 << 63) - 1, 1009), (1 << 32, 1009), (LIMIT + 1, 1009)],
    ids=["2^63", "2^63-1", "2^32", "limit+1"],
)
def test_announced_length(server: ServerProcess, length: int, code: int) -> None:
    """The header alone fails the connection: the server does not wait for the payload."""
    assert attack(server, length_header(length)).code == code


# -- compression ------------------------------------------------------------------------


def test_decompression_bomb(server: ServerProcess) -> None:
    """64 MiB of zeros in ~64 KiB on the wire (ratio ~1000:1): 1009 once the output
    passes the limit; the 64 MiB are never held."""
    bomb = deflated(bytes(64 << 20))
    assert len(bomb) < LIMIT
    assert attack(server, frame(0x2, bomb, rsv=4), extensions=DEFLATE).code == 1009


def test_decompression_bomb_in_fragments(server: ServerProcess) -> None:
    """The same bomb spread over fragments of ~1 KiB that expand to 1 MiB each."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = encoder.compress(bytes(1 << 20)) + encoder.flush(zlib.Z_SYNC_FLUSH)
    rest = encoder.compress(bytes(1 << 20)) + encoder.flush(zlib.Z_SYNC_FLUSH)
    payload = frame(0x2, first, fin=False, rsv=4) + frame(0x0, rest, fin=False) * 63
    assert attack(server, payload, extensions=DEFLATE).code == 1009


def test_many_small_bombs_in_one_read(hostile_server: ServerProcess) -> None:
    """Each message within the limit, but 780 of them in 64 KiB of wire (each 64 KiB of
    zeros as 78 bytes): the server must not expand them all at once."""
    body = deflated(bytes(LIMIT - 1))
    burst = frame(0x2, body, rsv=4) * (65536 // (len(body) + 8))
    offer = f"{DEFLATE}; client_no_context_takeover"
    with memory_bounded(hostile_server):
        sock, rest = open_websocket(hostile_server, extensions=offer)
        with sock:
            sock.sendall(burst + close_frame(1000))
            assert outcome(sock, rest).eof
    assert_still_serving(hostile_server)


def test_compressed_garbage(server: ServerProcess) -> None:
    assert attack(server, frame(0x1, b"\xff" * 100, rsv=4), extensions=DEFLATE).code == 1002


# -- fragments --------------------------------------------------------------------------


def test_fragments_without_end(server: ServerProcess) -> None:
    """1 KiB fragments that never finish: 1009 at the message limit."""
    chunk = b"x" * 1024
    payload = frame(0x2, chunk, fin=False) + frame(0x0, chunk, fin=False) * (LIMIT // 1024 + 8)
    assert attack(server, payload).code == 1009


def test_tiny_fragments_without_end(server: ServerProcess) -> None:
    """1-byte fragments: 1009 at the message limit, however many frames that takes."""
    one = frame(0x0, b"y", fin=False)
    assert attack(server, frame(0x2, b"x", fin=False) + one * (LIMIT + 10)).code == 1009


def test_empty_fragments_without_end(server: ServerProcess) -> None:
    """Empty fragments carry no payload but still cost a frame each: they too must end
    in 1009 instead of accumulating forever."""
    empty = frame(0x0, b"", fin=False)
    assert attack(server, frame(0x2, b"", fin=False) + empty * 200_000).code == 1009


# -- UTF-8 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fragments",
    [
        [b"\xce", b"A"],  # a 2-byte sequence broken by its continuation
        [b"ok \xf0\x9f", b"\x98"],  # a 4-byte sequence cut short at the final fragment
        [b"\xed\xa0", b"\x80"],  # a UTF-16 surrogate, split
        [b"fine", b"", b"\xc0\xaf"],  # an overlong encoding in the last fragment
    ],
    ids=["broken-continuation", "truncated", "surrogate", "overlong"],
)
def test_invalid_utf8_across_fragments(server: ServerProcess, fragments: list[bytes]) -> None:
    frames = [
        frame(0x1 if i == 0 else 0x0, part, fin=i == len(fragments) - 1)
        for i, part in enumerate(fragments)
    ]
    assert attack(server, b"".join(frames)).code == 1007


@pytest.mark.parametrize("start", [b"\xff", b"\xed\xa0"], ids=["0xff", "surrogate-prefix"])
def test_invalid_utf8_fails_fast(server: ServerProcess, start: bytes) -> None:
    """RFC 6455 8.1: the first fragment that cannot be UTF-8 fails the connection; the
    server does not wait for the message's end (which never comes here)."""
    assert attack(server, frame(0x1, start, fin=False)).code == 1007


def test_valid_utf8_across_fragments_still_echoes(server: ServerProcess) -> None:
    sock, rest = open_websocket(server)
    with sock:
        parts = [b"\xe2", b"\x98", b"\x83 ok \xf0\x9f\x9a", b"\x80"]
        frames = b"".join(frame(0 if i else 1, p, fin=i == 3) for i, p in enumerate(parts))
        result = echo(sock, rest, frames)
    assert result.messages == ["☃ ok 🚀"] and result.code == 1000


# -- frames the RFC forbids -------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(frame(0x1, b"hello", masked=False), id="unmasked"),
        *[pytest.param(frame(op, b"x"), id=f"opcode-{op:#x}") for op in (3, 4, 5, 6, 7)],
        *[pytest.param(frame(op, b"x"), id=f"opcode-{op:#x}") for op in range(0xB, 0x10)],
        *[pytest.param(frame(0x1, b"x", rsv=rsv), id=f"rsv-{rsv}") for rsv in (1, 2, 4)],
        pytest.param(frame(0x9, b"x" * 126), id="ping-126-bytes"),
        pytest.param(frame(0x9, b"x", fin=False), id="fragmented-ping"),
        pytest.param(frame(0x0, b"x"), id="lone-continuation"),
        pytest.param(frame(0x1, b"a", fin=False) + frame(0x1, b"b"), id="text-inside-text"),
        pytest.param(frame(0x8, b"\x03"), id="close-1-byte"),
        *[
            pytest.param(frame(0x8, struct.pack("!H", code)), id=f"close-{code}")
            for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
        ],
    ],
)
def test_protocol_violation_closes_1002(server: ServerProcess, payload: bytes) -> None:
    assert attack(server, payload).code == 1002


def test_rsv1_on_a_control_frame_with_deflate(server: ServerProcess) -> None:
    assert attack(server, frame(0x9, b"x", rsv=4), extensions=DEFLATE).code == 1002


def test_close_reason_not_utf8_closes_1007(server: ServerProcess) -> None:
    assert attack(server, frame(0x8, struct.pack("!H", 1000) + b"\xff")).code == 1007


# -- pings ------------------------------------------------------------------------------

PING = frame(0x9, b"p" * 125)
FLOOD = 20_000


def test_ping_flood_from_a_reading_client(server: ServerProcess) -> None:
    """Every ping is answered, in order, and a message after the flood still echoes."""
    sock, rest = open_websocket(server)
    with sock:
        result = echo(sock, rest, PING * FLOOD + frame(0x1, b"after"))
    assert result.pongs == FLOOD
    assert result.messages == ["after"] and result.code == 1000


def test_ping_flood_from_a_client_that_never_reads(server: ServerProcess) -> None:
    """The server writes each pong before it reads on (no queue in between), so a flood
    the client does not read fills the socket buffers, then stops the server's reading;
    after WEBSOCKET_PING_TIMEOUT (the I/O timeout) without progress the server drops the
    connection. It cannot send a close frame through a full buffer: the client sees its
    pongs, then EOF."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect((server.host, server.port))
    with sock:
        _, rest = handshake(sock)
        block = PING * 8000  # 1 MiB
        sock.settimeout(5.0)
        sent = 0
        try:
            for _ in range(64):  # at most 64 MiB; the server stops reading long before
                sock.sendall(block)
                sent += len(block)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        result = outcome(sock, rest)
    assert result.eof and result.code is None
    assert result.pongs * len(PING) < sent  # it gave up: not every ping was answered


def test_silent_peer_is_closed_by_keepalive(server: ServerProcess) -> None:
    """A peer that stops answering (half-open): ping, then 1011 after the ping timeout."""
    sock, rest = open_websocket(server)
    with sock:
        result = outcome(sock, rest)
    assert result.pings == 1 and result.code == 1011


# -- floods ----------------------------------------------------------------------------


def test_message_flood_against_a_polling_view(hostile_server: ServerProcess) -> None:
    """10 MiB of 1-byte messages (~1.5 million) against a view that consumes 1,000 a
    second: the server must read no faster than the view consumes, so the client's sends
    block (TCP flow control) instead of the server's memory growing."""
    with memory_bounded(hostile_server):
        sock, _ = open_websocket(hostile_server, "/_poll/")
        with sock:
            block = frame(0x2, b"\x01") * 150_000  # 1 MiB on the wire
            sock.settimeout(5.0)
            with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
                for _ in range(10):
                    sock.sendall(block)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert_still_serving(hostile_server)


#: A client that sends unsolicited pongs as fast as it can until killed (``python -c
#: _PONG_FLOODER HOST PORT``); it prints "flooding" once under way.
_PONG_FLOODER = """
import socket, sys
sys.path.insert(0, ".")
from tests.hardening.client import frame, handshake
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
handshake(sock)
block = frame(0xA, b"p") * 10000
for _ in range(50):  # 3.5 MB: the socket buffers are full, the server reads as fast as it can
    sock.sendall(block)
print("flooding", flush=True)
while True:
    sock.sendall(block)
"""


def test_a_flood_of_control_frames_does_not_starve_the_others(server: ServerProcess) -> None:
    """Unsolicited pongs (RFC 6455 5.5.3 allows them) as fast as the client can send:
    they complete no message, and the loop that reads the rest of a long frame at once
    (while reads fill the buffer and complete nothing) read on as long as they came,
    never letting gevent's loop run: no other connection of the worker was served, no
    handshake answered, until the flood stopped. Another client is served meanwhile."""
    with flooding(_PONG_FLOODER, server):
        assert_still_serving(server)


# -- afterwards -------------------------------------------------------------------------


def test_zz_nothing_left_open(hostile_server: ServerProcess, baseline: dict[str, int]) -> None:
    """After every attack: no connection left open, no file descriptor leaked."""
    after = settled(hostile_server, lambda s: s["websockets"] == 0 and s["fds"] <= baseline["fds"])
    assert after["websockets"] == 0 and after["fds"] <= baseline["fds"], (baseline, after)
