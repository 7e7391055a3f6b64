"""The WSGI wrapper uWSGI deployments serve: ``get_wsgi_application()`` or ``wrap(app)``.

Once a WebSocket is accepted, uWSGI counts the response headers as sent, so Django's own
``start_response`` after the view raises ``OSError: headers already sent``: the request
then ends in a traceback, ``request_finished`` never fires and database connections are
not cleaned up. The wrapper swallows that ``start_response`` and the response body,
closes Django's response (which sends ``request_finished``) and lets uWSGI end the
request writing nothing more. It also hands the real ``start_response`` to the uwsgi
backend, which sends its own 101 response through it (uWSGI's ``websocket_handshake``
adds an obsolete ``Sec-WebSocket-Origin`` header and, when the client offered
subprotocols but none was chosen, echoes the whole offer, which clients reject).

The same holds for the default backend when it takes a connection over under uWSGI.

Under ``--gevent``, the wrapper also makes a stopping worker say goodbye (1001) to its
open connections, either backend's, as ``dwebsocket.contrib.gunicorn`` does for gunicorn:
at its first request each worker adds a handler of its own for SIGHUP (graceful reload,
``touch-reload``), which uWSGI's gevent loop would otherwise spend waiting
``--worker-reload-mercy`` (60 s) for requests that never end before killing the worker,
and chains ``uwsgi.atexit``, which the loop calls on a quick stop (SIGINT; SIGTERM with
``--die-on-term``) before it exits, while the connections are still served.

This module does not import ``uwsgi``: it is safe to import anywhere (system checks do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "CONNECTION",
    "START_RESPONSE",
    "TAKEN_OVER",
    "get_wsgi_application",
    "is_wrapped",
    "wrap",
]

#: environ key: the server's ``start_response``, for the backend's own 101 response.
START_RESPONSE = "dwebsocket.uwsgi.start_response"
#: environ key, set once the 101 response is out: the connection (or True).
TAKEN_OVER = "dwebsocket.uwsgi.taken_over"
#: environ key, set when the uwsgi backend creates the request's connection (which holds
#: fds of its own from then on): released as the request ends, accepted or not.
CONNECTION = "dwebsocket.uwsgi.connection"

_MARK = "_dwebsocket_uwsgi_wrapper"

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _discard(data: bytes) -> None:
    """The ``write`` callable handed to Django after a takeover: writes nothing."""


#: The goodbyes are wired in this process (see :func:`_say_goodbye_on_stop`).
_goodbyes = False
#: The close reason of a stop's 1001.
REASON = "server shutting down"


def _say_goodbye_on_stop() -> None:
    """In a uWSGI worker running gevent's loop, close the open WebSockets with 1001 when
    the worker stops: on SIGHUP (a graceful reload: a handler of our own, next to the
    loop's, which waits for the requests) and in ``uwsgi.atexit`` (a quick stop: the loop
    calls it before exiting, the hub still running). Called at the worker's first
    request, in the hub's thread; once per process. Nothing under other loops: there
    uWSGI runs no ``atexit`` while a request is under way, and its C signal handlers are
    the worker's."""
    global _goodbyes
    _goodbyes = True
    import uwsgi  # type: ignore[import-untyped]

    if uwsgi.loop not in (b"gevent", "gevent"):
        return
    import signal

    import gevent  # type: ignore[import-untyped]

    # Loaded now, not when a stop comes: a goodbye said before any WebSocket opened in
    # the worker must still mark it stopping, so that a handshake under way then (the
    # first one, in a middleware still) gets 1001 as it opens.
    from dwebsocket.backends.default import registry
    from dwebsocket.backends.uwsgi.websocket import uWsgiWebSocket
    from dwebsocket.signals import websocket_closed, websocket_opened

    # The uwsgi backend's connections, which the default backend's registry does not
    # hold. Only the request's own greenlet may write to one: close() from here asks it
    # to, and it does at once if it waits in wait() or iterates, as views do.
    open_here: set[uWsgiWebSocket] = set()
    stopping: list[bool] = []

    def opened(sender: Any, websocket: Any, **kwargs: Any) -> None:
        if isinstance(websocket, uWsgiWebSocket):
            open_here.add(websocket)
            if stopping:  # its handshake was under way: 1001 once it waits
                gevent.spawn(registry.goodbye, websocket, REASON)

    def closed(sender: Any, websocket: Any, **kwargs: Any) -> None:
        open_here.discard(websocket)

    websocket_opened.connect(opened, weak=False, dispatch_uid="dwebsocket.uwsgi.goodbyes")
    websocket_closed.connect(closed, weak=False, dispatch_uid="dwebsocket.uwsgi.goodbyes")

    def going_away() -> None:
        stopping.append(True)  # before the snapshot: one opening meanwhile is in either
        registry.going_away()  # the default backend's, waiting for their views
        websockets = list(open_here)
        if not websockets:
            return
        registry.logger.info(
            "Server stopping: closing %d WebSocket(s) with %d", len(websockets), registry.GOING_AWAY
        )
        for websocket in websockets:
            registry.goodbye(websocket, REASON)
        # Until their views have returned (the fds released), as the registry waits:
        # the worker exits, or is killed, once this returns.
        # gevent.sleep: the hub runs the views meanwhile, monkey-patched or not.
        registry.wait_until(lambda: all(w.released for w in websockets), sleep=gevent.sleep)

    def on_reload() -> None:  # gevent runs it in a greenlet of its own
        going_away()

    gevent.signal_handler(signal.SIGHUP, on_reload)
    previous = getattr(uwsgi, "atexit", None)

    def at_exit() -> None:
        try:
            going_away()
        finally:
            if callable(previous):
                previous()

    uwsgi.atexit = at_exit


def wrap(application: WSGIApplication) -> WSGIApplication:
    """Return ``application`` wrapped for WebSockets under uWSGI (see the module doc).

    Plain HTTP requests pass through untouched. Idempotent."""
    if is_wrapped(application):
        return application

    def dwebsocket_uwsgi(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ[START_RESPONSE] = start_response
        if not _goodbyes and "uwsgi.version" in environ:
            _say_goodbye_on_stop()

        def guarded_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if environ.get(TAKEN_OVER):
                return _discard
            if exc_info is not None:
                return start_response(status, headers, exc_info)  # type: ignore[no-any-return]
            return start_response(status, headers)  # type: ignore[no-any-return]

        try:
            result = application(environ, guarded_start_response)
        finally:
            created = environ.get(CONNECTION)
            if created is not None and not environ.get(TAKEN_OVER):
                created.release()  # refused over HTTP: its fds are not needed
        connection = environ.get(TAKEN_OVER)
        if not connection:
            return result
        try:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # Django's response: sends request_finished
        finally:
            release = getattr(connection, "release", None)
            if release is not None:
                release()
        return []

    setattr(dwebsocket_uwsgi, _MARK, True)
    dwebsocket_uwsgi.__wrapped__ = application  # type: ignore[attr-defined]
    return dwebsocket_uwsgi


def is_wrapped(application: Any) -> bool:
    """True if ``application`` is (or wraps, through ``__wrapped__``) this wrapper."""
    seen = 0
    while application is not None and seen < 10:
        if getattr(application, _MARK, False):
            return True
        application = getattr(application, "__wrapped__", None)
        seen += 1
    return False


def get_wsgi_application() -> WSGIApplication:
    """Django's ``get_wsgi_application()``, wrapped: what a uWSGI ``wsgi.py`` serves."""
    from django.core.wsgi import get_wsgi_application as django_application

    return wrap(django_application())
