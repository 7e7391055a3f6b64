"""The default backend through real servers (runserver and gevent.pywsgi, see
tests/servers.py), with the websockets client and raw sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dwebsocket.protocol.connection import Close
from dwebsocket.protocol.frames import apply_mask
from tests.servers import ServerProcess
from tests.wire import (
    TIMEOUT,
    RawClient,
    masked,
    read_http_response,
    read_until_eof,
    split_frames,
    upgrade_request,
)

pytestmark = pytest.mark.server


def ws(server: ServerProcess, path: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("max_size", 4 << 20)
    return connect(
        server.url(path), open_timeout=TIMEOUT, close_timeout=TIMEOUT, proxy=None, **kwargs
    )


def http_get(server: ServerProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(server.url(path, "http"), timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def raw(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=TIMEOUT)


MESSAGES = ["hello", "héllo wörld ☃ 🚀", "", b"", b"\x00\x01\xfe\xff", "x" * 70000, b"\x00" * 70000]


@pytest.mark.parametrize(
    "path",
    [
        "/echo/",
        "/echo-wait/",
        # No platform wait takes these (poll(): ~24.8 days at most): a wait without end.
        "/echo-wait/?timeout=inf",
        "/echo-wait/?timeout=nan",
        "/echo-wait/?timeout=1e10",
    ],
)
def test_echo(server: ServerProcess, path: str) -> None:
    with ws(server, path) as client:
        for message in MESSAGES:
            client.send(message)
            answer = client.recv(timeout=TIMEOUT)
            assert answer == message and type(answer) is type(message)
    assert client.close_code == 1000


def test_fragmented_messages(server: ServerProcess) -> None:
    with ws(server, "/echo/") as client:
        client.send(iter(["frag", "mén", "ted"]))
        assert client.recv(timeout=TIMEOUT) == "fragménted"
        client.send(iter([b"\x01", b"", b"\x02\x03"]))
        assert client.recv(timeout=TIMEOUT) == b"\x01\x02\x03"


def test_one_mebibyte_both_ways(server: ServerProcess) -> None:
    payload = bytes(range(256)) * 4096
    with ws(server, "/echo/") as client:
        client.send(payload)
        assert client.recv(timeout=TIMEOUT) == payload
    with ws(server, "/big/") as client:
        assert client.recv(timeout=TIMEOUT) == payload
    with ws(server, "/big/?text=1") as client:
        assert client.recv(timeout=TIMEOUT) == "é" * (1 << 19)


def test_over_the_message_limit_closes_1009(server: ServerProcess) -> None:
    with ws(server, "/echo/") as client:
        client.send(b"\x00" * ((1 << 20) + 1))
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
    assert client.close_code == 1009


@pytest.mark.parametrize("compression", ["deflate", None])
def test_compression_negotiated_unless_the_client_declines(
    server: ServerProcess, compression: str | None
) -> None:
    with ws(server, "/echo/", compression=compression) as client:
        extensions = client.response.headers.get("Sec-WebSocket-Extensions")
        assert (extensions is not None and "permessage-deflate" in extensions) == (
            compression is not None
        )
        for message in MESSAGES:
            client.send(message)
            assert client.recv(timeout=TIMEOUT) == message


@pytest.mark.parametrize("name", ["runserver", "gevent"])
def test_compression_setting_off(make_server: Any, name: str) -> None:
    server = make_server(name, settings={"WEBSOCKET_COMPRESSION": False})
    with ws(server, "/echo/") as client:
        assert client.response.headers.get("Sec-WebSocket-Extensions") is None
        client.send("plain " * 100)
        assert client.recv(timeout=TIMEOUT) == "plain " * 100


def test_ping_pong(server: ServerProcess) -> None:
    with ws(server, "/ping/") as client:
        assert client.ping(b"client ping").wait(TIMEOUT)
        client.send("after ping")
        assert client.recv(timeout=TIMEOUT) == "after ping"


def test_server_ping_reaches_the_client(server: ServerProcess) -> None:
    with RawClient(raw(server)) as client:
        client.handshake("/ping/")
        event = client.next_event()
        assert type(event).__name__ == "Ping" and event.data == b"server ping"  # type: ignore[union-attr]


def test_server_closes_with_code_and_reason(server: ServerProcess) -> None:
    with ws(server, "/close/?code=4001&reason=bye%20now") as client:
        client.send("go")
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
    assert (client.close_code, client.close_reason) == (4001, "bye now")


def test_client_closes_with_code_and_reason(server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    with ws(server, f"/record/?id={key}") as client:
        client.send("hi")
        assert client.recv(timeout=TIMEOUT) == "hi"
        client.close(4000, "client says bye")
    assert client.close_code == 4000  # the server echoes the code (RFC 6455 5.5.1)
    # What the view saw, read back over plain HTTP (the view records it as it ends).
    deadline = time.monotonic() + TIMEOUT
    while True:
        status, body = http_get(server, f"/record/?id={key}")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == 200
    assert json.loads(body) == {"code": 4000, "reason": "client says bye", "closed": True}


def test_json_both_ways_and_not_json_closes_1007(server: ServerProcess) -> None:
    with ws(server, "/json/") as client:
        client.send('{"a": [1, 2]}')
        assert json.loads(client.recv(timeout=TIMEOUT)) == {
            "got": {"a": [1, 2]},
            "on": "2026-12-04",
        }
        client.send(b'"binary is read as UTF-8"')
        assert json.loads(client.recv(timeout=TIMEOUT))["got"] == "binary is read as UTF-8"
        client.send("{not json")
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
    assert (client.close_code, client.close_reason) == (1007, "invalid JSON")


def test_connection_closed_escaping_the_view_is_a_normal_end(server: ServerProcess) -> None:
    mark = server.mark()
    with ws(server, "/raise-closed/") as client:
        client.send("x")
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
    assert client.close_code == 1000
    assert "Traceback" not in server.log(mark)


def test_view_error_closes_1011(server: ServerProcess) -> None:
    with ws(server, "/raise-error/") as client:
        client.send("x")
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
    assert client.close_code == 1011


def test_view_returning_none_untouched_accepts_and_closes(server: ServerProcess) -> None:
    with ws(server, "/nothing/") as client, pytest.raises(ClientClosed):
        client.recv(timeout=TIMEOUT)
    assert client.close_code == 1000


def test_refused_before_accepting(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        ws(server, "/refuse/")
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"not you\n"


@pytest.mark.parametrize("kind", ["file", "generator"])
def test_refused_before_accepting_with_a_streamed_body(server: ServerProcess, kind: str) -> None:
    """A view refusing with a streamed response (a ``FileResponse``, a generator's; an
    async view's async generator) gets it whole: under ASGI its body was dropped while its
    ``Content-Length`` went out, so the client waited for bytes that never came."""
    with pytest.raises(InvalidStatus) as info:
        ws(server, f"/refuse-streaming/?kind={kind}")
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"not you\n"


def test_subprotocol(server: ServerProcess) -> None:
    with ws(server, "/subprotocol/", subprotocols=["other", "chat"]) as client:
        assert client.subprotocol == "chat"
        assert json.loads(client.recv(timeout=TIMEOUT)) == {
            "offered": ["other", "chat"],
            "chosen": "chat",
        }
    with ws(server, "/subprotocol/") as client:
        assert client.subprotocol is None
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"offered": [], "chosen": None}


def test_read_and_count_messages(server: ServerProcess) -> None:
    with ws(server, "/info/") as client:
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"read": None}
        client.send("one")
        assert json.loads(client.recv(timeout=TIMEOUT)) == {"wait": "one", "count": 0}


def test_plain_http(server: ServerProcess) -> None:
    assert http_get(server, "/echo/") == (200, b"echo: plain HTTP\n")
    status, body = http_get(server, "/echo-wait/")
    assert status == 400 and b"WebSocket" in body


def test_require_over_another_decorator_over_accept(server: ServerProcess) -> None:
    # tests.views.stacked: require_websocket(csrf_exempt(accept_websocket(view))). Before
    # a00ad07 require_websocket set its flag on csrf_exempt's wrapper, the inner one let
    # plain HTTP through to the view, and request.websocket None made it a 500.
    status, body = http_get(server, "/stacked/")
    assert status == 400 and b"only accepts WebSocket" in body, (status, body)
    with ws(server, "/stacked/") as client:
        client.send("hé")
        assert client.recv(timeout=TIMEOUT) == "hé"


@pytest.mark.parametrize(
    ("headers", "status", "in_body"),
    [
        ({"Sec-WebSocket-Key": "short"}, 400, b"Sec-WebSocket-Key"),
        ({"Sec-WebSocket-Version": "8"}, 426, b"Sec-WebSocket-Version"),
        ({"Origin": "http://evil.example"}, 403, b"evil.example"),
    ],
)
def test_refused_handshakes(
    server: ServerProcess, headers: dict[str, str], status: int, in_body: bytes
) -> None:
    mark = server.mark()
    request = upgrade_request("/echo/")
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if line.split(b":")[0].decode() not in headers]
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    with raw(server) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        got_status, got_headers, body = read_http_response(sock)
    assert got_status == status
    assert in_body in body
    if status == 426:
        assert got_headers["sec-websocket-version"] == "13"
    assert "Traceback" not in server.log(mark)


@pytest.mark.parametrize(
    ("host_lines", "reason", "answered_by_the_server"),
    [
        (b"", b"missing Host header", ("daphne", "hypercorn")),
        (b"Host: \r\n", b"missing Host header", ()),
        (
            b"Host: 127.0.0.1\r\nHost: evil.example\r\n",
            b"more than one Host header",
            ("gunicorn-gevent", "gunicorn-gthread", "hypercorn"),
        ),
    ],
    ids=["missing", "empty", "two"],
)
def test_an_upgrade_without_one_host_is_refused_400(
    server: ServerProcess, host_lines: bytes, reason: bytes, answered_by_the_server: tuple[str, ...]
) -> None:
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host or with
    # more than one; RFC 6455 4.1 makes Host part of the handshake. No WSGI server here
    # refuses a missing or empty one itself (each gave the 101); gunicorn refuses two
    # Hosts with its own 400 page, the others joined them for Django. Under ASGI, uvicorn
    # and granian accepted all three; ``answered_by_the_server``: those whose own 400
    # (without dwebsocket's reason) comes before the application sees the request.
    request = upgrade_request("/echo/").replace(b"Host: 127.0.0.1\r\n", host_lines, 1)
    mark = server.mark()
    with raw(server) as sock:
        sock.sendall(request)
        status, _, body = read_http_response(sock)
    assert status == 400
    if server.name not in answered_by_the_server:
        assert reason in body, body
    assert "Traceback" not in server.log(mark)


@pytest.mark.parametrize(
    ("version_lines", "reason"),
    [
        (
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n",
            b"more than one Sec-WebSocket-Version header",
        ),
        (b"Sec-WebSocket-Version: thirteen\r\n", b"invalid Sec-WebSocket-Version"),
    ],
    ids=["two", "not-a-number"],
)
def test_a_malformed_version_is_refused_400_not_426(
    server: ServerProcess, version_lines: bytes, reason: bytes
) -> None:
    # RFC 6455 11.3.5: Sec-WebSocket-Version MUST NOT appear more than once, and a client
    # sends one version (4.1). Every server joins two for Django ("13,8"), which answered
    # 426 with "Sec-WebSocket-Version: 13", as for a version it does not speak: an
    # invitation to retry with the version the client had sent. A malformed request is 400.
    request = upgrade_request("/echo/").replace(b"Sec-WebSocket-Version: 13\r\n", version_lines)
    with raw(server) as sock:
        sock.sendall(request)
        status, headers, body = read_http_response(sock)
    assert (status, "sec-websocket-version" in headers) == (400, False)
    assert reason in body


def test_an_http_1_0_upgrade_is_refused_400(server: ServerProcess) -> None:
    # RFC 6455 4.1: the handshake is an HTTP/1.1 request. eventlet.wsgi puts "HTTP/1.0" in
    # every environ, whatever the request line said: the version went unchecked there, and
    # an HTTP/1.0 upgrade got its 101 where every other server said 400.
    request = upgrade_request("/echo/").replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    with raw(server) as sock:
        sock.sendall(request)
        status, _, body = read_http_response(sock)
    assert (status, body) == (400, b"HTTP/1.1 required, got 'HTTP/1.0'\n")


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("Content-Length: 5", b"hello"),
        ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
        # The body not sent yet: hypercorn refuses a body only when it arrives with the
        # head (as it does any data before the accept), and answered these 101.
        ("Content-Length: 5", b""),
        ("Transfer-Encoding: chunked", b""),
    ],
    ids=["content-length", "chunked", "content-length-alone", "chunked-alone"],
)
def test_an_upgrade_with_a_body_is_refused_400(
    server: ServerProcess, header: str, body: bytes
) -> None:
    # A GET upgrade carries no body (RFC 6455 4.1); one would be read as WebSocket frames.
    request = upgrade_request("/echo/").replace(b"\r\n\r\n", f"\r\n{header}\r\n\r\n".encode())
    with raw(server) as sock:
        sock.sendall(request + body)
        status, _, _ = read_http_response(sock)
    assert status == 400


def test_a_request_pipelined_before_an_upgrade_is_answered_first(server: ServerProcess) -> None:
    # HTTP/1.1 pipelining: a plain request and an upgrade in one segment are answered in
    # that order, the 101 last (or the server closes after the first answer: runserver
    # and uWSGI do when it has no Content-Length); a 101 first would put the 200 inside
    # the WebSocket stream. The plain request takes its time, so that a server that
    # answers the upgrade at once does so every time.
    plain = b"GET /slow/?seconds=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data = b""
    with raw(server) as sock:
        sock.sendall(plain + upgrade_request("/echo/"))
        while True:
            at = data.find(b"HTTP/1.1 101 ")
            if at >= 0 and b"\r\n\r\n" in data[at:]:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert b"slow\n" in data.partition(b"HTTP/1.1 101 ")[0], data


def test_same_origin_allowed(server: ServerProcess) -> None:
    with ws(server, "/echo/", origin=f"http://127.0.0.1:{server.port}") as client:
        client.send("same origin")
        assert client.recv(timeout=TIMEOUT) == "same origin"


def test_same_origin_with_a_trailing_dot_allowed(server: ServerProcess) -> None:
    # Django serves a page at localhost. (it drops the dot before matching ALLOWED_HOSTS),
    # and the page's WebSocket carries that origin: it was refused with 403.
    with ws(server, "/echo/", origin=f"http://localhost.:{server.port}") as client:
        client.send("fqdn")
        assert client.recv(timeout=TIMEOUT) == "fqdn"


def test_handshake_and_first_frame_in_one_segment(server: ServerProcess) -> None:
    with RawClient(raw(server)) as client:
        client.handshake("/echo/", first=masked(0x1, b"in the same segment"))
        assert client.recv() == "in the same segment"


@pytest.mark.parametrize(
    "name", ["runserver", "gevent", "gunicorn-gevent", "gunicorn-gthread", "eventlet"]
)
def test_first_frame_with_the_handshake_while_a_helper_accepts(make_server: Any, name: str) -> None:
    # A helper thread's send() runs the handshake; while its websocket_opened receiver
    # runs (tests.views._opened_slowly) the view starts waiting. The frame that came with
    # the handshake reaches the view at once: it used to wait, in the helper's hands,
    # until the client sent again (runserver), or be lost (gevent).
    server = make_server(name)
    with RawClient(raw(server)) as client:
        client.handshake("/helper-accepts/", first=masked(0x1, b"first"))
        assert sorted([client.recv(), client.recv()]) == ["echo:first", "hello"]  # type: ignore[type-var]
        client.sock.sendall(masked(0x8, b"\x03\xe8"))
        data = read_until_eof(client.sock)
    assert split_frames(data) == ([(0x88, b"\x03\xe8")], b"")


def test_nothing_after_the_close_frame_when_the_client_closes(server: ServerProcess) -> None:
    with RawClient(raw(server)) as client:
        client.handshake("/echo/")
        client.send("hi")
        assert client.recv() == "hi"
        client.sock.sendall(masked(0x8, b"\x03\xe8bye"))
        data = read_until_eof(client.sock)
    frames, trailing = split_frames(data)
    assert frames == [(0x88, b"\x03\xe8")]
    assert trailing == b""


def test_nothing_after_the_close_frame_when_the_server_closes(server: ServerProcess) -> None:
    with RawClient(raw(server)) as client:
        client.handshake("/close/?code=4002&reason=done")
        client.sock.sendall(masked(0x1, b"go"))
        event = client.recv()
        assert event == Close(4002, "done")
        client.sock.sendall(masked(0x8, b"\x0f\xa2"))
        assert read_until_eof(client.sock) == b""


def test_protocol_error_closes_1002_and_eof(server: ServerProcess) -> None:
    with RawClient(raw(server)) as client:
        client.handshake("/echo/")
        payload, key = b"reserved opcode", b"\x01\x02\x03\x04"
        client.sock.sendall(bytes((0x83, 0x80 | len(payload))) + key + apply_mask(payload, key))
        data = read_until_eof(client.sock)
    frames, trailing = split_frames(data)
    assert len(frames) == 1 and frames[0][0] == 0x88
    assert frames[0][1][:2] == (1002).to_bytes(2, "big")
    assert trailing == b""


NOISE = ["Traceback", "EBADF", "Bad file descriptor", "EPIPE", "Broken pipe", "Errno"]


def test_sessions_end_without_noise_in_the_server_log(server: ServerProcess) -> None:
    """The server's write of Django's response after the session fails silently."""
    mark = server.mark()
    for path in ["/echo/", "/raise-closed/", "/nothing/", "/close/?code=4000", "/raise-error/"]:
        with ws(server, path) as client, contextlib.suppress(ClientClosed):
            client.send("x")
            client.recv(timeout=TIMEOUT)
    # Bounded: the last session's trailing write happens right after its close.
    with ws(server, "/echo/") as client:
        client.send("last")
        assert client.recv(timeout=TIMEOUT) == "last"
    log = server.log(mark)
    assert not [word for word in NOISE if word in log], log
