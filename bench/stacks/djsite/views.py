"""The dwebsocket echo: an ordinary synchronous view, as the README shows it."""

from __future__ import annotations

from django.http import HttpRequest

from dwebsocket import require_websocket


@require_websocket
def echo(request: HttpRequest) -> None:
    for message in request.websocket:
        request.websocket.send(message)
