"""Benchmark the sans-I/O core against websockets' and wsproto's, side by side.

    .venv/bin/python bench/core.py [--quick]

(a) echo of 32-byte masked text frames from a client, one frame per receive call:
    parse + unmask + UTF-8 validation + encoding the reply; microseconds per message.
(b) receiving 64 KiB masked binary frames: parse + unmask + emitting the message; MB/s.

Each figure is the best of several interleaved rounds (the least disturbed one).
websockets' sans-I/O layer leaves UTF-8 to its I/O layer, so its loop decodes and
re-encodes the text as its ``recv()``/``send()`` would. "dwebsocket (pure Python)"
forces the fallbacks (no ``_speedups``: masking and the receive loop's fast path). Runs
in well under a minute; prints, asserts nothing about speed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dwebsocket.protocol import connection as dws_connection
from dwebsocket.protocol import frames as dws_frames
from dwebsocket.protocol.connection import Connection

QUICK = "--quick" in sys.argv
SMALL_COUNT = 2_000 if QUICK else 20_000
LARGE_COUNT = 100 if QUICK else 1_000
ROUNDS = 3 if QUICK else 7

SMALL_TEXT = "x" * 28 + "éé"  # 32 bytes of UTF-8, not pure ASCII
LARGE = os.urandom(65536)


def client_frames(count: int, make: Callable[[Connection], bytes]) -> list[bytes]:
    """Masked frames as a client sends them, each with its own random key."""
    client = Connection(client=True, max_message_size=None)
    return [make(client) for _ in range(count)]


SMALL_FRAMES = client_frames(SMALL_COUNT, lambda c: c.send_text(SMALL_TEXT))
LARGE_FRAMES = client_frames(LARGE_COUNT, lambda c: c.send_binary(LARGE))
assert len(SMALL_FRAMES[0]) == 2 + 4 + 32

# -- the three implementations -------------------------------------------------------
# Each factory returns (echo_small, receive_large): functions over a list of frames.


def dwebsocket_impl() -> tuple[Callable[[list[bytes]], int], Callable[[list[bytes]], int]]:
    conn = Connection(max_message_size=None)

    def echo_small(frames: list[bytes]) -> int:
        receive, send_text, out = conn.receive_data, conn.send_text, 0
        for frame in frames:
            for event in receive(frame):
                out += len(send_text(event))  # type: ignore[arg-type]
        return out

    def receive_large(frames: list[bytes]) -> int:
        receive, got = conn.receive_data, 0
        for frame in frames:
            for event in receive(frame):
                got += len(event)  # type: ignore[arg-type]
        return got

    return echo_small, receive_large


def websockets_impl() -> tuple[Callable[[list[bytes]], int], Callable[[list[bytes]], int]]:
    from websockets.frames import Opcode
    from websockets.server import ServerProtocol

    proto = ServerProtocol(max_size=None)
    proto.receive_data(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = proto.events_received()
    proto.send_response(proto.accept(request))  # type: ignore[arg-type]
    proto.data_to_send()
    text = Opcode.TEXT

    def echo_small(frames: list[bytes]) -> int:
        receive, events, send_text, data_to_send = (
            proto.receive_data,
            proto.events_received,
            proto.send_text,
            proto.data_to_send,
        )
        out = 0
        for frame in frames:
            receive(frame)
            for event in events():
                if event.opcode is text:  # type: ignore[union-attr]
                    send_text(event.data.decode().encode())  # type: ignore[union-attr]
            out += sum(map(len, data_to_send()))
        return out

    def receive_large(frames: list[bytes]) -> int:
        receive, events, got = proto.receive_data, proto.events_received, 0
        for frame in frames:
            receive(frame)
            for event in events():
                got += len(event.data)  # type: ignore[union-attr]
        return got

    return echo_small, receive_large


def wsproto_impl() -> tuple[Callable[[list[bytes]], int], Callable[[list[bytes]], int]]:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = ws.events()
    assert isinstance(request, Request)
    ws.send(AcceptConnection())

    def echo_small(frames: list[bytes]) -> int:
        receive, events, send, out = ws.receive_data, ws.events, ws.send, 0
        for frame in frames:
            receive(frame)
            for event in events():
                if isinstance(event, TextMessage):
                    out += len(send(TextMessage(data=event.data)))
        return out

    def receive_large(frames: list[bytes]) -> int:
        receive, events, got = ws.receive_data, ws.events, 0
        for frame in frames:
            receive(frame)
            for event in events():
                if isinstance(event, BytesMessage):
                    got += len(event.data)
        return got

    return echo_small, receive_large


def timed(run: Callable[[list[bytes]], int], frames: list[bytes], expect: int) -> float:
    start = time.perf_counter()
    result = run(frames)
    elapsed = time.perf_counter() - start
    assert result == expect, (result, expect)  # every message went through
    return elapsed


def main() -> None:
    accelerated = dws_frames._c_apply_mask is not None
    names = ["dwebsocket", "dwebsocket (pure Python)", "websockets", "wsproto"]
    factories = [dwebsocket_impl, dwebsocket_impl, websockets_impl, wsproto_impl]
    runners = [factory() for factory in factories]
    small_expect = SMALL_COUNT * (2 + 32)
    large_expect = LARGE_COUNT * len(LARGE)
    best_small = [float("inf")] * len(names)
    best_large = [float("inf")] * len(names)
    # Rounds interleave the implementations, so that a burst of load on the machine
    # hits all of them rather than one.
    for _ in range(ROUNDS):
        for i, (name, (echo_small, receive_large)) in enumerate(zip(names, runners, strict=True)):
            saved = dws_connection.unmask, dws_connection._scan
            if "pure" in name:
                dws_connection.unmask, dws_connection._scan = dws_frames._py_unmask, None
            try:
                small = timed(echo_small, SMALL_FRAMES, small_expect)
                large = timed(receive_large, LARGE_FRAMES, large_expect)
            finally:
                dws_connection.unmask, dws_connection._scan = saved
            best_small[i] = min(best_small[i], small)
            best_large[i] = min(best_large[i], large)
    rows = [
        (name, small / SMALL_COUNT * 1e6, large_expect / large / 1e6)
        for name, small, large in zip(names, best_small, best_large, strict=True)
    ]

    ref_small = next(r[1] for r in rows if r[0] == "websockets")
    ref_large = next(r[2] for r in rows if r[0] == "websockets")
    print(f"Python {sys.version.split()[0]}, {SMALL_COUNT} small / {LARGE_COUNT} large frames,")
    print(f"best of {ROUNDS} rounds; dwebsocket C accelerator built: {accelerated}\n")
    header = (
        f"{'implementation':<26} {'32 B text echo':>15} {'vs websockets':>14}"
        f" {'64 KiB receive':>15} {'vs websockets':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, small_us, large_mbs in rows:
        print(
            f"{name:<26} {small_us:>10.2f} µs/msg {small_us / ref_small:>13.2f}x"
            f" {large_mbs:>10.0f} MB/s {large_mbs / ref_large:>13.2f}x"
        )
    print("\nGoals: 32 B echo <= 0.50x websockets' cost; 64 KiB receive >= 0.50x its MB/s.")


if __name__ == "__main__":
    main()
