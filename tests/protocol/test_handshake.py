"""Opening handshake: validation, 101 response, client side (protocol.handshake)."""

from __future__ import annotations

import base64

import pytest

from dwebsocket.exceptions import InvalidHandshake, UnsupportedVersion
from dwebsocket.protocol.handshake import (
    HandshakeRequest,
    accept_key,
    build_request,
    build_response,
    generate_key,
    parse_extensions,
    parse_request,
    parse_response,
    parse_token_list,
    quoted,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def headers(**overrides: str | None) -> dict[str, str]:
    """A valid upgrade request's headers; ``name=None`` removes one (``_`` for ``-``)."""
    base: dict[str, str | None] = {
        "host": "example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
    }
    for name, value in overrides.items():
        base[name.replace("_", "-")] = value
    return {k: v for k, v in base.items() if v is not None}


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == ACCEPT


def test_parse_minimal_request() -> None:
    request = parse_request("GET", "HTTP/1.1", headers())
    assert request == HandshakeRequest(
        key=KEY, subprotocols=[], extensions=[], origin=None, host="example.com"
    )


def test_parse_full_request() -> None:
    request = parse_request(
        "GET",
        "HTTP/1.1",
        headers(
            upgrade="WebSocket",
            connection="keep-alive, Upgrade",  # Firefox
            origin="https://example.com",
            sec_websocket_protocol="chat, , superchat",
            sec_websocket_extensions=(
                "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame"
            ),
            content_length="0",
        ),
    )
    assert request.origin == "https://example.com"
    assert request.subprotocols == ["chat", "superchat"]
    assert request.extensions == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("x-webkit-deflate-frame", []),
    ]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        # RFC 6455 4.1 (the client sends the server's authority), RFC 9112 3.2 (a server
        # MUST answer 400 to an HTTP/1.1 request without Host, with more than one, or with
        # an invalid one). Servers join repeated headers with a comma.
        (None, "missing Host header"),
        ("", "missing Host header"),
        (" \t", "missing Host header"),
        ("example.com,example.com", "more than one Host header"),
        ("example.com, evil.example", "more than one Host header"),
        ("exa mple.com", "invalid Host header"),
        ("user@example.com", "invalid Host header"),
        ("example.com/path", "invalid Host header"),
        ("example.com:80x", "invalid Host header"),
        ("[::1", "invalid Host header"),
        ("\xe9.example", "invalid Host header"),
    ],
)
def test_host_is_required_and_single(host: str | None, reason: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_request("GET", "HTTP/1.1", headers(host=host))
    assert type(info.value) is InvalidHandshake
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    "host",
    ["example.com", "EXAMPLE.com:8000", "127.0.0.1:1", "[::1]:8000", "[::1]", "a_b.local.", " x "],
)
def test_host_forms_accepted(host: str) -> None:
    assert parse_request("GET", "HTTP/1.1", headers(host=host)).host == host.strip()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.2", " HTTP/1.10"])
def test_http_versions_accepted(version: str) -> None:
    # Accepted means the whole request read as with HTTP/1.1 (RFC 9112 2.3: a later minor
    # version as the highest one known), and answered with the key's accept value.
    request = parse_request("GET", version, headers(origin="https://example.com"))
    assert request == HandshakeRequest(key=KEY, origin="https://example.com", host="example.com")
    assert f"Sec-WebSocket-Accept: {ACCEPT}\r\n".encode() in build_response(request)
    assert build_response(request).startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize("version", ["HTTP/2", "HTTP/2.0", "HTTP/3.0", " HTTP/10.0"])
def test_a_request_line_saying_http_2_is_refused(version: str) -> None:
    # An HTTP/2 request has no request line (a WebSocket there is an extended CONNECT, RFC
    # 8441): one saying HTTP/2 was accepted as "later than 1.1", and uWSGI, which writes
    # the 101's status line with the request's version, answered "HTTP/2.0 101".
    expected = rf"HTTP/1\.1 required, got '{version}' \(over HTTP/2, .* RFC 8441\)"
    with pytest.raises(InvalidHandshake, match=expected):
        parse_request("GET", version, headers())


