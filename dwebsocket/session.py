"""Running a view as a WebSocket session, for the decorators and the middleware alike.

``run_view`` attaches ``request.websocket`` / ``request.is_websocket()``, answers a refused
handshake before the view runs, calls the view, and ends the connection when it is done.
Whoever calls ``run_view`` first for a request owns the session; nested calls (the
middleware and a decorator, or two decorators) just call the view, so a request is
never handshaken twice.

A session ends with the WebSocket's ``end_session(code, abort=...)``
(:meth:`dwebsocket.websocket.WebSocket.end_session`): ``abort`` is True when the view was
killed by a ``BaseException`` (greenlet kill, worker timeout), where only a close frame
without waiting for the peer's is appropriate.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase

from dwebsocket import dws, groups, limits
from dwebsocket.apps import report_if_not_installed
from dwebsocket.checks import report_once
from dwebsocket.exceptions import (
    BackendUnavailable,
    ConnectionClosed,
    InvalidHandshake,
    InvalidSetting,
)
from dwebsocket.factory import get_factory_class, is_upgrade
from dwebsocket.log import printable
from dwebsocket.websocket import REQUEST_STARTED, WebSocket

if TYPE_CHECKING:
    from dwebsocket.backends.asgi.websocket import AsyncWebSocket

__all__ = ["attach", "end_websocket", "is_upgrade", "run_view"]

logger = logging.getLogger("dwebsocket")

_OWNED = "_dwebsocket_session"


def attach(request: HttpRequest, websocket: WebSocket | AsyncWebSocket | None) -> None:
    """Set ``request.websocket`` and ``request.is_websocket()`` (the 0.x API); for a
    WebSocket, when it started (``REQUEST_STARTED``)."""
    if websocket is not None:
        setattr(request, REQUEST_STARTED, time.monotonic())
    request.websocket = websocket  # type: ignore[attr-defined]
    request.is_websocket = _yes if websocket is not None else _no  # type: ignore[attr-defined]


# request.is_websocket: one function for every request, not one made per request (for a
# WebSocket, it lived as long as the connection).
def _yes() -> bool:
    return True


def _no() -> bool:
    return False


def end_websocket(websocket: WebSocket, code: int, *, abort: bool = False) -> None:
    """Close ``websocket`` as the session ends (see the module docstring)."""
    websocket.end_session(code, abort=abort)


def _not_websocket(request: HttpRequest) -> HttpResponse:
    logger.info(
        "Plain HTTP request for WebSocket-only %s refused with 400", printable(request.path)
    )
    return HttpResponseBadRequest(
        "This URL only accepts WebSocket connections.\n", content_type="text/plain; charset=utf-8"
    )


def run_view(
    request: HttpRequest,
    view: Callable[..., HttpResponse | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    require: bool,
) -> HttpResponse:
    """Call ``view`` for ``request``, running the WebSocket session if it is one.

    Plain HTTP: the view runs as usual (``request.websocket`` is None), or 400 when
    ``require``. Upgrade requests: a malformed, unsupported or cross-origin handshake is
    answered (400, 426, 403) without calling the view, one over a connection cap
    (:mod:`dwebsocket.limits`) with 503, a server the backend cannot use with 501, and
    one that meets a wrong ``WEBSOCKET_*`` setting with 503 (logged at ERROR).
    Until the view accepts the connection (explicitly or by using it), whatever it
    returns or raises is handled by Django as usual. Once accepted, the connection is
    closed when the view ends: 1000 when it returns (or lets ``ConnectionClosed``
    escape), 1011 when it raises, which Django then logs as for any view. A view that
    returns None without touching the connection gets it accepted and closed with 1000;
    a response it returns once accepted goes nowhere, and what it holds is freed.
    A connection whose accept found the client gone is ended the same way (its view's
    response goes nowhere), so the backend gives it back to the server. A view that
    answers with HTTP (or raises) unaccepted refuses the connection for good: an
    ``accept()`` or ``send()`` that another thread starts after that raises
    ``ConnectionClosed`` (1006) and leaves the socket to the server.
    """
    if iscoroutinefunction(view):
        # An async def view reached through the middleware: its session is async
        # (under WSGI, Django's own way of calling an async view, and a 501 for upgrades).
        from dwebsocket.backends.asgi.session import arun_view

        return async_to_sync(arun_view)(request, view, args, kwargs, require=require)
    if getattr(request, _OWNED, False):
        if require and getattr(request, "websocket", None) is None:
            return _not_websocket(request)
        return view(request, *args, **kwargs)  # type: ignore[return-value]
    setattr(request, _OWNED, True)

    if not is_upgrade(request):
        attach(request, None)
        if require:
            return _not_websocket(request)
        return view(request, *args, **kwargs)  # type: ignore[return-value]

    report_if_not_installed()
    # The sync worker and a one-thread gthread worker cannot serve WebSockets well: the
    # first session in a gunicorn worker finds it (on the call stack) and logs the checks.
    report_once()
    try:
        groups.check_settings()
        websocket = _create_websocket(request)
        # Over a connection cap (dwebsocket.limits): 503, as for any refused handshake.
        release = _acquire(request, websocket) if websocket is not None else None
    except InvalidHandshake as exc:
        attach(request, None)
        from dwebsocket.handshake import refuse

        return refuse(request, exc)
    except BackendUnavailable as exc:
        attach(request, None)
        from dwebsocket.handshake import unavailable

        return unavailable(request, exc)
    except InvalidSetting as exc:
        attach(request, None)
        from dwebsocket.handshake import misconfigured

        return misconfigured(request, exc)
    attach(request, websocket)
    if websocket is None or release is None:  # the factory saw no upgrade after all
        return _not_websocket(request) if require else view(request, *args, **kwargs)  # type: ignore[return-value]
    try:
        return _run_session(request, websocket, view, args, kwargs)
    finally:
        release()
        _leave_groups_unopened(websocket)


def _leave_groups_unopened(websocket: WebSocket) -> None:
    """A connection that never opened (the view answered with HTTP, raised, or its accept
    found the client gone) gets no ``websocket_closed``, the signal on which members
    leave their groups; its view may have joined some before the accept all the same
    (docs/channels.rst's chat does). Closed unaccepted, it can no longer open: it leaves
    them here. Never blocks unless it is in a group (then as that signal would)."""
    groups = sys.modules.get("dwebsocket.groups")
    if (
        groups is not None
        and not websocket.accepted
        and websocket.is_closed()
        and groups._involved(websocket)
    ):
        groups._leave_closed(websocket)


def _create_websocket(request: HttpRequest) -> WebSocket | None:
    """The backend's unaccepted ``request.websocket``, or None for plain HTTP. A request
    from an ASGI ``websocket`` scope (:mod:`dwebsocket.asgi`) gets the ASGI backend's,
    whatever ``WEBSOCKET_FACTORY_CLASS`` says. Raises what the factories raise."""
    if "dwebsocket.backends.asgi.session" in sys.modules:  # else no ASGI server here
        from dwebsocket.backends.asgi.session import connection_of, create_websocket

        connection = connection_of(request)
        if connection is not None:
            return create_websocket(request, connection)  # the envelope: the connection's
    websocket = get_factory_class()(request).create_websocket()
    if websocket is not None:
        websocket = dws.adopt(websocket, request)  # the client may speak the envelope
    return websocket


def _acquire(request: HttpRequest, websocket: WebSocket) -> Callable[[], None]:
    """The session's slots (:mod:`dwebsocket.limits`, and under ASGI the worker thread a
    sync view holds); returns what gives them back. Raises ``TooManyConnections``."""
    release = limits.acquire(request)
    if "dwebsocket.backends.asgi.session" not in sys.modules:
        return release  # no ASGI server in this process
    from dwebsocket.backends.asgi.session import connection_of, with_thread_slot

    if connection_of(request) is None:
        return release
    return with_thread_slot(release)


def _run_session(
    request: HttpRequest,
    websocket: WebSocket,
    view: Callable[..., HttpResponse | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> HttpResponse:
    """The part of :func:`run_view` once the handshake is valid: the view, then the end
    of the connection."""
    try:
        response = view(request, *args, **kwargs)
        if not websocket.accepted:
            if response is not None and websocket.refuse_session():
                # The view answered with HTTP (a 403, say) instead: a helper's accept
                # or send() after this raises, the socket stays the server's.
                _count_refused(request, response.status_code)
                return response
            # A view that returned None untouched: accepted here, so what websocket_opened's
            # receivers raise (a greenlet kill, a worker timeout) ends the session as it
            # would in the view. A client gone during the handshake: ended all the same.
            with contextlib.suppress(ConnectionClosed):
                websocket.accept()
    except ConnectionClosed as exc:
        logger.debug("ConnectionClosed escaped the view for %s: %s", printable(request.path), exc)
        end_websocket(websocket, 1000)
        return _session_over()
    except Exception as exc:
        if _taken_over(websocket):
            end_websocket(websocket, 1011)
        else:
            _count_refused(request, _answer_status(exc))
        raise  # Django answers and logs it, as for any view
    except BaseException as exc:
        # A greenlet kill, a worker timeout, Ctrl-C: say goodbye, free the socket, go on.
        if _taken_over(websocket):
            end_websocket(websocket, 1001 if _going_away(exc) else 1011, abort=True)
        raise
    end_websocket(websocket, 1000)
    if response is not None:
        _discard(response)
    return _session_over()


def _discard(response: HttpResponseBase) -> None:
    """Free what a response the view returned after accepting holds (a
    ``FileResponse``'s file, a streaming generator): it goes nowhere, so no server
    closes it. Not with its ``close()``, which would send ``request_finished`` a second
    time for the request (the session's own response sends it) and so close the
    thread's database connections, even a test's inside its transaction. What a closer
    raises is ignored, as ``close()`` does; a view's return value that is no response
    is left alone, as before."""
    closers = getattr(response, "_resource_closers", None)
    if not isinstance(closers, list):
        return
    for close in closers:
        with contextlib.suppress(Exception):
            close()
    closers.clear()


def _taken_over(websocket: WebSocket) -> bool:
    """Whether the backend began taking the connection over: accepted (or being
    accepted by another thread), or closed by an accept that found the client gone.
    Either way only ``end_websocket`` gives the connection back to the server (eventlet
    would otherwise write Django's response on it and log a traceback; a backend's own
    fds would stay open). If not, the connection is refused from now on, in the same
    step (``refuse_session``): Django's answer (a 500) is the server's to write."""
    return not websocket.refuse_session()


def _count_refused(request: HttpRequest, status: int) -> None:
    from dwebsocket.handshake import count_refused

    count_refused(request, status)


def _answer_status(exc: Exception) -> int:
    """The status of Django's answer to ``exc`` raised by a view, as
    ``django.core.handlers.exception.response_for_exception`` chooses it."""
    if isinstance(exc, Http404):
        return 404
    if isinstance(exc, PermissionDenied):
        return 403
    if isinstance(exc, (BadRequest, SuspiciousOperation, MultiPartParserError)):
        return 400
    return 500


def _closed_only(exc: BaseException) -> bool:
    """Whether ``exc`` is an exception group (an ``asyncio.TaskGroup``'s, Python 3.11+) of
    nothing but ``ConnectionClosed``, however nested: the client left under several of the
    view's tasks, which is no more the view failing than one ``ConnectionClosed`` is."""
    group = getattr(builtins, "BaseExceptionGroup", None)
    return group is not None and isinstance(exc, group) and exc.split(ConnectionClosed)[1] is None


def _going_away(exc: BaseException) -> bool:
    """The server or worker is stopping (RFC 6455 7.4.1: 1001), rather than failing."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    return any(cls.__name__ == "GreenletExit" for cls in type(exc).__mro__)


def _session_over() -> HttpResponse:
    # The backend has shut the connection down: the server's attempt to write this
    # response fails quietly, as for a client that went away. Its status is what the
    # server's access log shows for the session: 101 (a view that raised stays a 500).
    return HttpResponse(status=101)
