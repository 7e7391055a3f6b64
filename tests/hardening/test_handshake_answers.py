"""What each server answers to upgrade requests dwebsocket refuses, byte for byte on a raw
socket: the refusal's status and the headers RFCs require of it, never a 500."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_no_traceback
from tests.servers import (
    HOST,
    LOGGING,
    REPO,
    ServerProcess,
    _uwsgi,
    project_server,
    start_server,
)
from tests.wire import TIMEOUT, read_http_response, upgrade_request

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

#: The WSGI servers where dwebsocket answers a refused handshake itself (waitress too:
#: it cannot serve WebSockets, 501, but a handshake it meets is checked first).
WSGI = ["gevent", "runserver", "gunicorn-gevent", "eventlet", "uwsgi-gevent", "waitress"]
#: Those that refuse hop-by-hop headers from the application (PEP 3333 lets them): an
#: Upgrade header there is a 500 (wsgiref's AssertionError, waitress's).
NO_HOP_BY_HOP = ("runserver", "waitress")


@pytest.fixture(scope="module", params=WSGI)
def wsgi_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log: Path = tmp_path_factory.mktemp(request.param) / "server.log"
    server = start_server(request.param, log)
    try:
        yield server
    finally:
        server.stop()
    assert_no_traceback(server)


def project_env(**settings: object) -> dict[str, str]:
    """The environment of a test project server started by hand (``project_server``)."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DWEBSOCKET_TEST_SETTINGS": json.dumps({"LOGGING": LOGGING, **settings}),
    }