@pytest.mark.parametrize(
    "method,version,overrides,reason",
    [
        ("POST", "HTTP/1.1", {}, "method must be GET"),
        ("GET", "HTTP/1.0", {}, "HTTP/1.1 required, got 'HTTP/1.0'"),
        ("GET", "HTTP/0.9", {}, "HTTP/1.1 required, got 'HTTP/0.9'"),
        ("GET", "garbage", {}, "HTTP/1.1 required, got 'garbage'"),
        # int() refuses more than 4300 digits with a ValueError (a 500), as for
        # Content-Length below; RFC 7230 2.6 allows one digit each.
        ("GET", "HTTP/" + "1" * 5000, {}, "HTTP/1.1 required, got 'HTTP/111"),
        ("GET", "HTTP/1." + "1" * 5000, {}, "HTTP/1.1 required, got 'HTTP/1.111"),
        ("GET", "HTTP/1.1", {"upgrade": None}, "missing Upgrade header"),
        ("GET", "HTTP/1.1", {"upgrade": "h2c"}, "Upgrade header must contain 'websocket'"),
        ("GET", "HTTP/1.1", {"connection": None}, "missing Connection header"),
        ("GET", "HTTP/1.1", {"connection": "keep-alive"}, "Connection header must contain"),
        ("GET", "HTTP/1.1", {"sec_websocket_key": None}, "missing Sec-WebSocket-Key"),
        ("GET", "HTTP/1.1", {"sec_websocket_key": "short"}, "invalid Sec-WebSocket-Key"),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_key": base64.b64encode(b"x" * 15).decode()},
            "invalid Sec-WebSocket-Key",
        ),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_key": base64.b64encode(b"x" * 17).decode()},
            "invalid Sec-WebSocket-Key",
        ),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_key": "dGhlIHNhbXBsZSBub25jZQ"},
            "invalid Sec-WebSocket-Key",
        ),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_key": "dGhlIHNhbXBsZSBub25jZ*=="},
            "invalid Sec-WebSocket-Key",
        ),
        ("GET", "HTTP/1.1", {"sec_websocket_key": "é" * 24}, "invalid Sec-WebSocket-Key"),
        ("GET", "HTTP/1.1", {"content_length": "5"}, "must not have a body"),
        ("GET", "HTTP/1.1", {"content_length": "x"}, "invalid Content-Length"),
        # str.isdigit() takes these, int() does not: they were a ValueError (a 500).
        ("GET", "HTTP/1.1", {"content_length": "\xb2"}, "invalid Content-Length"),
        ("GET", "HTTP/1.1", {"content_length": "1\xb9"}, "invalid Content-Length"),
        ("GET", "HTTP/1.1", {"content_length": "1" * 5000}, "must not have a body"),
        ("GET", "HTTP/1.1", {"transfer_encoding": "chunked"}, "must not have a body"),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_protocol": "chat, sup@r"},
            "invalid Sec-WebSocket-Protocol header",
        ),
        (
            "GET",
            "HTTP/1.1",
            {"sec_websocket_extensions": "permessage-deflate;"},
            "invalid Sec-WebSocket-Extensions header",
        ),
    ],
)
def test_invalid_requests_400(
    method: str, version: str, overrides: dict[str, str | None], reason: str
) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_request(method, version, headers(**overrides))
    assert type(info.value) is InvalidHandshake
    assert info.value.status == 400
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        # RFC 6455 11.3.5: it MUST NOT appear more than once; servers join repeated
        # headers with a comma. A client sends one version (4.1), never a list.
        ("13, 8", "more than one Sec-WebSocket-Version header"),
        ("13,13", "more than one Sec-WebSocket-Version header"),
        ("8, 13", "more than one Sec-WebSocket-Version header"),
        # Not a version (RFC 6455 4.3: 0 to 255, no leading zero).
        ("", "invalid Sec-WebSocket-Version"),
        ("abc", "invalid Sec-WebSocket-Version"),
        ("013", "invalid Sec-WebSocket-Version"),
        ("1.3", "invalid Sec-WebSocket-Version"),
        ("256", "invalid Sec-WebSocket-Version"),
        ("1" * 5000, "invalid Sec-WebSocket-Version"),
        ("\u0661\u0663", "invalid Sec-WebSocket-Version"),  # Arabic-Indic digits: isdigit()
    ],
)
def test_malformed_versions_400(version: str, reason: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_request("GET", "HTTP/1.1", headers(sec_websocket_version=version))
    assert type(info.value) is InvalidHandshake
    assert info.value.status == 400
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize("version", [None, "8", "12", "14", "0", "255", " 7 "])
def test_unsupported_versions_426(version: str | None) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        parse_request("GET", "HTTP/1.1", headers(sec_websocket_version=version))
    assert info.value.status == 426
    assert info.value.headers == [("Sec-WebSocket-Version", "13")]
    assert "Sec-WebSocket-Version" in info.value.reason


def test_token_list() -> None:
    assert parse_token_list(" a ,b,,\tc ", "X") == ["a", "b", "c"]
    assert parse_token_list("", "X") == []
    with pytest.raises(InvalidHandshake, match="invalid X header"):
        parse_token_list("a b", "X")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("foo", [("foo", [])]),
        ("foo, bar", [("foo", []), ("bar", [])]),
        ("foo;a", [("foo", [("a", None)])]),
        ("foo ; a = 1 ;b", [("foo", [("a", "1"), ("b", None)])]),
        ('foo; a="1"', [("foo", [("a", "1")])]),
        ('foo; a="x\\y"', [("foo", [("a", "xy")])]),
        (" ,foo,, bar;x=y , ", [("foo", []), ("bar", [("x", "y")])]),
        (
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
            "permessage-deflate",
            [
                (
                    "permessage-deflate",
                    [("client_max_window_bits", None), ("server_max_window_bits", "10")],
                ),
                ("permessage-deflate", []),
            ],
        ),
        ("", []),
    ],
)
def test_parse_extensions(value: str, expected: object) -> None:
    assert parse_extensions(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        ";",
        "foo;",
        "foo;;a",
        "foo bar",
        "foo; a=",
        "foo; a=b c",
        'foo; a="unterminated',
        'foo; a="two words"',  # a quoted value must be a token once unquoted
        'foo; a=""',
        "fo@o",
        "foo; =1",
        "foo; a==1",
    ],
)
def test_parse_extensions_malformed(value: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_extensions(value)
    assert info.value.status == 400
    assert "Sec-WebSocket-Extensions" in info.value.reason


def test_build_response_exact_bytes() -> None:
    request = parse_request("GET", "HTTP/1.1", headers(sec_websocket_protocol="chat, superchat"))
    assert build_response(request) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    assert build_response(
        request,
        subprotocol="chat",
        extensions="permessage-deflate",
        extra_headers=[("X-Served-By", "dwebsocket")],
    ) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"X-Served-By: dwebsocket\r\n"
        b"\r\n"
    )


