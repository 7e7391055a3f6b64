"""Group views the server tests drive (mounted under ``/group/`` by ``tests/urls.py``)."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse

from dwebsocket import accept_websocket, groups, require_websocket


@require_websocket
def member(request: HttpRequest, name: str) -> None:
    """Join group ``name``, say ``joined``, then forward every message the client sends to
    the group. With ``?id=X``, report the close code to group ``monitor`` when closed."""
    ws = request.websocket
    ws.join(name)
    ws.send("joined")
    for message in ws:
        groups.send(name, message)
    if "id" in request.GET:
        groups.send(
            "monitor",
            json.dumps({"id": request.GET["id"], "code": ws.close_code, "pid": _pid()}),
        )


@accept_websocket
def status(request: HttpRequest, name: str) -> HttpResponse:
    """Plain HTTP: this process's pid and the number of local members of ``name``."""
    return JsonResponse({"pid": _pid(), "members": len(groups.members(name))})


def _pid() -> int:
    import os

    return os.getpid()
