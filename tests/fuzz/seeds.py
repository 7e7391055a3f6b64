"""Write the hand-made seeds of the fuzz corpus (``tests/fuzz/corpus/*/seed-*``)::

    python -m tests.fuzz.seeds

Valid inputs of every kind the targets read, so that fuzzing starts from deep inside
the parsers instead of from random bytes. The first bytes of a ``frames`` or ``deflate``
seed are its configuration (see ``tests.fuzz.targets``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from dwebsocket.protocol.connection import Connection
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import encode_frame
from dwebsocket.protocol.handshake import build_request, build_response, parse_request

CORPUS = Path(__file__).resolve().parent / "corpus"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"


def handshakes() -> dict[str, bytes]:
    seeds = {
        "plain": build_request("example.com", "/chat/", key=KEY),
        "everything": build_request(
            "example.com:8000",
            "/chat/?room=1",
            key=KEY,
            subprotocols=["chat", "superchat"],
            extensions="permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
            'permessage-deflate; server_no_context_takeover; client_no_context_takeover; x="y"',
            origin="https://example.com",
            extra_headers=[("Cookie", "a=b"), ("Sec-WebSocket-Version", "13")],
        ),
        "firefox": b"GET /ws/ HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: Mozilla/5.0\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:8000\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Key: "
        + KEY.encode()
        + b"\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "version-8": b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: " + KEY.encode() + b"\r\n\r\n",
    }
    return seeds


def responses() -> dict[str, bytes]:
    request = parse_request(
        "GET",
        "HTTP/1.1",
        {
            "host": "example.com",
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-version": "13",
            "sec-websocket-key": KEY,
            "sec-websocket-protocol": "chat",
        },
    )
    return {
        "101": build_response(
            request, subprotocol="chat", extensions="permessage-deflate; server_max_window_bits=12"
        ),
        "403": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope",
    }


def frame_streams() -> dict[str, bytes]:
    """``config byte, chunk byte, window byte, stream``: server side (masked frames), 64 KiB
    limit; the window byte 7 is 15 bits, with context takeover (see ``frames_config``)."""
    server, limit64k, limit1k, window15 = 0x00, 0x40, 0x30, 7

    def masked(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
        return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask_key=MASK)

    messages = (
        masked(1, "héllo ☃".encode())
        + masked(2, bytes(range(256)) * 2)
        + masked(9, b"ping")
        + masked(10, b"pong")
        + masked(1, b"frag", fin=False)
        + masked(9, b"")
        + masked(0, "mént".encode(), fin=False)
        + masked(0, b"ed")
        + masked(8, struct.pack("!H", 1000) + b"bye")
    )
    client = Connection(client=True, deflate=PerMessageDeflate(), max_message_size=None)
    compressed = client.send_text("compressed " * 50) + client.send_binary(bytes(3000))
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    part1 = deflater.compress(b"a" * 500) + deflater.flush(zlib.Z_SYNC_FLUSH)
    part2 = deflater.compress(b"b" * 500) + deflater.flush(zlib.Z_SYNC_FLUSH)
    fragmented_compressed = masked(1, part1, fin=False, rsv1=True) + masked(0, part2[:-4])
    # Without context takeover, window 8 (zlib's 9): a text message whose UTF-8 is cut
    # between fragments, a ping between them, then one compressed message exactly at the
    # 1 KiB limit and one a byte over.
    nct = PerMessageDeflate(local_no_context_takeover=True, local_max_window_bits=8)
    text = nct.compress(("é" * 300).encode())
    at_limit, over = nct.compress(b"z" * 1024), nct.compress(b"z" * 1025)
    interleaved = (
        masked(1, text[:7], fin=False, rsv1=True)
        + masked(9, b"between")
        + masked(0, text[7:])
        + masked(2, at_limit, rsv1=True)
        + masked(2, over, rsv1=True)
    )
    client_side = (
        encode_frame(1, b"from server")
        + encode_frame(2, bytes(200))
        + encode_frame(8, struct.pack("!H", 1001))
    )
    return {
        "messages": bytes([server | limit64k, 7, window15]) + messages,
        "messages-one-chunk": bytes([server | limit64k, 255, window15]) + messages,
        "deflate": bytes([server | 0x02 | limit64k, 13, window15]) + compressed,
        "deflate-fragments": bytes([server | 0x02 | limit64k, 64, window15])
        + fragmented_compressed,
        "deflate-no-context-window-8": bytes([server | 0x02 | limit1k, 1, 0x80]) + interleaved,
        "client-side": bytes([0x01 | limit64k, 5, window15]) + client_side,
        "pure-python-masking": bytes([server | 0x04 | 0x08 | limit64k, 3, window15]) + messages,
        "over-limit": bytes([server | 0x20, 200, window15]) + masked(2, bytes(2000)),
    }


def deflate_streams() -> dict[str, bytes]:
    encoder = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = encoder.compress(b"the quick brown fox " * 100) + encoder.flush(zlib.Z_SYNC_FLUSH)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bomb.compress(bytes(1 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = final.compress(b"final block") + final.flush(zlib.Z_FINISH)
    return {
        "text": bytes([0x33, 3]) + data[:-4],
        "bomb": bytes([0x34, 1]) + zeros[:-4],
        "final-block": bytes([0xB4, 0]) + ended,
    }


def main() -> None:
    for target, seeds in [
        ("handshake", handshakes()),
        ("response", responses()),
        ("frames", frame_streams()),
        ("deflate", deflate_streams()),
    ]:
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
