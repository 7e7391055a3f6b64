"""``WebSocketMiddleware``: WebSockets for every view that says it accepts them.

Add ``"dwebsocket.middleware.WebSocketMiddleware"`` to ``MIDDLEWARE`` (last is best: for
WebSocket requests it runs the view itself, so ``process_view`` hooks of middleware listed
after it do not run, and neither does ``ATOMIC_REQUESTS``, which would hold a transaction
for the whole session). As in dwebsocket 0.x:

- every request gets ``request.websocket`` (None for plain HTTP) and ``request.is_websocket()``;
- a WebSocket request reaches a view only if the view has a true ``accept_websocket``
  attribute, or ``WEBSOCKET_ACCEPT_ALL`` is on; otherwise it is answered with 400;
- a plain request to a view with a true ``require_websocket`` attribute gets 400.

Views decorated with ``accept_websocket`` / ``require_websocket`` run their own session; the
middleware leaves them alone, so nothing is handshaken twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from dwebsocket.conf import settings
from dwebsocket.exceptions import InvalidHandshake, InvalidSetting
from dwebsocket.handshake import misconfigured, refuse
from dwebsocket.session import attach, is_upgrade, run_view

__all__ = ["WebSocketMiddleware"]


class WebSocketMiddleware:
    """New-style (``MIDDLEWARE``) middleware; see the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        attach(request, None)
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        if getattr(view_func, "_dwebsocket_view", False):
            return None  # the decorator runs the session
        require = bool(getattr(view_func, "require_websocket", False))
        if not is_upgrade(request):
            if require:
                return run_view(request, view_func, view_args, view_kwargs, require=True)
            return None
        try:
            accept_all = settings.WEBSOCKET_ACCEPT_ALL
        except InvalidSetting as exc:
            attach(request, None)
            return misconfigured(request, exc)
        if not (require or accept_all or getattr(view_func, "accept_websocket", False)):
            return refuse(
                request, InvalidHandshake("This URL does not accept WebSocket connections.")
            )
        return run_view(request, view_func, view_args, view_kwargs, require=require)
