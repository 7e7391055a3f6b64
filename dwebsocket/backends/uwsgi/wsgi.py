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


def wrap(application: WSGIApplication) -> WSGIApplication:
    """Return ``application`` wrapped for WebSockets under uWSGI (see the module doc).

    Plain HTTP requests pass through untouched. Idempotent."""
    if is_wrapped(application):
        return application

    def dwebsocket_uwsgi(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        environ[START_RESPONSE] = start_response

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
