"""The dwebsocket 0.x README's examples and names, as a 0.x project wrote them: the URLconf
(``ROOT_URLCONF``) of tests/integration/test_readme.py."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from dwebsocket import accept_websocket, require_websocket

# -- the README's examples, word for word ----------------------------------------------


@require_websocket
def echo_once(request):  # type: ignore[no-untyped-def]
    message = request.websocket.wait()
    request.websocket.send(message)


@require_websocket
async def echo_once_async(request):  # type: ignore[no-untyped-def]
    """echo_once as an ``async def`` view (ASGI servers)."""
    message = await request.websocket.wait()
    await request.websocket.send(message)


def modify_message(message):  # type: ignore[no-untyped-def]
    return message.lower()


@accept_websocket
def lower_case(request):  # type: ignore[no-untyped-def]
    if not request.is_websocket():
        message = request.GET["message"]
        message = modify_message(message)
        return HttpResponse(message)
    else:
        for message in request.websocket:
            message = modify_message(message)
            request.websocket.send(message)


# -- the rest of the 0.x API, as views used it ------------------------------------------


def _report(request: HttpRequest, facts: dict[str, Any]) -> None:
    """Write what the view saw to the file named by ``?out=`` (the test reads it)."""
    with open(request.GET["out"], "w") as f:
        json.dump(facts, f)


@accept_websocket
def polling(request: HttpRequest) -> None:
    """read() / has_messages() / count_messages() before anything came, then a loop on
    read() until the client's "stop"; then the same calls after the client closed."""
    ws = request.websocket  # type: ignore[attr-defined]
    facts: dict[str, Any] = {
        "read": ws.read(),
        "has": ws.has_messages(),
        "count": ws.count_messages(),
        "closed": ws.is_closed(),
    }
    ws.send("ready")
    got = []
    while True:
        message = ws.wait(-1) if not ws.has_messages() else ws.read()
        if message is None or message == "stop":
            break
        got.append(message)
    facts["got"] = got
    ws.send("bye")
    while ws.wait() is not None:  # until the client closes
        pass
    facts.update(
        after_read=ws.read(),
        after_has=ws.has_messages(),
        after_count=ws.count_messages(),
        after_wait=ws.wait(),
        after_closed=ws.is_closed(),
        after_closed_attr=ws.closed,
        after_list=list(ws),
    )
    ws.close()
    _report(request, facts)


@accept_websocket
def answer_after_use(request: HttpRequest) -> HttpResponse:
    """Uses the websocket, then returns an HttpResponse, as 0.x views did."""
    if request.is_websocket():  # type: ignore[attr-defined]
        request.websocket.send(request.websocket.wait())  # type: ignore[attr-defined]
    return HttpResponse("done")


@accept_websocket
def closes_itself(request: HttpRequest) -> HttpResponse:
    ws = request.websocket  # type: ignore[attr-defined]
    ws.send(ws.wait())
    ws.close()
    _report(request, {"closed": ws.is_closed(), "attr": ws.closed, "wait": ws.wait()})
    return HttpResponse()


@accept_websocket
def sends_both(request: HttpRequest) -> None:
    request.websocket.send("text")  # type: ignore[attr-defined]
    request.websocket.send(b"bytes")  # type: ignore[attr-defined]


@accept_websocket
def kind(request: HttpRequest) -> HttpResponse | None:
    """``is_websocket()`` and ``websocket`` for both kinds of request."""
    if request.is_websocket():  # type: ignore[attr-defined]
        request.websocket.send("websocket")  # type: ignore[attr-defined]
        return None
    return HttpResponse(f"http {request.websocket!r}")  # type: ignore[attr-defined]


def undecorated(request: HttpRequest) -> HttpResponse:
    """For the middleware: no attribute, plain HTTP sees the 0.x attributes."""
    ws = getattr(request, "websocket", "missing")
    if getattr(request, "is_websocket", None) is not None and request.is_websocket():  # type: ignore[attr-defined]
        ws.send("accepted")
        return HttpResponse()
    return HttpResponse(f"plain {ws!r}")


def flagged(request: HttpRequest) -> HttpResponse | None:
    """For the middleware: ``view.accept_websocket = True`` by hand, as the README says."""
    if request.is_websocket():  # type: ignore[attr-defined]
        for message in request.websocket:  # type: ignore[attr-defined]
            request.websocket.send(message)  # type: ignore[attr-defined]
        return None
    return HttpResponse("plain")


flagged.accept_websocket = True  # type: ignore[attr-defined]


class EchoDispatch(View):
    @method_decorator(accept_websocket)
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse | None:
        if not request.is_websocket():  # type: ignore[attr-defined]
            return HttpResponse("plain")
        for message in request.websocket:  # type: ignore[attr-defined]
            request.websocket.send(message)  # type: ignore[attr-defined]
        return None


@method_decorator(require_websocket, name="dispatch")
class RequireDispatch(View):
    def get(self, request: HttpRequest) -> None:
        request.websocket.send(request.websocket.wait())  # type: ignore[attr-defined]


class RequireGet(View):
    @method_decorator(require_websocket)
    def get(self, request: HttpRequest) -> None:
        request.websocket.send(request.websocket.wait())  # type: ignore[attr-defined]


urlpatterns = [
    path("echo_once/", echo_once),
    path("echo_once_async/", echo_once_async),
    path("lower_case/", lower_case),
    path("polling/", polling),
    path("answer-after-use/", answer_after_use),
    path("closes-itself/", closes_itself),
    path("sends-both/", sends_both),
    path("kind/", kind),
    path("undecorated/", undecorated),
    path("flagged/", flagged),
    path("cbv-dispatch/", EchoDispatch.as_view()),
    path("cbv-require-dispatch/", RequireDispatch.as_view()),
    path("cbv-require-get/", RequireGet.as_view()),
]


@accept_websocket
def unread_at_close(request: HttpRequest) -> None:
    """Messages the client sent before its close stay readable after it, as in 0.x."""
    import time

    ws = request.websocket  # type: ignore[attr-defined]
    ws.wait()  # "go"
    ws.send("ready")
    deadline = time.monotonic() + 10
    while not ws.is_closed() and time.monotonic() < deadline:
        ws.count_messages()  # reads what is ready, the close frame included
        time.sleep(0.01)
    _report(
        request,
        {
            "closed": ws.is_closed(),
            "count": ws.count_messages(),
            "has": ws.has_messages(),
            "messages": [repr(ws.read()), repr(ws.read()), repr(ws.read())],
            "list": list(ws),
        },
    )


urlpatterns.append(path("unread-at-close/", unread_at_close))
