"""uWSGI's websocket API alone (no Django, no dwebsocket), for test_defects.py: what
uWSGI does whoever calls it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import uwsgi  # type: ignore[import-untyped]  # served by uWSGI only


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Blocking websocket_recv / websocket_send echo, uWSGI's documented pattern."""
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], "", "")
    while True:
        try:
            message = uwsgi.websocket_recv()
        except OSError:
            return []
        uwsgi.websocket_send(message)


def suspend_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """uWSGI's documented --async pattern: wait_fd_read + suspend, then recv_nb."""
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], "", "")
    fd = uwsgi.connection_fd()
    while True:
        try:
            while message := uwsgi.websocket_recv_nb():
                uwsgi.websocket_send(message)
        except OSError:
            return []
        uwsgi.wait_fd_read(fd)
        uwsgi.suspend()
