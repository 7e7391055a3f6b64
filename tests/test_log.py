"""``dwebsocket.log``: what an operator reads, and seeing it in development without
configuring anything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest
from django.test import RequestFactory, override_settings

from dwebsocket import log
from dwebsocket.backends.asgi.websocket import ASGIWebSocket, AsyncWebSocket
from dwebsocket.factory import get_factory_class
from dwebsocket.protocol.handshake import generate_key
from tests.asgi.test_connection import plain_connection
from tests.inprocess import upgrade_headers


@contextlib.contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """The dwebsocket logger as in a project that configures nothing for it (pytest's
    own handlers on the root logger are put back after)."""
    handlers, level = log.logger.handlers[:], log.logger.level
    root_handlers = logging.getLogger().handlers[:]
    log.logger.handlers.clear()
    logging.getLogger().handlers.clear()
    log.logger.setLevel(logging.NOTSET)
    try:
        yield log.logger
    finally:
        log.logger.handlers[:] = handlers
        logging.getLogger().handlers[:] = root_handlers
        log.logger.setLevel(level)


def test_a_1009_is_logged_as_a_size_limit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dwebsocket"):
        log.protocol_error("1.2.3.4:5", "/echo/", "message exceeds the limit", 1009)
        log.protocol_error("1.2.3.4:5", "/echo/", "unmasked frame", 1002)
    first, second = (r.getMessage() for r in caplog.records)
    assert "over the size limit" in first and "protocol error" not in first
    assert "protocol error" in second and "(closing with 1002)" in second


def test_development_shows_dwebsocket_info_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with bare_logging() as logger:
        assert log.install_debug_handler(None) is True
        with override_settings(DEBUG=True):
            logger.info("WebSocket handshake refused with 403: Origin not allowed")
        with override_settings(DEBUG=False):
            logger.info("not in production")
    err = capsys.readouterr().err
    assert "Origin not allowed" in err and "not in production" not in err


def test_production_still_shows_warnings_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """With ``DEBUG = False`` and nothing configured, the handler must not swallow what
    Python's last-resort handler prints for an unconfigured logger (WARNING and up): a
    wrong setting under gunicorn (every handshake 503, "logged at ERROR"), metrics off,
    a gunicorn sync worker (W002) would otherwise leave no trace."""
    with bare_logging() as logger:
        assert log.install_debug_handler(None) is True
        with override_settings(DEBUG=False):
            logger.error("WEBSOCKET_MAX_CONNECTIONS must be None or an integer >= 0")
            logging.getLogger("dwebsocket.metrics").warning("metrics unavailable")
            logger.info("a client's mistake")
    err = capsys.readouterr().err
    assert "WEBSOCKET_MAX_CONNECTIONS must be" in err and "metrics unavailable" in err
    assert "a client's mistake" not in err


@pytest.mark.parametrize(
    "configured",
    [
        {"version": 1, "loggers": {"dwebsocket": {"level": "WARNING"}}},
    ],
)
def test_configured_logging_is_left_alone(configured: dict[str, object]) -> None:
    with bare_logging() as logger:
        assert log.install_debug_handler(configured) is False
        assert logger.handlers == []


def test_a_root_handler_is_left_alone() -> None:
    with bare_logging():
        logging.getLogger().addHandler(logging.NullHandler())
        assert log.install_debug_handler(None) is False


FORGED = "/ws/\n[ERROR] forged line\x1b[31m"


def test_a_websockets_repr_cannot_add_lines_to_a_log() -> None:
    """``%r`` of a ``request.websocket`` (dwebsocket's own debug and error lines, a view's
    ``logger.info("%r", ws)``) shows the path as Django's request log does: a ``%0A`` in
    the URL must not start a forged line. Default backend over a real socket, and both
    ASGI wrappers."""
    server_sock, client_sock = socket.socketpair()
    with server_sock, client_sock:
        request = RequestFactory().get(
            "/", headers=upgrade_headers(generate_key()), **{"dwebsocket.socket": server_sock}
        )
        request.path = FORGED  # PATH_INFO as a server decodes /ws/%0A...
        websocket = get_factory_class()(request).create_websocket()
        assert websocket is not None
        texts = [repr(websocket)]

    async def asgi() -> list[str]:  # a connection belongs to its loop
        sync = ASGIWebSocket(RequestFactory().get("/"), plain_connection(None, None))
        sync.request.path = FORGED
        return [repr(sync), repr(AsyncWebSocket(sync))]

    texts += asyncio.run(asgi())
    for text in texts:
        assert "\n" not in text and "\x1b" not in text, text
        assert log.printable(FORGED) in text
