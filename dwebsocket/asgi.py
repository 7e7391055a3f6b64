"""WebSocket views under ASGI servers: :func:`get_asgi_application`.

In ``asgi.py``, instead of Django's::

    from dwebsocket.asgi import get_asgi_application

    application = get_asgi_application()

HTTP goes to Django's ``ASGIHandler`` unchanged. A ``websocket`` scope becomes a request
(path, query string, headers, cookies, client address) that goes through the same URLconf,
middleware (sessions, ``request.user``) and decorators as under WSGI, and the view gets
``request.websocket``: the sync one in a worker thread for a plain view, an async one for an
``async def`` view (:mod:`dwebsocket.backends.asgi`). The server speaks the protocol; the
ASGI events are mapped as follows:

=====================================  ==================================================
dwebsocket                              ASGI
=====================================  ==================================================
the request arrives                    ``websocket.connect`` (received first)
``accept(subprotocol)``, lazily         ``websocket.accept``
the view answers with HTTP (403, ...)   ``websocket.http.response.start`` / ``.body`` where
                                        the server has that extension, else
                                        ``websocket.close`` before the accept: 403
``wait()``, ``read()``, iteration       ``websocket.receive``
``send()``                              ``websocket.send``
``close(code, reason)``                 ``websocket.close``
peer closed or vanished (close_code)    ``websocket.disconnect``
=====================================  ==================================================

``lifespan`` scopes are answered (startup and shutdown complete at once).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core import signals
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.http import HttpResponseBase
from django.urls import set_script_prefix

from dwebsocket import dws
from dwebsocket.backends.asgi.connection import ASGIConnection, count_refusal
from dwebsocket.backends.asgi.session import SCOPE_KEY
from dwebsocket.backends.asgi.threads import session_context
from dwebsocket.conf import settings
from dwebsocket.exceptions import InvalidSetting

__all__ = ["ASGIHandler", "get_asgi_application"]

logger = logging.getLogger("dwebsocket")

# As django-stubs spells them for Django's ASGIHandler.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


def get_asgi_application() -> ASGIHandler:
    """Set Django up and return the ASGI application: Django's for HTTP, dwebsocket's for
    ``websocket`` scopes. A drop-in for ``django.core.asgi.get_asgi_application``."""
    import django

    django.setup(set_prefix=False)
    return ASGIHandler()


class ASGIHandler(DjangoASGIHandler):
    """Django's ``ASGIHandler`` that also serves ``websocket`` and ``lifespan`` scopes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            # One worker thread per session for sync code, as Django gives each request,
            # given back while the session makes no sync call (backends/asgi/threads.py).
            async with session_context():
                await self.handle_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.handle_lifespan(receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def handle_lifespan(self, receive: Receive, send: Send) -> None:
        """Answer the ``lifespan`` protocol: nothing to start or stop."""
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One ``websocket`` scope: the request through Django, the session in the view."""
        event = await receive()
        if event["type"] != "websocket.connect":
            return  # websocket.disconnect: the client left before anything happened
        try:
            connection = ASGIConnection(
                scope,
                receive,
                send,
                max_message_size=settings.WEBSOCKET_MAX_MESSAGE_SIZE,
                close_timeout=settings.WEBSOCKET_CLOSE_TIMEOUT,
                queue_limit=settings.WEBSOCKET_SEND_QUEUE_SIZE,
            )
        except InvalidSetting as exc:
            logger.error("%s: WebSocket handshakes are refused with 503 until it is fixed", exc)
            await _refuse_raw(
                scope, send, 503, b"WebSockets are not available: the server is misconfigured.\n"
            )
            return
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(http_scope(scope), io.BytesIO())
        response: HttpResponseBase | None = None
        try:
            if request is None:
                assert error_response is not None
                response = error_response
            else:
                request.META[SCOPE_KEY] = connection
                # The upgrade is the server's; the views see it as under WSGI.
                request.META.setdefault("HTTP_UPGRADE", "websocket")
                connection.speaks_dws = dws.announced(request)
                try:
                    response = await self.run_get_response(request)
                except asyncio.CancelledError:
                    # The server is stopping (hypercorn after its graceful timeout): going
                    # away, not the 1000 of a view that returned; a sync view's thread
                    # goes on until its wait() sees the close.
                    connection.going_away()
                    raise
            if connection.answer_due:
                # The view answered with HTTP (or never was a WebSocket view).
                await connection.refuse(*await _http_parts(response))
        finally:
            await connection.finish()
            if response is None:
                # Cancelled: request_finished all the same, as Django's handler sends it
                # for a cancelled request (its sync receivers after the view's thread).
                await signals.request_finished.asend(sender=self.__class__)
        # request_finished, in the session's thread (free again: the view returned).
        await sync_to_async(response.close)()


def http_scope(scope: Scope) -> dict[str, Any]:
    """The ``http`` scope Django's request class reads, made from a ``websocket`` one."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "ws"), "http")
    return {**scope, "type": "http", "method": "GET", "scheme": scheme}


async def _http_parts(
    response: HttpResponseBase,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of ``response``, as ``websocket.http.response`` wants. A
    streamed body (a ``FileResponse``, a generator's) is read whole, as Django's own ASGI
    handler reads a sync iterator (a sync one in a thread); a response without a
    ``Content-Length`` gets one."""
    if response.streaming:
        if getattr(response, "is_async", False):
            body = b"".join([bytes(part) async for part in response])  # type: ignore[attr-defined]
        else:
            content = response.streaming_content  # type: ignore[attr-defined]
            body = await sync_to_async(lambda: b"".join(bytes(part) for part in content))()
        response["Content-Length"] = str(len(body))
    else:
        body = response.content  # type: ignore[attr-defined]
    headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
    headers += [
        (b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
        for cookie in response.cookies.values()
    ]
    return response.status_code, headers, body


async def _refuse_raw(scope: Scope, send: Send, status: int, body: bytes) -> None:
    if count_refusal(scope.get("extensions"), status):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
