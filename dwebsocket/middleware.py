"""``WebSocketMiddleware``: WebSockets for every view that says it accepts them.

Add ``"dwebsocket.middleware.WebSocketMiddleware"`` to ``MIDDLEWARE`` (last is best: for
WebSocket requests it runs the view itself, so ``process_view`` hooks of middleware listed
after it do not run, and neither does ``ATOMIC_REQUESTS``, which would hold a transaction
for the whole session; nor, when such a view raises, any middleware's
``process_exception``: Django logs the error and answers 500 as for any view, but an error
reporter hooked there misses it, where dwebsocket 0.x ran the view through Django and a
decorated view still does). As in dwebsocket 0.x:

- every request gets ``request.websocket`` (None for plain HTTP) and ``request.is_websocket()``;
- a WebSocket request reaches a view only if the view has a true ``accept_websocket``
  attribute, or ``WEBSOCKET_ACCEPT_ALL`` is on; otherwise it is answered with 400;
- a plain request to a view with a true ``require_websocket`` attribute gets 400.

Views decorated with ``accept_websocket`` / ``require_websocket`` (and class-based views whose
handler is, through ``method_decorator``) run their own session; the middleware leaves them
alone, so nothing is handshaken twice. These attributes are read on the view Django calls
or, when it has none, on the views it calls in turn (``dwebsocket.marks``): a view routed as
``functools.partial(decorated_view, ...)`` is the decorated view's.

Under an ASGI server Django runs it async when every middleware after it is
async-capable (Django's are); an ``async def`` view's session then holds no thread. A
sync-only middleware anywhere in ``MIDDLEWARE`` makes Django run the chain in the
request's worker thread and the view from there: such a session holds the thread, and a
``WEBSOCKET_ASGI_THREADS`` slot, until it ends.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse

from dwebsocket.conf import settings
from dwebsocket.exceptions import InvalidHandshake, InvalidSetting
from dwebsocket.handshake import misconfigured, refuse
from dwebsocket.marks import mark
from dwebsocket.session import attach, is_upgrade, run_view

__all__ = ["WebSocketMiddleware"]


class WebSocketMiddleware:
    """New-style (``MIDDLEWARE``) middleware; see the module docstring.

    Sync and async: Django runs it async under an ASGI server when the middleware after
    it are async-capable (all of Django's are), and then an ``async def`` view's session
    runs on the loop and holds no thread. Run sync there (a sync-only middleware after
    it), its ``process_view`` runs in the request's worker thread and an async view's
    session holds that thread (and a ``WEBSOCKET_ASGI_THREADS`` slot) until it ends.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)  # Django then awaits __call__
            # Django adapts process_view to its handler's mode: a coroutine function is
            # awaited on the loop under ASGI (async_mode without ASGI, only behind an
            # async-only middleware under WSGI: Django then calls it with async_to_sync).
            self.process_view = self.aprocess_view  # type: ignore[method-assign, assignment]

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.async_mode:
            return self.__acall__(request)
        attach(request, None)
        return self.get_response(request)  # type: ignore[no-any-return]

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        attach(request, None)
        return await self.get_response(request)  # type: ignore[no-any-return]

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        """The session, or the answer, for a WebSocket request (and a plain one to a view
        that requires WebSockets); None otherwise. Blocks for the whole session."""
        answer = _screen(request, view_func)
        if answer is not _Verdict.SESSION:
            return answer
        return run_view(request, view_func, view_args, view_kwargs, require=_requires(view_func))

    async def aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        """:meth:`process_view` in async mode: an ``async def`` view's session on the
        loop, a sync view's in the request's worker thread (as Django would run the sync
        ``process_view``)."""
        answer = _screen(request, view_func)
        if answer is not _Verdict.SESSION:
            return answer
        require = _requires(view_func)
        if iscoroutinefunction(view_func):
            from dwebsocket.backends.asgi.session import arun_view

            return await arun_view(request, view_func, view_args, view_kwargs, require=require)
        return await sync_to_async(run_view, thread_sensitive=True)(
            request, view_func, view_args, view_kwargs, require=require
        )


class _Verdict(enum.Enum):
    SESSION = enum.auto()  # run_view / arun_view decides


def _requires(view_func: Callable[..., Any]) -> bool:
    return bool(mark(view_func, "require_websocket"))


def _decorated(request: HttpRequest, view_func: Callable[..., Any]) -> bool:
    """Whether a decorator runs the session: on the view, or on the handler a class-based
    view (``View.as_view()``) dispatches this request to (``method_decorator`` on
    ``get``), which Django's resolved view does not show."""
    if mark(view_func, "_dwebsocket_view"):
        return True
    view_class = mark(view_func, "view_class")
    method = (request.method or "").lower()
    if view_class is None or method not in getattr(view_class, "http_method_names", ()):
        return False
    return bool(getattr(getattr(view_class, method, None), "_dwebsocket_view", False))


def _screen(request: HttpRequest, view_func: Callable[..., Any]) -> HttpResponse | _Verdict | None:
    """What the middleware does with ``request`` for ``view_func``: None, leave it to
    Django (the decorator's session, or plain HTTP); a response, the refusal;
    ``_Verdict.SESSION``, run the view through ``run_view``. Never blocks."""
    if _decorated(request, view_func):
        return None  # the decorator runs the session
    require = _requires(view_func)
    if not is_upgrade(request):
        return _Verdict.SESSION if require else None  # 400 from run_view
    try:
        accept_all = settings.WEBSOCKET_ACCEPT_ALL
    except InvalidSetting as exc:
        attach(request, None)
        return misconfigured(request, exc)
    if not (require or accept_all or mark(view_func, "accept_websocket")):
        return refuse(request, InvalidHandshake("This URL does not accept WebSocket connections."))
    return _Verdict.SESSION
