"""uWSGI's websocket API alone (no Django, no dwebsocket), for test_defects.py: what
uWSGI does whoever calls it."""

from __future__ import annotations

import select
import socket
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


def echo_after_eof(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Receive one message, wait (10 s at most) until the client's end of the stream (TCP
    FIN) reached this connection, then send the message back: whether a client that
    half-closed still gets an answer, whatever the timing."""
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], "", "")
    message = uwsgi.websocket_recv()
    fd = uwsgi.connection_fd()
    conn = socket.socket(fileno=fd)
    try:
        while select.select([fd], [], [], 10)[0]:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    break
            except OSError:
                break
            uwsgi.websocket_recv_nb()  # a ping or pong: uWSGI consumes it
    finally:
        conn.detach()
    uwsgi.websocket_send(message)
    return []
