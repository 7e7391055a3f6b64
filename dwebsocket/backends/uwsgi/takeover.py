"""The default backend under uWSGI: a raw takeover of ``uwsgi.connection_fd()``.

The default backend then speaks RFC 6455 + RFC 7692 itself (close codes, pong payloads,
fragments, UTF-8 checks, permessage-deflate), which uWSGI's websocket API cannot.
Measured on 2.0.31, what it needs from uWSGI:

- the connection fd is the client's socket under ``--http-socket``, the router's under
  ``--http`` (which relays raw bytes once it saw the upgrade: ``--http-websockets`` or
  ``--http-raw-body``);
- sockets that cooperate: ``--gevent`` with monkey-patching (the fd is wrapped in
  ``socket.socket``, gevent's when patched) or one request per thread/process. Under
  ``--async`` nothing would switch cores: refused;
- bytes a client sends *before* the 101 (RFC 6455 4.1 forbids it) stay in uWSGI's
  parser buffer, out of Python's reach: they are lost;
- after the takeover Django's response must not be written (the WSGI wrapper of
  :mod:`dwebsocket.backends.uwsgi.wsgi` swallows it; without it uWSGI writes it into the
  shut-down socket and logs ``Broken pipe``).

Called by the default backend's takeover registry (``dwebsocket/backends/default/
transport.py``), which must not import ``uwsgi`` itself.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import uwsgi  # type: ignore[import-untyped]

from dwebsocket.backends.default.transport import Transport
from dwebsocket.exceptions import BackendUnavailable

from . import wsgi
from .loops import Mode, current_mode

__all__ = ["transport"]

logger = logging.getLogger("dwebsocket")
_warned_no_wrapper = False


class UwsgiTransport(Transport):
    """A dup of uWSGI's connection fd, made at first use (a view that answers with plain
    HTTP never needs it); the original fd stays uWSGI's, which closes it."""

    def __init__(self, fd: int, environ: dict[str, Any]) -> None:
        self._fd = fd
        self._sock: socket.socket | None = None
        self._environ = environ
        super().__init__(None, server="uwsgi")  # type: ignore[arg-type]

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(fileno=os.dup(self._fd))
        return self._sock

    @sock.setter
    def sock(self, value: socket.socket | None) -> None:
        if value is not None:
            self._sock = value

    def take_over(self, timeout: float | None, io: Any = None) -> bytes:
        # From now on Django's response is not ours to send: the wrapper drops it.
        self._environ[wsgi.TAKEN_OVER] = True
        return super().take_over(timeout, io)

    def release(self) -> None:
        super().release()
        if self._sock is not None:
            self._sock.close()  # our dup only


def _option(name: str) -> bool:
    return bool(uwsgi.opt.get(name))


def transport(environ: dict[str, Any]) -> Transport | None:
    """The takeover of a uWSGI request, None when ``environ`` is not uWSGI's.

    Raises ``BackendUnavailable`` where a takeover cannot work: ``--async`` cores,
    ``--gevent`` without monkey-patched sockets, an ``--http`` router that will not relay
    raw bytes."""
    if "uwsgi.version" not in environ:
        return None
    mode = current_mode()
    if mode is Mode.ASYNC:
        raise BackendUnavailable(
            "the default backend cannot serve uWSGI --async cores (its sockets would block "
            "every core); use --gevent with monkey-patching, or the uwsgi backend"
        )
    if mode is Mode.GEVENT:
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("socket"):
            raise BackendUnavailable(
                "the default backend under uWSGI --gevent needs monkey-patched sockets: "
                "add --gevent-early-monkey-patch (or use the uwsgi backend)"
            )
    if _option("http") and not (_option("http-websockets") or _option("http-raw-body")):
        raise BackendUnavailable(
            "uWSGI's --http router relays WebSocket bytes only with --http-websockets or "
            "--http-raw-body"
        )
    global _warned_no_wrapper
    if wsgi.START_RESPONSE not in environ and not _warned_no_wrapper:
        _warned_no_wrapper = True
        logger.warning(
            "WebSockets under uWSGI without dwebsocket's WSGI wrapper: Django's response "
            "will be written after each session (and fail). Serve "
            "dwebsocket.backends.uwsgi.wsgi.get_wsgi_application() (see docs/deployment)."
        )
    return UwsgiTransport(uwsgi.connection_fd(), environ)
