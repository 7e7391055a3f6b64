"""WebSocket sessions under ASGI: the ``request.websocket`` of a ``websocket`` scope, and the
session of an ``async def`` view (:func:`arun_view`, what the decorators run for one).

A sync view's session runs in the worker thread Django gives the view (one per request,
``asgiref``'s ``ThreadSensitiveContext``) and holds it until the view returns:
``WEBSOCKET_ASGI_THREADS`` (default 1000) caps how many do at once per process, and a
handshake over it is refused with 503 and ``Retry-After``, before the view runs, rather
than queued. Async views hold no thread, unless a sync-only middleware runs them from
one (:func:`dwebsocket.backends.asgi.threads.held`): then they count against the cap too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from dwebsocket import dws, groups, limits
from dwebsocket.backends.asgi import threads
from dwebsocket.backends.asgi.connection import ASGIConnection
from dwebsocket.backends.asgi.websocket import ASGIWebSocket, AsyncWebSocket
from dwebsocket.conf import settings
from dwebsocket.exceptions import (
    BackendUnavailable,
    ConnectionClosed,
    InvalidHandshake,
    InvalidSetting,
    TooManyConnections,
)
from dwebsocket.log import printable

__all__ = [
    "SCOPE_KEY",
    "arun_view",
    "connection_of",
    "create_websocket",
    "needs_asgi",
    "thread_slot",
]

logger = logging.getLogger("dwebsocket")

#: Where ``dwebsocket.asgi`` puts the scope's connection in ``request.META``.
SCOPE_KEY = "dwebsocket.asgi.connection"

_lock = threading.Lock()
_threads = 0


def connection_of(request: HttpRequest) -> ASGIConnection | None:
    """The ASGI connection of a request built from a ``websocket`` scope, else None."""
    connection = request.META.get(SCOPE_KEY)
    return connection if isinstance(connection, ASGIConnection) else None


def create_websocket(request: HttpRequest, connection: ASGIConnection) -> ASGIWebSocket:
    """The unaccepted sync ``request.websocket`` of a ``websocket`` scope.

    The server validated the handshake itself (key, version, method); this checks what
    some servers do not: one ``Host`` header (uvicorn and granian accept none, or two,
    which Django joins; RFC 9112 3.2), no body (granian takes one, hypercorn when it comes
    after the head: it would be read as frames), then the Host and Origin as for every
    backend (:func:`dwebsocket.handshake.check_host_and_origin`; the Origin is
    ``Sec-WebSocket-Origin`` in a hybi draft's handshake, which daphne accepts). Raises
    ``InvalidHandshake`` (400) or ``ForbiddenOrigin`` (403). Never blocks."""
    from dwebsocket.handshake import check_host_and_origin, handshake_origin, request_headers
    from dwebsocket.protocol.handshake import check_host, check_no_body

    headers = request_headers(request.META)
    check_host(headers.get("host"))
    check_no_body(headers)
    check_host_and_origin(request, handshake_origin(headers))
    return ASGIWebSocket(request, connection)


def thread_slot() -> Callable[[], None]:
    """Take one of the ``WEBSOCKET_ASGI_THREADS`` slots of sessions holding a worker
    thread (a sync view's; an async view's under a sync-only middleware); return the
    function that gives it back (once; later calls do nothing). Raises
    ``TooManyConnections`` (503) at the cap. Never blocks."""
    global _threads
    cap = settings.WEBSOCKET_ASGI_THREADS
    with _lock:
        if cap is not None and _threads >= cap:
            raise TooManyConnections(
                f"too many WebSocket sessions holding a thread under ASGI (WEBSOCKET_ASGI_THREADS "
                f"= {cap}); retry later",
                limits.RETRY_AFTER,
            )
        _threads += 1
    released = False

    def release() -> None:
        global _threads
        nonlocal released
        with _lock:
            if not released:
                released = True
                _threads -= 1

    return release


def sync_threads() -> int:
    """WebSocket sessions holding a worker thread now (a ``WEBSOCKET_ASGI_THREADS``
    slot), in this process."""
    return _threads


def needs_asgi(request: HttpRequest) -> HttpResponse:
    """501 for a WebSocket request to an ``async def`` view under a WSGI server."""
    from dwebsocket.handshake import unavailable

    return unavailable(
        request,
        _NeedsASGI(
            "this view is an async def view, and async WebSocket views run only under an "
            "ASGI server: serve the project with dwebsocket.asgi.get_asgi_application() "
            "(uvicorn, daphne, hypercorn; see dwebsocket's docs/asgi.rst), or make the view "
            "a plain def view"
        ),
    )


class _NeedsASGI(BackendUnavailable):
    pass


async def arun_view(
    request: HttpRequest,
    view: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    require: bool,
) -> HttpResponse:
    """:func:`dwebsocket.session.run_view` for an ``async def`` view: the same answers
    (400, 403, 426, 503 before the view; 1000 or 1011 after it), with an
    :class:`AsyncWebSocket`. A WebSocket request outside ASGI gets 501 naming the fix.
    The session holds no thread, and takes no ``WEBSOCKET_ASGI_THREADS`` slot, unless a
    sync frame of the request waits for it (see :func:`_acquire`)."""
    from dwebsocket.handshake import misconfigured, refuse
    from dwebsocket.session import _OWNED, _not_websocket, attach, is_upgrade

    if getattr(request, _OWNED, False):
        if require and getattr(request, "websocket", None) is None:
            return _not_websocket(request)
        return await view(request, *args, **kwargs)  # type: ignore[no-any-return]
    setattr(request, _OWNED, True)

    if not is_upgrade(request):
        attach(request, None)
        if require:
            return _not_websocket(request)
        return await view(request, *args, **kwargs)  # type: ignore[no-any-return]
    connection = connection_of(request)
    if connection is None:
        attach(request, None)
        from dwebsocket.handshake import refuse_not_taken

        return refuse_not_taken(request) or needs_asgi(request)
    try:
        groups.check_settings()
        websocket = AsyncWebSocket(create_websocket(request, connection))
        release = _acquire(request)
    except InvalidHandshake as exc:
        attach(request, None)
        return refuse(request, exc)
    except InvalidSetting as exc:
        attach(request, None)
        return misconfigured(request, exc)
    attach(request, websocket)
    try:
        return await _arun_session(request, websocket, view, args, kwargs)
    finally:
        release()


def _acquire(request: HttpRequest) -> Callable[[], None]:
    """The session's :mod:`dwebsocket.limits` slots, and a ``WEBSOCKET_ASGI_THREADS`` one
    if a sync frame of the request holds its worker thread while the view runs
    (:func:`threads.held`); returns what gives them back. Raises
    ``TooManyConnections``. Never blocks."""
    release = limits.acquire(request)
    if not threads.held():
        return release
    return with_thread_slot(release)


def with_thread_slot(release: Callable[[], None]) -> Callable[[], None]:
    """Take a ``WEBSOCKET_ASGI_THREADS`` slot on top of the slots ``release`` gives back;
    return what gives back both. If the slot is refused (``TooManyConnections``), gives
    back ``release``'s first and raises. Never blocks."""
    try:
        release_thread = thread_slot()
    except BaseException:
        release()
        raise

    def release_both() -> None:
        release_thread()
        release()

    return release_both


async def _arun_session(
    request: HttpRequest,
    websocket: AsyncWebSocket,
    view: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> HttpResponse:
    from dwebsocket.session import _closed_only, _going_away, _session_over

    try:
        response = await view(request, *args, **kwargs)
    except ConnectionClosed as exc:
        logger.debug("ConnectionClosed escaped the view for %s: %s", printable(request.path), exc)
        await websocket.end_session(1000)
        return _session_over()
    except Exception as exc:
        if _closed_only(exc):  # a TaskGroup's: the client left under several tasks
            logger.debug(
                "ConnectionClosed escaped the view for %s: %r", printable(request.path), exc
            )
            await websocket.end_session(1000)
            return _session_over()
        if not websocket.connection.refuse_session():  # else Django's 500 is the answer
            await websocket.end_session(1011)
        raise
    except BaseException as exc:  # cancelled: the server is stopping, or the task was killed
        if not websocket.connection.refuse_session():
            going = _going_away(exc) or isinstance(exc, asyncio.CancelledError)
            await websocket.end_session(1001 if going else 1011, abort=True)
        raise
    if not websocket.accepted:
        # Refused in one step against a task's accept: one begun meanwhile (its
        # websocket.accept sent) makes the session end the connection instead, and
        # one begun later raises ConnectionClosed.
        if response is not None and websocket.connection.refuse_session():
            return response  # type: ignore[no-any-return]
        try:
            await websocket.accept()
        except ConnectionClosed:
            await _discard_returned(response)
            return _session_over()
    await websocket.end_session(1000)
    await _discard_returned(response)
    return _session_over()


async def _discard_returned(response: HttpResponseBase | None) -> None:
    """:func:`dwebsocket.session._discard` ``response``, if the view returned one: in a
    worker thread, as Django closes an async view's response (its closers may be sync
    code)."""
    if response is not None:
        from dwebsocket.session import _discard

        await sync_to_async(_discard, thread_sensitive=True)(response)


def adopt_dws(request: HttpRequest) -> bool:
    """Whether the client announced dwebsocket's envelope (the connection answers its
    pings itself, for sync and async views alike)."""
    return dws.announced(request)
