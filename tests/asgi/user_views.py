"""The socket and ``send`` views of ``tests/groups/user_views.py`` as ``async def`` views
(``tests/asgi/async_user_urls.py``): the users and presence tests then run against async
views. The plain HTTP views (log in and out, a new password, presence) stay sync: Django
runs them under ASGI as any sync view."""

from __future__ import annotations

import json
import os

from django.contrib.auth import aget_user
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse

from dwebsocket import require_websocket, users


@require_websocket
async def socket(request: HttpRequest) -> None:
    """As ``tests.groups.user_views.socket``, awaited."""
    ws = request.websocket
    user = await aget_user(request)
    name = user.get_username() if user.is_authenticated else None
    group = request.GET.get("group")
    if group:
        if request.GET.get("presence"):
            await ws.join(
                group,
                presence={"name": name, "tab": request.GET.get("tab", "")},
                events=bool(request.GET.get("events")),
            )
        else:
            await ws.join(group)
    await ws.send(json.dumps({"user": name, "pid": os.getpid()}))
    async for _message in ws:
        pass


async def send(request: HttpRequest) -> HttpResponse:
    """``?username=X&text=T``: ``await users.asend(X, T)``."""
    user = await User.objects.aget(username=request.GET["username"])
    await users.asend(user, request.GET["text"])
    return HttpResponse("sent")