def answer(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        return read_http_response(sock)


@pytest.mark.parametrize(
    "version_line",
    [b"Sec-WebSocket-Version: 8\r\n", b""],
    ids=["version-8", "no-version"],
)
def test_a_426_names_the_protocol_to_upgrade_to(
    wsgi_server: ServerProcess, version_line: bytes
) -> None:
    # RFC 9110 15.5.22: "The server MUST send an Upgrade header field in a 426 response to
    # indicate the required protocol(s)"; RFC 6455 4.4 adds the versions it speaks.
    # wsgiref (runserver) and waitress refuse hop-by-hop headers from the application
    # (PEP 3333): an Upgrade header there would be a 500.
    request = upgrade_request("/echo/").replace(b"Sec-WebSocket-Version: 13\r\n", version_line)
    status, headers, body = answer(wsgi_server, request)
    assert (status, headers.get("sec-websocket-version")) == (426, "13"), (headers, body)
    expected = None if wsgi_server.name in NO_HOP_BY_HOP else "websocket"
    assert headers.get("upgrade") == expected, headers


def test_a_request_line_saying_http_2_gets_no_101(wsgi_server: ServerProcess) -> None:
    # An HTTP/2 request has no request line (a WebSocket there is an extended CONNECT, RFC
    # 8441). gevent and gunicorn answer this one 400 themselves, wsgiref (runserver) and
    # eventlet 505 (as HTTP/0.9: a page, no status line), waitress hands Django "HTTP/1.0"
    # (refused 400 as such). uWSGI passed it to Django, whose handshake took "2.0" for
    # "later than 1.1", and wrote the 101 with the request's version: "HTTP/2.0 101
    # Switching Protocols", then WebSocket frames.
    request = upgrade_request("/echo/").replace(b" HTTP/1.1\r\n", b" HTTP/2.0\r\n", 1)
    with socket.create_connection((wsgi_server.host, wsgi_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and b"</html>" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first_line = data.partition(b"\r\n")[0]
    assert b" 101 " not in first_line, data
    if wsgi_server.name == "uwsgi-gevent":
        # uWSGI writes every status line with the request's version: "HTTP/2.0 400".
        status, _, body = answer(wsgi_server, request)
        assert status == 400
        assert body.startswith(b"HTTP/1.1 required, got 'HTTP/2.0' (over HTTP/2, "), body


#: Header values with bytes over 0x7F (a UTF-8 "ü", then 0xFF), as raw bytes on the wire.
#: The servers hand them to Django decoded as latin-1 (PEP 3333; Django's ASGI handler
#: alike): the refusal quoted them with repr(), which kept "Ã¼ÿ", sent as UTF-8.
NON_ASCII = [
    (b"Origin", b"http://\xc3\xbc\xff.example", 403, b"Origin 'http://\\xc3\\xbc\\xff.example'"),
    (b"Sec-WebSocket-Protocol", b"chat\xc3\xbc", 400, b"Protocol header: 'chat\\xc3\\xbc'\n"),
]


def non_ascii_request(name: bytes, value: bytes) -> bytes:
    head = upgrade_request("/echo/").removesuffix(b"\r\n")
    return head + name + b": " + value + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value", "status", "quote"), NON_ASCII, ids=["origin", "protocol"]
)
def test_a_refusal_quotes_non_ascii_bytes_escaped(
    wsgi_server: ServerProcess, name: bytes, value: bytes, status: int, quote: bytes
) -> None:
    mark = wsgi_server.mark()
    got, headers, body = answer(wsgi_server, non_ascii_request(name, value))
    assert (got, headers.get("content-type")) == (status, "text/plain; charset=utf-8"), body
    assert quote in body, body
    assert body.isascii(), body
    assert int(headers["content-length"]) == len(body)
    assert quote.decode() in wsgi_server.log(mark)  # the log line quotes it alike


#: ASGI servers, each with the sync views (tests/asgi/urls.py) and the async ones.
ASGI = [
    (name, urls)
    for name in ("uvicorn", "hypercorn", "daphne")
    for urls in ("tests.asgi.urls", "tests.asgi.async_urls")
]


@pytest.fixture(scope="module", params=ASGI, ids=lambda p: f"{p[0]}-{p[1].rpartition('.')[2]}")
def asgi_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    name, urls = request.param
    log: Path = tmp_path_factory.mktemp(name) / "server.log"
    server = start_server(name, log, settings={"ROOT_URLCONF": urls})
    try:
        yield server
    finally:
        server.stop()
    assert_no_traceback(server)


@pytest.mark.parametrize("upgrade", ["websocket, foo", "foo, WebSocket", "websocket,"])
def test_an_upgrade_the_asgi_server_did_not_take_is_told_why(
    asgi_server: ServerProcess, upgrade: str
) -> None:
    # A valid handshake (RFC 6455 4.2.1: Upgrade is a list that holds "websocket"), but
    # uvicorn, hypercorn and daphne take one only with "websocket" alone: the request
    # reaches the view from an http scope, with no socket. It got 501 "the default
    # backend cannot take the connection over from an unknown server; run under manage.py
    # runserver, gevent..." (an async view's: "async WebSocket views run only under an
    # ASGI server"), and the first such request of a process wrote that at ERROR: any
    # client could tell the operator a working deployment was broken.
    mark = asgi_server.mark()
    request = upgrade_request("/echo/").replace(
        b"Upgrade: websocket\r\n", f"Upgrade: {upgrade}\r\n".encode()
    )
    status, _, body = answer(asgi_server, request)
    assert status == 400, body
    assert b"only with 'Upgrade: websocket'" in body, body
    assert repr(upgrade).encode() in body, body
    assert "[ERROR" not in asgi_server.log(mark), asgi_server.log(mark)


def test_an_asgi_refusal_quotes_non_ascii_bytes_escaped(asgi_server: ServerProcess) -> None:
    # The Origin check is dwebsocket's under ASGI too (the servers check the version, key
    # and protocol list themselves, in their own words).
    # daphne answers a refusal with its own empty 403 (no denial response extension).
    name, value, status, quote = NON_ASCII[0]
    mark = asgi_server.mark()
    got, _, body = answer(asgi_server, non_ascii_request(name, value))
    expected = b"" if asgi_server.name == "daphne" else quote
    assert (got, expected in body, body.isascii()) == (status, True, True), body
    assert quote.decode() in asgi_server.log(mark)


HYPERCORN_WINDOW_BITS = (
    "hypercorn 0.18 (wsproto 1.3) cannot parse a window-bits value that is not a bare "
    "number: when the view accepts, it drops the connection without an answer and logs a "
    "traceback (docs/asgi.rst)"
)


@pytest.mark.parametrize(
    "name",
    [
        "uvicorn",
        "daphne",
        "granian-asgi",
        pytest.param(
            "hypercorn",
            marks=pytest.mark.xfail(
                strict=True, raises=AssertionError, reason=HYPERCORN_WINDOW_BITS
            ),
        ),
    ],
)
def test_a_quoted_window_bits_offer_is_answered(tmp_path: Path, name: str) -> None:
    # RFC 7692 7.1.2.1 allows a parameter's value quoted; a server may negotiate it or
    # decline the offer, but must answer, without a traceback.
    request = upgrade_request(
        "/echo/", extensions='permessage-deflate; server_max_window_bits="10"'
    )
    server = start_server(name, tmp_path / "server.log")
    try:
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                assert chunk, f"{name} closed the connection without an answer"
                head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
    finally:
        server.stop()
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("uvicorn", 405, b"unsupported HTTP method"),  # uvicorn's own
        ("daphne", 405, b""),  # its own, the reason in the status line
        ("hypercorn", 400, b"method must be GET"),  # passed on as plain HTTP: dwebsocket's
        pytest.param(
            "granian-asgi",
            400,
            b"",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="granian upgrades any method, and the websocket scope has none",
            ),
        ),
    ],
)
def test_an_upgrade_by_post_is_refused_under_asgi(
    tmp_path: Path, name: str, status: int, reason: bytes
) -> None:
    # docs/asgi.rst's server table, row "whose method is not GET".
    request = upgrade_request("/echo/").replace(b"GET ", b"POST ", 1)
    server = start_server(name, tmp_path / "server.log")
    try:
        got, _, body = answer(server, request)
        assert (got, reason in body) == (status, True), body
    finally:
        server.stop()
    assert_no_traceback(server)


