"""``dwebsocket.protocol.server.accept``: the pure part of accepting a handshake."""

from __future__ import annotations

import pytest

from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.handshake import HandshakeRequest, accept_key, parse_extensions
from dwebsocket.protocol.server import accept

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_accept_writes_the_101_and_opens_a_connection() -> None:
    request = HandshakeRequest(key=KEY, subprotocols=["chat", "v2"])
    accepted = accept(request, subprotocol="v2", max_message_size=10, max_frame_size=5)
    assert accepted.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}\r\n".encode() in accepted.response
    assert b"Sec-WebSocket-Protocol: v2\r\n" in accepted.response
    assert b"Sec-WebSocket-Extensions" not in accepted.response
    conn = accepted.connection
    assert (conn.max_message_size, conn.max_frame_size, conn.deflate) == (10, 5, None)
    assert accepted.compression is False


@pytest.mark.parametrize("compression", [True, False])
def test_accept_negotiates_deflate_unless_told_not_to(compression: bool) -> None:
    offer = parse_extensions(PerMessageDeflate.client_offer())
    accepted = accept(HandshakeRequest(key=KEY, extensions=offer), compression=compression)
    assert accepted.compression is compression
    assert (b"permessage-deflate" in accepted.response) is compression


def test_accept_refuses_a_subprotocol_not_offered() -> None:
    with pytest.raises(ValueError):
        accept(HandshakeRequest(key=KEY, subprotocols=["chat"]), subprotocol="other")
