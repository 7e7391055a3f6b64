"""WEBSOCKET_MAX_CONNECTIONS / WEBSOCKET_MAX_CONNECTIONS_PER_IP: 503 + Retry-After at the
handshake, in-process (socketpair) and through gevent.pywsgi."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.test import RequestFactory, override_settings

from dwebsocket import limits, require_websocket
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.protocol.handshake import build_request, generate_key
from tests.hardening.client import TIMEOUT, close_frame, connect, echo, frame
from tests.hardening.support import SETTINGS
from tests.inprocess import Session, upgrade_headers
from tests.servers import ServerProcess
from tests.wire import read_http_response


def request_from(address: str) -> HttpRequest:
    return RequestFactory().get("/", REMOTE_ADDR=address)


@contextlib.contextmanager
def upgrade() -> Iterator[HttpRequest]:
    """An upgrade request with a socket to take over (never used: the cap says no)."""
    server_sock, client_sock = socket.socketpair()
    with server_sock, client_sock:
        yield RequestFactory().get(
            "/ws/",
            headers=upgrade_headers(generate_key()),
            **{"dwebsocket.socket": server_sock},  # type: ignore[arg-type]
        )


@pytest.fixture(autouse=True)
def no_sessions_left() -> Iterator[None]:
    assert limits.open_sessions() == (0, {})
    yield
    assert limits.open_sessions() == (0, {})


# -- the counter ------------------------------------------------------------------------


@override_settings(WEBSOCKET_MAX_CONNECTIONS=2)
def test_global_cap() -> None:
    first = limits.acquire(request_from("10.0.0.1"))
    second = limits.acquire(request_from("10.0.0.2"))
    assert limits.open_sessions() == (2, {"10.0.0.1": 1, "10.0.0.2": 1})
    with pytest.raises(limits.TooManyConnections) as refused:
        limits.acquire(request_from("10.0.0.3"))
    assert refused.value.status == 503
    assert refused.value.headers == [("Retry-After", str(limits.RETRY_AFTER))]
    assert "limit 2" in refused.value.reason
    first()
    first()  # idempotent: the slot is given back once
    assert limits.open_sessions() == (1, {"10.0.0.2": 1})
    limits.acquire(request_from("10.0.0.3"))()
    second()


@override_settings(WEBSOCKET_MAX_CONNECTIONS_PER_IP=2)
def test_per_address_cap() -> None:
    held = [limits.acquire(request_from("10.0.0.1")) for _ in range(2)]
    with pytest.raises(limits.TooManyConnections) as refused:
        limits.acquire(request_from("10.0.0.1"))
    assert "10.0.0.1" in refused.value.reason and "limit 2" in refused.value.reason
    other = limits.acquire(request_from("10.0.0.2"))  # another address is not affected
    for release in [*held, other]:
        release()


@override_settings(WEBSOCKET_MAX_CONNECTIONS_PER_IP=2)
def test_an_ipv6_client_is_counted_by_its_64_network() -> None:
    """Addresses of one /64 (what one subscriber gets: 2**64 of them) share the cap; the
    next /64 does not. An IPv4-mapped address counts as its IPv4 address."""
    held = [
        limits.acquire(request_from("2001:db8:1:2::1")),
        limits.acquire(request_from("2001:db8:1:2:ffff:ffff:ffff:fffe")),
    ]
    with pytest.raises(limits.TooManyConnections) as refused:
        limits.acquire(request_from("2001:db8:1:2:abcd::9"))
    assert "2001:db8:1:2::/64" in refused.value.reason
    held.append(limits.acquire(request_from("2001:db8:1:3::1")))  # another /64
    held.append(limits.acquire(request_from("::ffff:10.0.0.1")))
    held.append(limits.acquire(request_from("10.0.0.1")))
    with pytest.raises(limits.TooManyConnections):
        limits.acquire(request_from("10.0.0.1"))
    assert limits.open_sessions() == (
        5,
        {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1, "10.0.0.1": 2},
    )
    for release in held:
        release()


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("", ""),
        ("not an address", "not an address"),
    ],
)
def test_client_key(address: str, key: str) -> None:
    assert limits.client_key(address) == key


def test_no_cap_by_default() -> None:
    releases = [limits.acquire(request_from("10.0.0.1")) for _ in range(1000)]
    assert limits.open_sessions() == (1000, {"10.0.0.1": 1000})
    for release in releases:
        release()


@override_settings(WEBSOCKET_MAX_CONNECTIONS=0)
def test_zero_refuses_every_websocket() -> None:
    with pytest.raises(limits.TooManyConnections):
        limits.acquire(request_from("10.0.0.1"))


@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_invalid_setting(value: object) -> None:
    with (
        override_settings(WEBSOCKET_MAX_CONNECTIONS_PER_IP=value),
        pytest.raises(InvalidSetting, match="WEBSOCKET_MAX_CONNECTIONS_PER_IP"),
    ):
        limits.acquire(request_from("10.0.0.1"))


def test_threads_never_exceed_the_cap() -> None:
    """32 threads race for 8 slots, over and over: never more than 8 held at once."""
    held, most, lock = [0], [0], threading.Lock()

    def worker() -> None:
        for _ in range(300):
            try:
                release = limits.acquire(request_from("10.0.0.1"))
            except limits.TooManyConnections:
                continue
            with lock:
                held[0] += 1
                most[0] = max(most[0], held[0])
            with lock:
                held[0] -= 1
            release()

    with override_settings(WEBSOCKET_MAX_CONNECTIONS=8):
        threads = [threading.Thread(target=worker) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads) and 1 <= most[0] <= 8


# -- the handshake, in-process ----------------------------------------------------------


def test_a_refused_handshake_gets_503_and_the_view_does_not_run() -> None:
    ran = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        ran.set()

    with override_settings(WEBSOCKET_MAX_CONNECTIONS=0), upgrade() as request:
        response: Any = view(request)
    assert response.status_code == 503 and response["Retry-After"] == str(limits.RETRY_AFTER)
    assert b"too many WebSocket connections" in response.content
    assert not ran.is_set()


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.2)  # the client never answers the view's close
def test_the_slot_is_held_for_the_whole_session_and_given_back() -> None:
    inside = threading.Event()
    go_on = threading.Event()

    @require_websocket
    def view(request: HttpRequest) -> None:
        request.websocket.accept()  # type: ignore[attr-defined]
        inside.set()
        go_on.wait(TIMEOUT)

    with override_settings(WEBSOCKET_MAX_CONNECTIONS=1), Session(view) as session:
        try:
            session.expect_101()
            assert inside.wait(TIMEOUT)
            assert limits.open_sessions()[0] == 1
            with upgrade() as request:
                second: Any = view(request)
            assert second.status_code == 503
        finally:
            go_on.set()
        session.finish()


@pytest.mark.parametrize("failure", ["raises", "returns-http", "plain-http"])
def test_every_way_out_gives_the_slot_back(failure: str) -> None:
    @require_websocket
    def raising(request: HttpRequest) -> None:
        raise RuntimeError("on purpose")

    @require_websocket
    def refusing(request: HttpRequest) -> HttpResponse:
        return HttpResponseForbidden()

    with override_settings(WEBSOCKET_MAX_CONNECTIONS=1):
        if failure == "raises":
            with Session(raising) as session:
                session.finish()
            assert isinstance(session.error, RuntimeError)
        elif failure == "returns-http":
            with upgrade() as request:
                assert refusing(request).status_code == 403
        else:
            assert refusing(RequestFactory().get("/ws/")).status_code == 400
    # no_sessions_left checks that nothing is held


# -- through gevent.pywsgi --------------------------------------------------------------


CAP = 3


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.servers import start_server

    server = start_server(
        "gevent",
        tmp_path_factory.mktemp("capped") / "gevent.log",
        settings={**SETTINGS, "WEBSOCKET_MAX_CONNECTIONS": CAP},
    )
    try:
        yield server
    finally:
        server.stop()


def try_handshake(server: ServerProcess) -> tuple[socket.socket | None, int, dict[str, str]]:
    """One upgrade attempt: ``(the open socket if 101, else None; status; headers)``."""
    sock = connect(server)
    try:
        sock.sendall(build_request("127.0.0.1", "/echo/", key=generate_key()))
        status, headers, _ = read_http_response(sock)
    except BaseException:
        sock.close()
        raise
    if status == 101:
        return sock, status, headers
    sock.close()
    return None, status, headers


def open_when_allowed(server: ServerProcess) -> socket.socket:
    """Retry the handshake until the server has a slot again (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock, status, _ = try_handshake(server)
        if sock is not None:
            return sock
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.1)


def rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.server
def test_the_cap_through_a_real_server(capped: ServerProcess) -> None:
    """3 sessions open, the 4th gets 503 + Retry-After; a session that closes cleanly
    or is reset gives its slot back."""
    held = [try_handshake(capped)[0] for _ in range(CAP)]
    try:
        assert all(sock is not None for sock in held)
        refused, status, headers = try_handshake(capped)
        assert refused is None and status == 503
        assert headers["retry-after"] == str(limits.RETRY_AFTER)

        first = held.pop()
        assert first is not None
        with first:
            result = echo(first, b"", frame(0x1, b"bye"))
        assert result.messages == ["bye"] and result.code == 1000
        held.append(open_when_allowed(capped))

        second = held.pop()
        assert second is not None
        rst(second)
        held.append(open_when_allowed(capped))
        assert try_handshake(capped)[1] == 503
    finally:
        for sock in held:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.sendall(close_frame(1000))
                sock.close()


@pytest.mark.server
@pytest.mark.parametrize(("name", "per_client"), [("gevent", False), ("uvicorn", True)])
def test_the_client_address_behind_a_proxy_on_this_host(
    tmp_path: Path, name: str, per_client: bool
) -> None:
    """What docs/security.rst says of WEBSOCKET_MAX_CONNECTIONS_PER_IP behind a proxy: a
    WSGI server's REMOTE_ADDR is the proxy's, so every client counts together; uvicorn
    takes the address from X-Forwarded-For when the proxy is on this host (its
    --proxy-headers and --forwarded-allow-ips defaults), so each client counts alone."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    from tests.servers import running_server

    settings = {**SETTINGS, "WEBSOCKET_MAX_CONNECTIONS_PER_IP": 1}

    def open_as(server: ServerProcess, client: str) -> Any:
        return ws_connect(
            server.url("/echo/"),
            additional_headers={"X-Forwarded-For": client},
            open_timeout=TIMEOUT,
            proxy=None,
        )

    log = tmp_path / f"{name}.log"
    with running_server(name, log, settings=settings) as server, open_as(server, "203.0.113.1"):
        if per_client:
            with open_as(server, "203.0.113.2") as other:
                other.send("another client")
                assert other.recv(TIMEOUT) == "another client"
        with pytest.raises(InvalidStatus) as refused, open_as(server, "203.0.113.1"):
            pass
        assert refused.value.response.status_code == 503
        if not per_client:
            with pytest.raises(InvalidStatus) as refused, open_as(server, "203.0.113.2"):
                pass
            assert refused.value.response.status_code == 503
