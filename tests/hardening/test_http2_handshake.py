"""WebSockets over HTTP/2 (RFC 8441): hypercorn with a certificate speaks h2, and tells
the browser it takes WebSockets there (SETTINGS_ENABLE_CONNECT_PROTOCOL), so Chromium
opens ``wss://`` with an extended CONNECT on the page's h2 connection, with no
``Upgrade``, ``Connection`` or ``Sec-WebSocket-Key`` at all. The view sees the same
``websocket`` scope (hypercorn makes ``Host`` from ``:authority``), and the handshake's
checks (Host, Origin) hold there too."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser import WAIT_MS
from tests.hardening.test_handshake_answers import project_env
from tests.requirements import executable
from tests.servers import HOST, REPO, project_server

if TYPE_CHECKING:  # Chromium's tests are server tests: the matrix has no playwright
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

#: Open a WebSocket from the page, send "hello": what came back, or how it closed.
ECHO = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send("hello");
    ws.onmessage = (event) => { resolve("echo " + event.data); ws.close(); };
    ws.onclose = (event) => resolve("closed " + event.code);
})"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    argv = [executable("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    argv += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key


def hypercorn_h2(
    certificate: tuple[Path, Path], **settings: object
) -> tuple[Callable[[int], list[str]], dict[str, str]]:
    """hypercorn's command line with TLS (so h2) on a port, and its environment."""

    def argv(port: int) -> list[str]:
        line = [str(Path(sys.executable).with_name("hypercorn")), "--bind", f"{HOST}:{port}"]
        line += ["--certfile", str(certificate[0]), "--keyfile", str(certificate[1])]
        return [*line, "--access-logfile", "-", "tests.asgi.app:application"]

    return argv, project_env(**settings)


@pytest.mark.parametrize(
    ("urls", "origins", "expected"),
    [
        ("tests.asgi.urls", None, "echo hello"),
        ("tests.asgi.async_urls", None, "echo hello"),
        # The page's origin refused: 403 on the h2 stream, which the browser reports as
        # a failed connection.
        ("tests.asgi.urls", ["https://other.example"], "closed 1006"),
    ],
    ids=["sync", "async", "foreign-origin"],
)
def test_a_websocket_over_http2(
    browser: Browser,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    urls: str,
    origins: list[str] | None,
    expected: str,
) -> None:
    log = tmp_path / "hypercorn.log"
    argv, env = hypercorn_h2(certificate, ROOT_URLCONF=urls, WEBSOCKET_ALLOWED_ORIGINS=origins)
    # The browser's h2 connection is closed before hypercorn stops: stopped with one
    # open, hypercorn logs a CancelledError traceback of its own.
    with project_server(argv, REPO, env, log) as (_, port):
        context = browser.new_context(ignore_https_errors=True)
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"https://{HOST}:{port}/")  # a page of that origin (its 404)
            assert page.evaluate(ECHO, f"wss://{HOST}:{port}/echo/") == expected
        finally:
            context.close()
    text = log.read_text()
    assert '"GET /echo/ 2"' in text, text  # over HTTP/2, not a second connection's 1.1
    refused = "refused with 403" in text
    assert refused == (origins is not None), text
