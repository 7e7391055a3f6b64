"""The handshake's Origin and Host, sent raw to a WSGI server (default backend), uWSGI (the
uwsgi backend) and an ASGI server: a value no browser sends is refused, never matched.

The project has no middleware (``MIDDLEWARE = []``), so nothing but dwebsocket calls
``request.get_host()``, the call that checks ``Host`` against ``ALLOWED_HOSTS``
(``["127.0.0.1", "localhost", "testserver"]``, tests/settings.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import assert_no_traceback
from tests.servers import ServerProcess, start_server
from tests.wire import TIMEOUT, read_http_response, upgrade_request

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]


@pytest.fixture(scope="module", params=["gevent", "uwsgi-gevent", "uvicorn"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp(request.param) / "server.log"
    server = start_server(request.param, log, settings={"MIDDLEWARE": []})
    try:
        yield server
    finally:
        server.stop()
    assert_no_traceback(server)


def answer(
    server: ServerProcess, *, origin: str | None = None, host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    # Spliced in raw: build_request() refuses a header value with a CR, LF or NUL.
    request = upgrade_request(
        "/echo/", host, headers=None if origin is None else {"Origin": origin}
    )
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        status, _, body = read_http_response(sock)
    return status, body


def test_an_origin_with_a_tab_inside_is_refused(site: ServerProcess) -> None:
    # HTAB is allowed inside a header value (RFC 9110 5.5): every server passes it on.
    # urlsplit() removes tabs (and CR, LF) anywhere in a URL (bpo-43882), so the check
    # read "http://127.0.\t0.1" as http://127.0.0.1 and the handshake got 101.
    for origin in ["http://127.0.\t0.1", "http://local\thost:8000"]:
        status, body = answer(site, origin=origin)
        assert status == 403, (origin, status, body)
        assert body.startswith(b"Origin 'http://"), body


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1\x0b",  # str.strip() took these off the ends
        "\x0chttp://localhost",
        "http://localhost\x1f",
        "http://127.0.\n0.1",  # uWSGI passes a bare LF inside a value on
        "http://127.0.0.1\x00",
    ],
    ids=["vt", "ff", "us", "lf", "nul"],
)
def test_an_origin_with_a_control_character_gets_no_101(site: ServerProcess, origin: str) -> None:
    # uvicorn's HTTP parser answers 400 to a control character in a header value itself;
    # uWSGI passes these on, and the check then refuses the origin: it read the first
    # three as http://127.0.0.1 or http://localhost (str.strip()), the LF as a tab.
    if site.name == "gevent" and origin != origin.strip():
        pytest.skip("gevent.pywsgi strips every header value (str.strip()): Django sees none")
    status, body = answer(site, origin=origin)
    assert status in (400, 403), (status, body)
    if status == 403:
        assert body.startswith(b"Origin "), body


def test_spaces_and_tabs_around_an_origin_are_not_part_of_it(site: ServerProcess) -> None:
    # Optional whitespace around a field value (RFC 9110 5.5), kept by some servers.
    assert answer(site, origin="http://127.0.0.1\t")[0] == 101


@pytest.mark.parametrize(
    "origin", [None, "http://127.0.0.1", "http://evil.example"], ids=["none", "allowed", "evil"]
)
def test_a_host_outside_allowed_hosts_gets_400(site: ServerProcess, origin: str | None) -> None:
    # Django answers a Host outside ALLOWED_HOSTS with 400 when request.get_host() is
    # called: by CommonMiddleware or the CSRF middleware, not here. The handshake got 101
    # whatever the Host said (with an allowed Origin, or none). A page that DNS
    # rebinding put at the server's address sends its own host as both Host and Origin:
    # 400 for the Host before the Origin is read.
    mark = site.mark()
    status, body = answer(site, origin=origin, host="evil.example")
    assert (status, body) == (400, b"Host 'evil.example' is not allowed (ALLOWED_HOSTS)\n")
    assert "for /echo/: Host 'evil.example' is not allowed" in site.log(mark)


def test_a_host_with_a_port_in_allowed_hosts_opens(site: ServerProcess) -> None:
    assert answer(site, host=f"localhost:{site.port}", origin="http://localhost")[0] == 101