def test_build_response_refuses_caller_mistakes() -> None:
    request = parse_request("GET", "HTTP/1.1", headers(sec_websocket_protocol="chat"))
    with pytest.raises(ValueError, match="not offered"):
        build_response(request, subprotocol="other")
    with pytest.raises(ValueError):
        build_response(request, extra_headers=[("X-A", "1\r\nSet-Cookie: x=1")])
    with pytest.raises(ValueError):
        build_response(request, extra_headers=[("Bad Name", "1")])


def test_generate_key() -> None:
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 16
    assert key != generate_key()


def test_build_request_exact_bytes() -> None:
    assert build_request("example.com", "/chat?x=1", key=KEY) == (
        b"GET /chat?x=1 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )
    full = build_request(
        "example.com:8000",
        "/",
        key=KEY,
        subprotocols=["chat", "superchat"],
        extensions="permessage-deflate; client_max_window_bits",
        origin="http://example.com",
        extra_headers=[("Cookie", "a=b")],
    )
    assert full.endswith(
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Origin: http://example.com\r\n"
        b"Cookie: a=b\r\n"
        b"\r\n"
    )
    with pytest.raises(ValueError):
        build_request("h", "no-slash", key=KEY)
    with pytest.raises(ValueError):
        build_request("h", "/a b", key=KEY)


def request_headers(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """Parse a request head the way a WSGI server would (lower-case names, joined)."""
    head = raw.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")
    method, _path, version = head[0].split(" ")
    result: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.lower(), value.strip()
        result[name] = f"{result[name]}, {value}" if name in result else value
    return method, version, result


def test_client_and_server_sides_agree() -> None:
    key = generate_key()
    raw = build_request("h", "/", key=key, subprotocols=["a", "b"])
    request = parse_request(*request_headers(raw))
    response = build_response(request, subprotocol="b") + b"\x81\x00"
    assert parse_response(response[:10], key) is None
    status, response_headers, consumed = parse_response(response, key)  # type: ignore[misc]
    assert status == 101
    assert ("sec-websocket-protocol", "b") in response_headers
    assert response[consumed:] == b"\x81\x00"


def test_parse_response_non_101_unchecked() -> None:
    raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!"
    assert parse_response(raw, KEY) == (403, [("content-length", "3")], len(raw) - 3)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: wrong\r\n\r\n",
            "Sec-WebSocket-Accept",
        ),
        (
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "Sec-WebSocket-Accept",
        ),
        (
            b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n",
            "Upgrade",
        ),
        (
            b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n",
            "Connection",
        ),
        (b"HTTP/1.1 1O1 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 101 OK\r\nno colon\r\n\r\n", "header line"),
    ],
)
def test_parse_response_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidHandshake, match=reason):
        parse_response(raw, KEY)


