"""``accept_websocket`` and ``require_websocket``: WebSockets for one view.

They work with or without ``WebSocketMiddleware``; used together, the connection is
handshaken once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse

from dwebsocket.session import run_view

__all__ = ["accept_websocket", "require_websocket"]

_View = TypeVar("_View", bound=Callable[..., Any])


def accept_websocket(view: _View) -> _View:
    """Let ``view`` answer WebSocket requests as well as plain HTTP ones.

    In the view, ``request.is_websocket()`` tells which it got and ``request.websocket``
    is the connection (None for plain HTTP).
    """
    return _websocket_view(view, require=False)


def require_websocket(view: _View) -> _View:
    """Let ``view`` answer WebSocket requests only; plain HTTP gets a 400."""
    return _websocket_view(view, require=True)


def _websocket_view(view: _View, *, require: bool) -> _View:
    if getattr(view, "_dwebsocket_view", False):
        # Stacked decorators: require wins over accept. The wrapper that decides is
        # ``_dwebsocket_wrapper``, which ``view`` may wrap in turn (csrf_exempt,
        # login_required: functools.wraps copies the attributes, not their later changes).
        inner: Any = getattr(view, "_dwebsocket_wrapper", view)
        if inner.require_websocket or not require:
            return view  # as strict already: one wrapper is enough
        # require over accept: a wrapper of its own, never a change to ``view``, which
        # may serve another URL as it is. The outer wrapper runs the session; the inner
        # one, nested, just calls the view (dwebsocket.session).

    wrapper: Any
    if iscoroutinefunction(view) or _async_dispatch(view):
        # An async def view gets an async wrapper, which Django awaits (under WSGI too,
        # through async_to_sync): never an unawaited coroutine.
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            from dwebsocket.backends.asgi.session import arun_view

            return await arun_view(request, view, args, kwargs, require=wrapper.require_websocket)

    else:

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return run_view(request, view, args, kwargs, require=wrapper.require_websocket)

    # The 0.x attributes the middleware reads, and a mark telling it the decorator runs
    # the session itself.
    wrapper.accept_websocket = True
    wrapper.require_websocket = require
    wrapper._dwebsocket_view = True
    wrapper._dwebsocket_wrapper = wrapper  # copied by decorators that wrap this one
    return wrapper  # type: ignore[no-any-return]


def _async_dispatch(view: Callable[..., Any]) -> bool:
    """Whether ``view`` is the ``dispatch`` of a class-based view whose handlers are
    ``async def``, as ``method_decorator(..., name="dispatch")`` hands it over (a
    ``functools.partial`` of the bound method): a sync method that returns the handler's
    coroutine, so an async view."""
    from django.views import View

    instance = getattr(getattr(view, "func", view), "__self__", None)
    return isinstance(instance, View) and type(instance).view_is_async
