"""The dwebsocket views: ordinary synchronous views, as the README shows them."""

from __future__ import annotations

from django.http import HttpRequest

from dwebsocket import require_websocket


@require_websocket
def echo(request: HttpRequest) -> None:
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def member(request: HttpRequest) -> None:
    """The echo, as a member of group "scale" (``bench/scale.py`` broadcasts to it)."""
    request.websocket.join("scale")
    for message in request.websocket:
        request.websocket.send(message)
