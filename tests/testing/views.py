"""A chat with login and groups: the views ``dwebsocket.testing`` is tested against, in
process (``test_chat.py``) and through real servers (``test_chat_servers.py``)."""

from __future__ import annotations

import asyncio
import json
import threading

from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import get_script_prefix
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dwebsocket import groups, require_websocket


@require_websocket
def chat(request: HttpRequest, room: str) -> HttpResponse | None:
    """Room ``room``, for logged-in users only (others get 403 before any handshake).

    Everyone in the room gets ``{"user", "event": "joined" | "left"}`` and
    ``{"user", "text"}`` for each message; ``/bye`` closes with 4000.
    """
    if not request.user.is_authenticated:
        return HttpResponseForbidden("Log in to chat.\n", content_type="text/plain")
    ws = request.websocket
    group = f"chat.{room}"
    name = request.user.get_username()
    ws.join(group)
    groups.send(group, json.dumps({"user": name, "event": "joined"}))
    for message in ws:
        if message == "/bye":
            ws.close(4000, "bye")
            break
        groups.send(group, json.dumps({"user": name, "text": message}))
    groups.send(group, json.dumps({"user": name, "event": "left"}))
    return None


@csrf_exempt
@require_POST
def login_view(request: HttpRequest) -> HttpResponse:
    """Log in with ``username`` and ``password`` (form-encoded): 204, or 403."""
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponseForbidden()
    login(request, user)
    return HttpResponse(status=204)


def _seen(request: HttpRequest) -> str:
    """What the view sees of the request, as JSON (``request.user`` left out: reading it
    from an async view takes a thread)."""
    return json.dumps(
        {
            "path": request.path,
            "query": request.GET.dict(),
            "headers": {k: v for k, v in request.headers.items() if k.startswith("X-")},
            "cookies": request.COOKIES,
            "secure": request.is_secure(),
            "remote_addr": request.META["REMOTE_ADDR"],
            "host": request.get_host(),
            "origin": request.headers.get("Origin"),
            "offered": request.websocket.offered_subprotocols,
        }
    )


@require_websocket
def inspect(request: HttpRequest, name: str = "") -> None:
    """Send what the view sees of the request as JSON, then echo until closed."""
    ws = request.websocket
    user = getattr(request, "user", None)
    seen = json.loads(_seen(request))
    seen["user"] = user.get_username() if user is not None else None
    ws.send(json.dumps(seen))
    for message in ws:
        ws.send(message)


@require_websocket
async def inspect_async(request: HttpRequest, name: str = "") -> None:
    """``inspect`` as an ``async def`` view (without the user)."""
    ws = request.websocket
    await ws.send(_seen(request))
    async for message in ws:
        await ws.send(message)


@require_websocket
def script_prefix(request: HttpRequest) -> None:
    """Send the prefix ``reverse()`` gives the URLs the view makes."""
    request.websocket.send(get_script_prefix())


@require_websocket
async def script_prefix_async(request: HttpRequest) -> None:
    await request.websocket.send(get_script_prefix())


@require_websocket
def refuse_with_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("who are you?\n", status=401, content_type="text/plain")
    response.set_cookie("seen", "yes", httponly=True)
    return response


def _refuse_unregistered(request: HttpRequest) -> HttpResponse:
    """A status that ``http.HTTPStatus`` does not know (nginx's 499), a reason of its own."""
    return HttpResponse("gone\n", status=499, reason="Client Closed Request")


refuse_unregistered = require_websocket(_refuse_unregistered)


@require_websocket
async def refuse_unregistered_async(request: HttpRequest) -> HttpResponse:
    return _refuse_unregistered(request)


@require_websocket
def refuse_at_length(request: HttpRequest) -> HttpResponse:
    """A refusal with a body longer than one read."""
    return HttpResponseForbidden(b"no" * 100_000, content_type="text/plain")


@require_websocket
def hesitant(request: HttpRequest) -> HttpResponse:
    """Neither accept nor refuse until ``RELEASE`` is set."""
    RELEASE.wait(30)
    return HttpResponse(status=204)


@require_websocket
def fail_before_accepting(request: HttpRequest) -> None:
    raise RuntimeError("boom before accepting (on purpose)")


#: Set by the test to let ``stubborn`` return.
RELEASE = threading.Event()


@require_websocket
def stubborn(request: HttpRequest) -> None:
    """Accept, then ignore the connection until ``RELEASE`` is set."""
    request.websocket.accept()
    RELEASE.wait(30)


@require_websocket
async def stubborn_async(request: HttpRequest) -> None:
    """Accept, then never return: waits on nothing, and never reads."""
    await request.websocket.accept()
    await asyncio.Event().wait()


@require_websocket
async def hesitant_async(request: HttpRequest) -> None:
    """Neither accept nor refuse, ever."""
    await asyncio.Event().wait()
