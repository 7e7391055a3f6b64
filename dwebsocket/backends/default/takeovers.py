"""Where each WSGI server keeps the connection's socket: one *takeover* function per
server, and :func:`find_transport`, which asks them in order.

A takeover function returns a :class:`~.transport.Transport` when the environ is its
server's, else None; it may raise ``BackendUnavailable`` when it knows the server but
the server is configured so that a takeover cannot work. None of them reads or writes
anything (the socket is used only once the WebSocket is accepted) nor logs. To support
another server, write one function here and decorate it with :func:`takeover`
(``docs/internals/default-backend.md``, "Adding a server").

Every server's takeover lives here, uWSGI's included: it imports ``uwsgi`` inside the
function, and nothing of the uwsgi backend (``dwebsocket.backends.uwsgi``).
Measured facts behind each function: ``bench/FINDINGS.md`` and ``docs/backends.rst``.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from dwebsocket.backends.default.transport import Transport
from dwebsocket.exceptions import BackendUnavailable

__all__ = ["TAKEOVERS", "Takeover", "find_transport", "takeover"]

logger = logging.getLogger("dwebsocket")

Takeover = Callable[[dict[str, Any]], "Transport | None"]
"""``environ -> Transport | None``: one server's takeover."""

#: The takeover functions, tried in order by :func:`find_transport`.
TAKEOVERS: list[Takeover] = []


def takeover(func: Takeover) -> Takeover:
    """Register ``func`` (``environ -> Transport | None``) as a takeover function."""
    TAKEOVERS.append(func)
    return func


def find_transport(environ: dict[str, Any]) -> Transport:
    """The transport of the request in ``environ``; does not read or write anything.

    Raises ``BackendUnavailable`` when no takeover function recognises the server.
    """
    for func in TAKEOVERS:
        transport = func(environ)
        if transport is not None:
            return transport
    software = environ.get("SERVER_SOFTWARE") or "an unknown server"
    raise BackendUnavailable(
        f"the default backend cannot take the connection over from {software}; "
        "run under manage.py runserver, gevent, gunicorn or eventlet, or use the uwsgi "
        "backend under uWSGI"
    )


def _socket_of(rfile: Any) -> socket.socket | None:
    """The socket under a ``sock.makefile('rb')`` reader (``BufferedReader(SocketIO)``)."""
    sock = getattr(getattr(rfile, "raw", None), "_sock", None)
    if sock is None or not hasattr(sock, "recv") or not hasattr(sock, "shutdown"):
        return None
    return sock  # type: ignore[no-any-return]


@takeover
def explicit(environ: dict[str, Any]) -> Transport | None:
    """A server (or a test) that hands us the socket as ``environ["dwebsocket.socket"]``,
    optionally with its buffered reader as ``environ["dwebsocket.rfile"]``."""
    sock = environ.get("dwebsocket.socket")
    if sock is None:
        return None
    return Transport(sock, server="explicit", rfile=environ.get("dwebsocket.rfile"))


@takeover
def runserver(environ: dict[str, Any]) -> Transport | None:
    """``manage.py runserver``: ``wsgi.input`` is a ``LimitedStream`` over the handler's
    rfile. Since Django 4.2 it keeps only the bound ``read`` method (``_read``)."""
    from django.core.handlers.wsgi import LimitedStream

    stream = environ.get("wsgi.input")
    if not isinstance(stream, LimitedStream):
        return None
    rfile = getattr(getattr(stream, "_read", None), "__self__", None)
    sock = _socket_of(rfile)
    if sock is None:
        return None
    handler = _runserver_handler()
    if handler is None:
        return Transport(sock, server="runserver", rfile=rfile)

    def stop_runserver() -> None:
        # runserver's request handler loops while the connection is kept alive (an
        # upgrade is HTTP/1.1): it would read what follows the session (the rest of a
        # message over the limit, the client's close frame) as the next request, and
        # answer it ("Bad HTTP/0.9 request type", "Broken pipe"). It reads nothing more
        # now, and writes Django's response nowhere (its access log still shows its
        # status: 101, or 500 for a view that raised).
        handler.request_handler.close_connection = True
        handler.stdout = _Discard()

    return Transport(sock, server="runserver", rfile=rfile, on_take_over=stop_runserver)


def _runserver_handler() -> Any:
    """The ``django.core.servers.basehttp.ServerHandler`` running this request, found on
    the call stack (its ``run()`` frame), or None. Reads nothing but frames."""
    basehttp = sys.modules.get("django.core.servers.basehttp")
    if basehttp is None:
        return None
    run = basehttp.ServerHandler.run.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is run:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, basehttp.ServerHandler):
                return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Discard:
    """Where runserver writes Django's response after a takeover: nowhere."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


@takeover
def gevent_pywsgi(environ: dict[str, Any]) -> Transport | None:
    """``gevent.pywsgi``: for upgrade requests ``wsgi.input`` is the raw rfile itself."""
    if not str(environ.get("SERVER_SOFTWARE", "")).startswith("gevent/"):
        return None
    rfile = environ.get("wsgi.input")
    # An upgrade request gevent did not recognise as one (it compares the whole
    # Connection/Upgrade values) gets its Input wrapper: the rfile is inside.
    rfile = getattr(rfile, "rfile", rfile)
    sock = _socket_of(rfile)
    if sock is None:
        return None
    # pywsgi ends the connection when it finds its rfile closed after the application
    # (WSGIHandler.handle_one_request): closing it at takeover frees its buffer.
    return Transport(sock, server="gevent", rfile=rfile, close_rfile=True)


@takeover
def gunicorn(environ: dict[str, Any]) -> Transport | None:
    """gunicorn's sync, gthread and gevent workers: ``environ["gunicorn.socket"]``.

    Bytes past the request head sit in the parser's unreader, which ``wsgi.input``
    (``Body`` -> reader -> ``unreader``) leads to: ``take_buffered()`` on gunicorn 27,
    the ``buf`` BytesIO before."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    unreader = getattr(getattr(environ.get("wsgi.input"), "reader", None), "unreader", None)

    def drain() -> bytes:
        if unreader is None:
            return b""
        take = getattr(unreader, "take_buffered", None)
        if take is not None:
            return bytes(take())
        buf = getattr(unreader, "buf", None)
        if buf is None:
            return b""
        unreader.buf = io.BytesIO()
        return bytes(buf.getvalue())

    return Transport(sock, server="gunicorn", drain=drain)