def test_parse_response_head_too_large() -> None:
    with pytest.raises(InvalidHandshake, match="too large"):
        parse_response(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 20000, KEY)


# -- against an independent implementation: websockets' sans-I/O client ---------------


def test_websockets_client_handshake() -> None:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri("ws://example.com/chat"), subprotocols=["chat"])  # type: ignore[list-item]
    client.send_request(client.connect())
    raw = client.data_to_send()[0]
    request = parse_request(*request_headers(raw))
    assert request.subprotocols == ["chat"]
    assert request.host == "example.com"
    client.receive_data(build_response(request, subprotocol="chat"))
    (response,) = client.events_received()
    assert client.handshake_exc is None
    assert client.subprotocol == "chat"
    assert response.status_code == 101  # type: ignore[union-attr]


def test_quoted_cuts_a_long_value() -> None:
    assert quoted("a" * 100) == repr("a" * 100)
    assert quoted("a" * 101) == repr("a" * 100) + "... (101 characters)"


def test_quoted_escapes_what_is_not_ascii() -> None:
    # A header's bytes reach Django decoded as latin-1 (PEP 3333): repr() kept 0xA1-0xFF
    # as those letters, so a UTF-8 "ü" (C3 BC) was quoted as 'Ã¼' in the refusal (sent as
    # UTF-8 again) and the log. Escaped, the quote shows the bytes the client sent.
    assert quoted("http://\xc3\xbc.example") == "'http://\\xc3\\xbc.example'"
    assert quoted("\xff\x80\xa0\u2028") == "'\\xff\\x80\\xa0\\u2028'"
    assert quoted("é" * 101) == "'" + "\\xe9" * 100 + "'... (101 characters)"


@pytest.mark.parametrize(
    "name",
    [
        "upgrade",
        "connection",
        "sec_websocket_key",
        "sec_websocket_version",
        "content_length",
        "sec_websocket_protocol",
        "sec_websocket_extensions",
    ],
)
def test_a_refusal_quotes_a_64k_value_in_part(name: str) -> None:
    """Whichever header is at fault, the refusal's reason (the 400 or 426 body, the log
    line) holds its first 100 characters and its length, not 64 KiB."""
    value = "@" * 65_536
    with pytest.raises(InvalidHandshake) as info:
        parse_request("GET", "HTTP/1.1", headers(**{name: value}))
    assert f"{value[:100]!r}... (65536 characters)" in info.value.reason
    assert len(info.value.reason) < 250
