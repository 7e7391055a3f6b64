"""The core's memory per connection stays bounded by its limits whatever the peer sends
(regressions for what the hostile clients found; sans-I/O, no server)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from dwebsocket.exceptions import PayloadTooBig
from dwebsocket.protocol.connection import Close, Connection, Event
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import encode_frame

LIMIT = 64 * 1024
KEY = b"\x01\x02\x03\x04"


def client_frame(opcode: int, payload: bytes, *, fin: bool, rsv1: bool = False) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask_key=KEY)


def feed_until_close(conn: Connection, data: bytes, chunk: int) -> tuple[list[Event], int]:
    """Feed ``data`` ``chunk`` bytes at a time until a Close event; returns the events
    and how many bytes were fed."""
    events: list[Event] = []
    fed = 0
    while fed < len(data):
        events += conn.receive_data(data[fed : fed + chunk])
        fed += chunk
        if any(isinstance(e, Close) for e in events):
            break
    return events, fed


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "deflate"])
def test_endless_empty_fragments_end_in_1009(compressed: bool) -> None:
    """Empty fragments add nothing to the message, but each costs a frame: a message
    made of them runs out of its wire budget (found by tests/hardening: before, the
    connection took 6-byte frames forever, keeping a list entry for each)."""
    deflate = PerMessageDeflate() if compressed else None
    conn = Connection(max_message_size=LIMIT, deflate=deflate)
    empty = client_frame(0x0, b"", fin=False)
    data = client_frame(0x2, b"", fin=False, rsv1=compressed) + empty * 100_000
    events, fed = feed_until_close(conn, data, 6 * 1000)
    assert events and isinstance(events[-1], Close) and events[-1].code == 1009
    assert isinstance(conn.error, PayloadTooBig)
    # The budget is the limit plus an eighth plus 4 KiB, 8 bytes a frame: ~9,700 frames.
    assert fed <= 6 * 11_000


def test_a_fragmented_message_of_the_full_size_in_64_byte_fragments_still_passes() -> None:
    """What the frame cost leaves legitimate senders: a message of exactly the limit in
    64-byte fragments (Autobahn's smallest) is accepted."""
    conn = Connection(max_message_size=LIMIT)
    payload = bytes(range(256)) * (LIMIT // 256)
    pieces = [payload[i : i + 64] for i in range(0, LIMIT, 64)]
    data = b"".join(
        client_frame(0x2 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )
    assert conn.receive_data(data) == [payload]


@pytest.mark.parametrize(
    ("opcode", "unit"),
    [(0x2, b"\xab"), (0x1, b"x"), (0x1, "ж".encode())],
    ids=["binary", "ascii", "cyrillic"],
)
def test_tiny_fragments_cost_about_their_size(traced: None, opcode: int, unit: bytes) -> None:
    """A message in 1-byte fragments is held in about its own size, not an object per
    fragment (before: ~41 bytes a fragment, 40 times the payload)."""
    conn = Connection(max_message_size=LIMIT)
    payload = unit * (6000 // len(unit))
    first = client_frame(opcode, payload[:1], fin=False)
    rest = b"".join(
        client_frame(0x0, payload[i : i + 1], fin=False) for i in range(1, len(payload))
    )
    before = tracemalloc.get_traced_memory()[0]
    assert conn.receive_data(first) == [] and conn.receive_data(rest) == []
    held = tracemalloc.get_traced_memory()[0] - before
    assert held < 4 * len(payload) + 4096, held
    [message] = conn.receive_data(client_frame(0x0, b"", fin=True))
    assert message == (payload.decode() if opcode == 0x1 else payload)