@takeover
def eventlet_wsgi(environ: dict[str, Any]) -> Transport | None:
    """``eventlet.wsgi``: the socket is ``environ["eventlet.input"].get_socket()``, the
    buffered bytes in that input's ``rfile``. At the end the request is marked handled,
    or eventlet would write Django's response (and log the failure) after ours."""
    request_input = environ.get("eventlet.input")
    get_socket = getattr(request_input, "get_socket", None)
    if get_socket is None:
        return None
    sock = get_socket()
    if sock is None:
        return None

    def release() -> None:
        # WSGI_LOCAL is green-thread local: this runs in the request's green thread.
        from eventlet.wsgi import WSGI_LOCAL  # type: ignore[import-untyped]

        WSGI_LOCAL.already_handled = True

    return Transport(
        sock, server="eventlet", rfile=getattr(request_input, "rfile", None), on_release=release
    )


#: The environ keys of ``dwebsocket.backends.uwsgi.wsgi``'s WSGI wrapper (its
#: ``START_RESPONSE`` and ``TAKEN_OVER``; a test checks they are the same).
UWSGI_START_RESPONSE = "dwebsocket.uwsgi.start_response"
UWSGI_TAKEN_OVER = "dwebsocket.uwsgi.taken_over"
_warned_no_wrapper = False


@takeover
def uwsgi_connection(environ: dict[str, Any]) -> Transport | None:  # pragma: no cover - uWSGI
    """uWSGI (``--http-socket``, or ``--http`` relaying raw bytes): a dup of its connection
    fd, made at takeover (the original stays uWSGI's, which closes it).

    Measured on 2.0.31 (``docs/deployment.rst``, "The default backend under uWSGI"): the
    fd is the client's socket under ``--http-socket``, the router's under ``--http``
    (which relays raw bytes once it saw the upgrade: ``--http-websockets`` or
    ``--http-raw-body``); sockets cooperate under ``--gevent`` with monkey-patching or
    with one request per thread/process, while under ``--async`` nothing would switch
    cores; bytes a client sends *before* the 101 stay in uWSGI's parser buffer and are
    lost; after the takeover Django's response must not be written: the uwsgi backend's
    WSGI wrapper drops it (without it uWSGI writes it into the shut-down socket and logs
    ``Broken pipe``).

    Raises ``BackendUnavailable`` where a takeover cannot work: ``--async`` cores,
    ``--gevent`` without monkey-patched sockets, an ``--http`` router that will not relay
    raw bytes."""
    if "uwsgi.version" not in environ:
        return None
    import uwsgi  # type: ignore[import-untyped]

    def option(name: str) -> Any:
        value = uwsgi.opt.get(name)
        return value[-1] if isinstance(value, list) else value  # given more than once

    # The modes of dwebsocket.backends.uwsgi.loops.current_mode().
    if uwsgi.loop in (b"gevent", "gevent"):
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("socket"):
            raise BackendUnavailable(
                "the default backend under uWSGI --gevent needs monkey-patched sockets: "
                "add --gevent-early-monkey-patch (or use the uwsgi backend)"
            )
    elif uwsgi.cores > 1 and not option("threads"):  # --async, with or without --ugreen
        raise BackendUnavailable(
            "the default backend cannot serve uWSGI --async cores (its sockets would block "
            "every core); use --gevent with monkey-patching, or the uwsgi backend"
        )
    if option("http") and not (option("http-websockets") or option("http-raw-body")):
        raise BackendUnavailable(
            "uWSGI's --http router relays WebSocket bytes only with --http-websockets or "
            "--http-raw-body"
        )
    fd = uwsgi.connection_fd()

    def open_socket() -> socket.socket:
        global _warned_no_wrapper
        # From now on Django's response is not ours to send: the wrapper drops it.
        environ[UWSGI_TAKEN_OVER] = True
        if UWSGI_START_RESPONSE not in environ and not _warned_no_wrapper:
            _warned_no_wrapper = True
            logger.warning(
                "WebSockets under uWSGI without dwebsocket's WSGI wrapper: Django's response "
                "will be written after each session (and fail). Serve "
                "dwebsocket.backends.uwsgi.wsgi.get_wsgi_application() (see docs/deployment)."
            )
        return socket.socket(fileno=os.dup(fd))

    return Transport(None, server="uwsgi", open_socket=open_socket)