@pytest.mark.parametrize(("options", "status"), [((), None), (("--buffer-size", "32768"), 101)])
def test_uwsgi_resets_a_head_over_its_buffer_size(
    tmp_path: Path, options: tuple[str, ...], status: int | None
) -> None:
    # docs/deployment.rst, the uWSGI options: a browser's few KiB of cookies put the head
    # over uWSGI's default 4 KiB buffer, and the connection is reset without an answer
    # (plain HTTP too), before Django. --buffer-size is the deployment's fix.
    def argv(port: int) -> list[str]:
        uwsgi = _uwsgi(HOST, port, "default", "--gevent", "10", "--gevent-early-monkey-patch")
        return [*uwsgi, *options]

    env = project_env()
    request = upgrade_request("/echo/").replace(
        b"\r\n\r\n", b"\r\nCookie: a=" + b"x" * 5000 + b"\r\n\r\n"
    )
    log = tmp_path / "uwsgi.log"
    with (
        project_server(argv, REPO, env, log) as (_, port),
        socket.create_connection((HOST, port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(request)
        try:
            got: int | None = read_http_response(sock)[0]
        except (ConnectionResetError, IndexError):  # reset, or EOF: no status line
            got = None
    assert got == status


@pytest.mark.parametrize(("name", "after"), [("uwsgi-gevent", 101), ("uwsgi-async", None)])
def test_uwsgi_async_resets_every_head_after_one_over_its_buffer_size(
    tmp_path: Path, name: str, after: int | None
) -> None:
    # docs/deployment.rst, the uWSGI options: under --async (uWSGI 2.0.31; also without
    # dwebsocket, a bare WSGI app) the core that read a head over --buffer-size stays
    # broken, and the worker resets every later connection ("invalid HTTP request size"
    # each time), plain HTTP too, until it is restarted. --gevent only resets that one.
    server = start_server(name, tmp_path / "server.log")
    try:
        before = status_or_none(server, upgrade_request("/echo/"))
        oversized = status_or_none(server, with_cookies(5000))
        got = [status_or_none(server, upgrade_request("/echo/")) for _ in range(3)]
    finally:
        server.stop()
    assert (before, oversized, got) == (101, None, [after] * 3)


def status_or_none(server: ServerProcess, request: bytes) -> int | None:
    """The answer's status, None for a connection closed or reset without one."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        try:
            return read_http_response(sock)[0]
        except (ConnectionResetError, IndexError):
            return None


def with_cookies(*sizes: int) -> bytes:
    lines = b"".join(b"Cookie: a=" + b"x" * size + b"\r\n" for size in sizes)
    return upgrade_request("/echo/").replace(b"\r\n\r\n", b"\r\n" + lines + b"\r\n")


@pytest.mark.parametrize(
    ("name", "answers"),
    [
        ("gunicorn-gevent", {(8000,): 101, (8300,): 431}),
        ("uvicorn", {(8000,): 101, (8300,): 431}),
        ("daphne", {(16000,): 101, (7000, 7000, 7000): 400, (16500,): None}),
        ("hypercorn", {(40000,): 101}),
        ("granian-asgi", {(40000,): 101}),
    ],
)
def test_each_servers_limit_on_the_request_head(
    tmp_path: Path, name: str, answers: dict[tuple[int, ...], int | None]
) -> None:
    # docs/security.rst, the threat model's "Oversized request head" row.
    server = start_server(name, tmp_path / "server.log")
    try:
        got = {sizes: status_or_none(server, with_cookies(*sizes)) for sizes in answers}
    finally:
        server.stop()
    assert got == answers
    assert_no_traceback(server)


@pytest.mark.parametrize("urls", ["tests.asgi.urls", "tests.asgi.async_urls"])
def test_an_asgi_server_without_websockets_is_the_deployments_fault(
    tmp_path: Path, urls: str
) -> None:
    # uvicorn --ws none passes every handshake on as plain HTTP: 501, and the operator is
    # told once at ERROR what is wrong (was: "run under manage.py runserver, gevent...",
    # or for an async view "async WebSocket views run only under an ASGI server").
    def argv(port: int) -> list[str]:
        return [
            str(Path(sys.executable).with_name("uvicorn")),
            *("--host", HOST, "--port", str(port), "--ws", "none", "--no-access-log"),
            "tests.asgi.app:application",
        ]

    env = project_env(ROOT_URLCONF=urls)
    log = tmp_path / "uvicorn.log"
    with project_server(argv, REPO, env, log) as (_, port):
        for _ in range(2):
            with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
                sock.sendall(upgrade_request("/echo/"))
                status, _, body = read_http_response(sock)
            assert status == 501, body
            assert b"the ASGI server passed a WebSocket handshake on as plain HTTP" in body
    assert log.read_text().count("[ERROR dwebsocket]") == 1, log.read_text()
