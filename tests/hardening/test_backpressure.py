"""The default backend reads no faster than the view consumes (regressions for what the
hostile clients found; in-process, over a socketpair).

Before: ``count_messages()`` / ``has_messages()`` read up to 1 MiB from the socket per
call even with messages waiting, so a polling view buffered a flood without bound; and
one 64 KiB read of small compressed frames was expanded whole (780 messages of 64 KiB).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

from django.http import HttpRequest
from django.test import override_settings

from dwebsocket import require_websocket
from dwebsocket.backends import BACKLOG_MESSAGES
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.frames import encode_frame
from tests.inprocess import Session
from tests.wire import TIMEOUT

KEY = b"\x0a\x0b\x0c\x0d"
#: One read's worth of 1-byte binary messages (7 bytes each on the wire).
ONE_READ = 65536 // 7 + 1


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the client never answers the view's close
def test_a_polling_view_is_not_flooded() -> None:
    """100,000 messages sent at once; the view only counts them: the backend stops
    reading at its backlog (plus one read), and every message still arrives, in order."""
    total = 100_000
    seen: dict[str, Any] = {}
    counted = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket  # type: ignore[attr-defined]
        ws.accept()
        most = 0
        for _ in range(200):  # the flood keeps arriving while the view polls
            most = max(most, ws.count_messages())
            threading.Event().wait(0.002)
        seen["most"] = most
        counted.set()
        got: list[object] = []
        while len(got) < total:
            message = ws.wait(TIMEOUT)
            if message is None:
                break
            got.append(message)
        seen["in order"] = got == [i.to_bytes(3, "big") for i in range(total)]

    with Session(view) as session:
        session.expect_101()
        frames = b"".join(
            encode_frame(0x2, i.to_bytes(3, "big"), mask_key=KEY) for i in range(total)
        )
        sender = threading.Thread(target=session.client.sock.sendall, args=(frames,))
        sender.start()
        assert counted.wait(TIMEOUT)
        sender.join(TIMEOUT)
        session.finish()
    assert seen["most"] <= BACKLOG_MESSAGES + ONE_READ, seen
    assert seen["in order"]


@override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=64 * 1024, WEBSOCKET_CLOSE_TIMEOUT=0.2)
def test_one_read_of_compressed_frames_is_not_expanded_whole() -> None:
    """780 messages of 64 KiB of zeros in 64 KiB of deflate: what waits for the view
    stays near the backlog's 1 MiB, and all 780 arrive."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = (encoder.compress(bytes(64 * 1024 - 1)) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]
    count = 65536 // (len(body) + 8)
    burst = encode_frame(0x2, body, rsv1=True, mask_key=KEY) * count
    seen: dict[str, Any] = {}
    ready = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ws = request.websocket  # type: ignore[attr-defined]
        ws.accept()
        ready.wait(TIMEOUT)
        seen["waiting"] = ws.count_messages()
        got = 0
        while got < count and ws.wait(TIMEOUT) == bytes(64 * 1024 - 1):
            got += 1
        seen["got"] = got

    offer = f"{PerMessageDeflate.client_offer()}; client_no_context_takeover"
    with Session(view, headers={"Sec-WebSocket-Extensions": offer}) as session:
        headers = session.expect_101()
        assert "permessage-deflate" in headers["sec-websocket-extensions"]
        session.client.sock.sendall(burst)
        ready.set()
        session.finish()
    # 1 MiB of backlog is 16 such messages; a 512-byte slice may complete a few more.
    assert seen["waiting"] <= 16 + 512 // len(body) + 1, seen
    assert seen["got"] == count
