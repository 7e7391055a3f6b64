"""The echo as an ``async def`` view, at the same URL (``bench/asgi.py``)."""

from __future__ import annotations

from django.http import HttpRequest
from django.urls import path

from dwebsocket import require_websocket


@require_websocket
async def echo(request: HttpRequest) -> None:
    async for message in request.websocket:
        await request.websocket.send(message)


urlpatterns = [path("echo/", echo)]
