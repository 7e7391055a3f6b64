"""The opening handshake (RFC 6455 4): request validation and the 101 response.

Server side: :func:`parse_request` checks an upgrade request and :func:`build_response`
writes the 101. Client side (for ``dwebsocket.testing``): :func:`build_request` and
:func:`parse_response`. Header values are parsed with the RFC 7230 list rules that
RFC 6455 4.1 and 9.1 refer to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..exceptions import InvalidHandshake, UnsupportedVersion

__all__ = [
    "GUID",
    "ExtensionOffer",
    "HandshakeRequest",
    "accept_key",
    "build_request",
    "build_response",
    "check_host",
    "check_no_body",
    "generate_key",
    "parse_extensions",
    "parse_request",
    "parse_response",
    "parse_token_list",
    "quoted",
]

#: The magic string of RFC 6455 1.3, appended to the key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: One parsed extension: ``(name, [(param, value or None), ...])``.
ExtensionOffer = tuple[str, list[tuple[str, "str | None"]]]

# RFC 7230 3.2.6: token = 1*tchar; quoted-string with quoted-pair.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x09\x20-\x7e\x80-\xff])*)"')
_OWS = re.compile(r"[ \t]*")
_UNQUOTE = re.compile(r"\\(.)")
_DIGITS = re.compile(r"[0-9]+")
# RFC 6455 4.3: version = DIGIT | NZDIGIT DIGIT | ... (0 to 255, no leading zero).
_VERSION = re.compile(r"0|[1-9][0-9]{0,2}")
# RFC 9110 7.2: Host = uri-host [":" port], uri-host as in RFC 3986 3.2.2 (an IP-literal
# in brackets, or a reg-name / IPv4 address), without the comma of a reg-name's sub-delims:
# servers join repeated headers with one.
_HOST = re.compile(r"(?:\[[0-9A-Za-z:._~!$&'()*+;=%-]+\]|[0-9A-Za-z._~!$&'()*+;=%-]+)(?::[0-9]*)?")
# RFC 7230 3.2: a header value must not contain CR, LF or NUL (response splitting).
_BAD_VALUE = re.compile(r"[\x00\r\n]")

_MAX_RESPONSE_HEAD = 65536

#: How many characters of a header value a refusal quotes (its 400 body, the log line):
#: enough to see what was wrong, never an echo of a 64 KiB header.
QUOTED_MAX = 100


def quoted(value: str) -> str:
    """``ascii(value)`` for a refusal's reason, cut after ``QUOTED_MAX`` characters (then
    followed by the value's length). ASCII, not ``repr()``: a header's bytes arrive
    decoded as latin-1 (PEP 3333), and a UTF-8 "ü" would read "Ã¼"; escaped, the quote
    shows the bytes the client sent (``'\\xc3\\xbc'``), as the log escapes a path."""
    if len(value) <= QUOTED_MAX:
        return ascii(value)
    return f"{value[:QUOTED_MAX]!a}... ({len(value)} characters)"


@dataclass
class HandshakeRequest:
    """A validated upgrade request (RFC 6455 4.2.1).

    ``subprotocols`` and ``extensions`` are in the client's order of preference.
    """

    key: str
    subprotocols: list[str] = field(default_factory=list)
    extensions: list[ExtensionOffer] = field(default_factory=list)
    origin: str | None = None
    host: str | None = None


def parse_token_list(value: str, header: str) -> list[str]:
    """Return the tokens of a comma-separated ``1#token`` header value (RFC 7230 7).

    Empty list elements are ignored, as RFC 7230 7 requires. Raises ``InvalidHandshake``
    (400) naming ``header`` if an element is not a token.
    """
    tokens = []
    for item in value.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        if not _TOKEN.fullmatch(item):
            raise InvalidHandshake(f"invalid {header} header: {quoted(value)}")
        tokens.append(item)
    return tokens


def parse_extensions(value: str) -> list[ExtensionOffer]:
    """Parse a ``Sec-WebSocket-Extensions`` value (RFC 6455 9.1).

    Returns ``[(name, [(param, value or None), ...]), ...]`` in order; quoted parameter
    values are unquoted. Raises ``InvalidHandshake`` (400) if the value is malformed,
    including a quoted value that is not a token once unquoted.
    """

    def fail() -> InvalidHandshake:
        return InvalidHandshake(f"invalid Sec-WebSocket-Extensions header: {quoted(value)}")

    result: list[ExtensionOffer] = []
    pos, end = 0, len(value)
    while True:
        # Skip OWS and empty list elements.
        while pos < end and value[pos] in " \t,":
            pos += 1
        if pos == end:
            return result
        match = _TOKEN.match(value, pos)
        if match is None:
            raise fail()
        name, pos = match.group(), match.end()
        params: list[tuple[str, str | None]] = []
        while True:
            pos = _OWS.match(value, pos).end()  # type: ignore[union-attr]
            if pos == end or value[pos] == ",":
                break
            if value[pos] != ";":
                raise fail()
            pos = _OWS.match(value, pos + 1).end()  # type: ignore[union-attr]
            match = _TOKEN.match(value, pos)
            if match is None:
                raise fail()
            param, pos = match.group(), match.end()
            pos = _OWS.match(value, pos).end()  # type: ignore[union-attr]
            param_value: str | None = None
            if pos < end and value[pos] == "=":
                pos = _OWS.match(value, pos + 1).end()  # type: ignore[union-attr]
                match = _TOKEN.match(value, pos)
                if match is not None:
                    param_value = match.group()
                else:
                    match = _QUOTED.match(value, pos)
                    if match is None:
                        raise fail()
                    param_value = _UNQUOTE.sub(r"\1", match.group(1))
                    # RFC 6455 9.1: the unescaped value must still be a token.
                    if not _TOKEN.fullmatch(param_value):
                        raise fail()
                pos = match.end()
            params.append((param, param_value))
        result.append((name, params))


def _has_token(value: str, token: str) -> bool:
    return any(item.strip(" \t").lower() == token for item in value.split(","))


def _check_http_version(http_version: str) -> None:
    """Raise ``InvalidHandshake`` (400) unless ``http_version`` (the request line's) is
    HTTP/1.1, or a later 1.x read as 1.1 (RFC 9112 2.3). RFC 6455 4.1 asks for "at least
    1.1", but the major version names the message syntax: a request line saying HTTP/2 is
    no HTTP/2 request (over HTTP/2 a WebSocket opens with an extended CONNECT, RFC 8441,
    which ASGI servers take themselves), and uWSGI would answer its 101 as "HTTP/2.0"."""
    # At most 9 digits: int() refuses more than 4300 with a ValueError (RFC 7230 2.6 has 1).
    match = re.fullmatch(r"HTTP/([0-9]{1,9})(?:\.([0-9]{1,9}))?", http_version.strip())
    if match is not None and int(match.group(1)) == 1 and int(match.group(2) or 0) >= 1:
        return
    reason = f"HTTP/1.1 required, got {quoted(http_version)}"
    if match is not None and int(match.group(1)) >= 2:
        reason += " (over HTTP/2, a WebSocket opens with an extended CONNECT: RFC 8441)"
    raise InvalidHandshake(reason)


def check_host(value: str | None) -> str:
    """Return the ``Host`` header's value (``value``, None without one), stripped.

    RFC 6455 4.1 makes it part of the handshake, and RFC 9112 3.2 says a server MUST
    answer 400 to a request without one, with more than one, or with an invalid one; no
    WSGI server refuses the first (and only gunicorn the second): they join repeated
    headers with a comma, which no host name holds. Raises ``InvalidHandshake`` (400)."""
    host = (value or "").strip(" \t")
    if not host:
        raise InvalidHandshake("missing Host header")
    if "," in host:
        raise InvalidHandshake(f"more than one Host header: {quoted(host)}")
    if not _HOST.fullmatch(host):
        raise InvalidHandshake(f"invalid Host header {quoted(host)}")
    return host


def check_no_body(headers: Mapping[str, str]) -> None:
    """Raise ``InvalidHandshake`` (400) if ``headers`` (as :func:`parse_request` takes
    them) announce a body: a GET upgrade carries none, and one would be read as WebSocket
    frames. Also for a ``websocket`` scope, whose ASGI server may not check it."""
    content_length = headers.get("content-length")
    if content_length is not None:
        # Digits read without int(): str.isdigit() also takes "²" (a latin-1 byte), and
        # int() refuses it, or more than 4300 digits, with a ValueError (a 500).
        digits = content_length.strip(" \t")
        if not _DIGITS.fullmatch(digits):
            raise InvalidHandshake(f"invalid Content-Length {quoted(content_length)}")
        if digits.strip("0"):
            raise InvalidHandshake("an upgrade request must not have a body")
    if headers.get("transfer-encoding") is not None:
        raise InvalidHandshake("an upgrade request must not have a body (Transfer-Encoding)")


def parse_request(method: str, http_version: str, headers: Mapping[str, str]) -> HandshakeRequest:
    """Validate an upgrade request (RFC 6455 4.2.1) and return what the server needs.

    ``headers`` maps lower-case header names to values, repeated headers joined with
    ``", "``. Raises ``InvalidHandshake`` (answer 400 with its ``reason``) for a malformed
    request (``Sec-WebSocket-Version`` repeated or not a version included),
    ``UnsupportedVersion`` (answer 426 with its ``headers``) when ``Sec-WebSocket-Version``
    is missing or another version than 13. Does not check the Origin.
    """
    if method != "GET":
        raise InvalidHandshake("method must be GET")
    _check_http_version(http_version)

    host = check_host(headers.get("host"))
    upgrade = headers.get("upgrade")
    if upgrade is None:
        raise InvalidHandshake("missing Upgrade header")
    if not _has_token(upgrade, "websocket"):
        raise InvalidHandshake(f"Upgrade header must contain 'websocket', got {quoted(upgrade)}")
    connection = headers.get("connection")
    if connection is None:
        raise InvalidHandshake("missing Connection header")
    if not _has_token(connection, "upgrade"):
        raise InvalidHandshake(
            f"Connection header must contain 'Upgrade', got {quoted(connection)}"
        )

    # RFC 6455 4.2.2: answer a version we do not speak with 426 and the one we do; a
    # client without one (before RFC 6455) learns it too. Two versions, or something that
    # is no version, is a malformed request: 400, as for the other headers (11.3.5: the
    # header MUST NOT appear more than once; servers join repeated headers with a comma).
    version = headers.get("sec-websocket-version")
    if version is None:
        raise UnsupportedVersion("missing Sec-WebSocket-Version header")
    version = version.strip(" \t")
    if "," in version:
        raise InvalidHandshake(f"more than one Sec-WebSocket-Version header: {quoted(version)}")
    if not _VERSION.fullmatch(version) or int(version) > 255:
        raise InvalidHandshake(f"invalid Sec-WebSocket-Version {quoted(version)}")
    if version != "13":
        raise UnsupportedVersion(
            f"unsupported Sec-WebSocket-Version {quoted(version)}, expected 13"
        )

    key = headers.get("sec-websocket-key")
    if key is None:
        raise InvalidHandshake("missing Sec-WebSocket-Key")
    key = key.strip(" \t")
    try:
        raw_key = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw_key = b""
    if len(raw_key) != 16:
        raise InvalidHandshake(
            f"invalid Sec-WebSocket-Key {quoted(key)}: must be 16 bytes encoded in base64"
        )

    check_no_body(headers)

    protocols = headers.get("sec-websocket-protocol")
    subprotocols = (
        parse_token_list(protocols, "Sec-WebSocket-Protocol") if protocols is not None else []
    )
    extensions_value = headers.get("sec-websocket-extensions")
    extensions = parse_extensions(extensions_value) if extensions_value is not None else []

    return HandshakeRequest(
        key=key,
        subprotocols=subprotocols,
        extensions=extensions,
        origin=headers.get("origin"),
        host=host,
    )


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _header_lines(headers: Iterable[tuple[str, str]]) -> list[str]:
    lines = []
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return lines


def build_response(
    request: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return the complete ``101 Switching Protocols`` response, blank line included.

    ``subprotocol`` must be one the client offered and ``extensions`` the negotiated
    ``Sec-WebSocket-Extensions`` value (see ``PerMessageDeflate.negotiate``). Raises
    ``ValueError`` otherwise, or for a header that would break the response.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(request.key)),
    ]
    if subprotocol is not None:
        if subprotocol not in request.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    lines = ["HTTP/1.1 101 Switching Protocols\r\n", *_header_lines(headers), "\r\n"]
    return "".join(lines).encode("latin-1")


def generate_key() -> str:
    """Return a fresh random ``Sec-WebSocket-Key`` (RFC 6455 4.1: 16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def build_request(
    host: str,
    path: str,
    *,
    key: str,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    origin: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return a client's upgrade request (RFC 6455 4.1), blank line included.

    Raises ``ValueError`` for a path or header that would break the request.
    """
    if not path.startswith("/") or _BAD_VALUE.search(path) or " " in path:
        raise ValueError(f"invalid request path {path!r}")
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if subprotocols:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    if origin is not None:
        headers.append(("Origin", origin))
    headers.extend(extra_headers)
    lines = [f"GET {path} HTTP/1.1\r\n", *_header_lines(headers), "\r\n"]
    return "".join(lines).encode("latin-1")


def parse_response(data: bytes, key: str) -> tuple[int, list[tuple[str, str]], int] | None:
    """Parse the head of the server's answer to :func:`build_request`.

    Returns None while ``data`` does not hold the whole header block yet, else
    ``(status, headers, consumed)``: header names lower-cased, in order; ``consumed`` is
    the length of the head (a body or the first frames may follow). For a 101, checks
    ``Upgrade``, ``Connection`` and ``Sec-WebSocket-Accept`` (RFC 6455 4.2.2 5.) and raises
    ``InvalidHandshake`` if one is wrong; other statuses are returned unchecked.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > _MAX_RESPONSE_HEAD:
            raise InvalidHandshake("response header block is too large")
        return None
    head = data[:end].decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    match = re.fullmatch(r"HTTP/(\d+\.\d+) (\d{3})(?: .*)?", status_line)
    if match is None:
        raise InvalidHandshake(f"invalid status line {quoted(status_line)}")
    status = int(match.group(2))
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise InvalidHandshake(f"invalid header line {quoted(line)}")
        headers.append((name.lower(), value.strip(" \t")))
    if status == 101:
        joined: dict[str, str] = {}
        for name, value in headers:
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        if not _has_token(joined.get("upgrade", ""), "websocket"):
            raise InvalidHandshake("response Upgrade header must be 'websocket'")
        if not _has_token(joined.get("connection", ""), "upgrade"):
            raise InvalidHandshake("response Connection header must contain 'Upgrade'")
        if joined.get("sec-websocket-accept") != accept_key(key):
            raise InvalidHandshake("wrong or missing Sec-WebSocket-Accept")
    return status, headers, end + 4
