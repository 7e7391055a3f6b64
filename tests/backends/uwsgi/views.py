"""Views only the uWSGI tests use (tests/backends/uwsgi/urls.py, on top of tests/urls.py)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse, JsonResponse

from dwebsocket import ConnectionClosed, accept_websocket, require_websocket
from dwebsocket.signals import websocket_closed, websocket_opened
from dwebsocket.websocket import WebSocket

#: Open connections of the ``broadcast`` view in this process.
MEMBERS: set[WebSocket] = set()
#: How many times request_finished fired in this process.
FINISHED = [0]


def _count(**kwargs: object) -> None:
    FINISHED[0] += 1


request_finished.connect(_count, dispatch_uid="tests.backends.uwsgi.views.count")


@require_websocket
def broadcast(request: HttpRequest) -> None:
    """Echo each message, except ``all:TEXT``, which goes to every *other* member through
    ``send()`` from this view's greenlet (a foreign one for them); then ``sent:N``."""
    ws = request.websocket
    ws.accept()
    MEMBERS.add(ws)
    try:
        for message in ws:
            if isinstance(message, str) and message.startswith("all:"):
                others = [member for member in list(MEMBERS) if member is not ws]
                for member in others:
                    member.send(message[4:])
                ws.send(f"sent:{len(others)}")
            else:
                ws.send(message)
    finally:
        MEMBERS.discard(ws)


@require_websocket
def kinds(request: HttpRequest) -> None:
    """Send a text and a binary message that is valid UTF-8, then wait for the close."""
    ws = request.websocket
    ws.send("text")
    ws.send(b"bytes")
    ws.wait()


@require_websocket
def from_thread(request: HttpRequest) -> None:
    """A real thread sends ``?n=`` messages (``send``) then ``done`` while this view sits
    in ``wait()``; ``?deliver=1`` uses ``deliver`` and joins the thread before waiting
    (so a small ``WEBSOCKET_SEND_QUEUE_SIZE`` overflows before anything is written)."""
    ws = request.websocket
    ws.accept()
    n = int(request.GET.get("n", "10"))
    deliver = request.GET.get("deliver") == "1"

    def run() -> None:
        for i in range(n):
            if deliver:
                ws.deliver(f"d{i}:" + "x" * 1000)
            else:
                ws.send(f"t{i}")
        if not deliver:
            ws.send("done")

    thread = threading.Thread(target=run)
    thread.start()
    if deliver:
        thread.join()
    for message in ws:
        ws.send(message)
    thread.join()


@require_websocket
def wait_timeout(request: HttpRequest) -> None:
    """``wait(0.2)`` on silence returns None with the connection open; then a 5 MiB
    binary message (a write that has to wait for the client) and the report."""
    ws = request.websocket
    got = ws.wait(0.2)
    ws.send(b"\x00" * (5 << 20))
    ws.send(f"timeout:{got!r}:{ws.is_closed()}")
    ws.wait()


@require_websocket
def backlog(request: HttpRequest) -> None:
    """Say "ready", take one message, then look away for half a second (the client
    floods meanwhile) and report how many messages ``count_messages()`` finds ready."""
    import time

    import uwsgi  # type: ignore[import-untyped]

    ws = request.websocket
    ws.send("ready")
    ws.wait()
    if uwsgi.loop in (b"gevent", "gevent"):
        import gevent  # type: ignore[import-untyped]

        gevent.sleep(0.5)
    else:
        time.sleep(0.5)  # --async: the whole worker pauses, which is the point
    ws.send(str(ws.count_messages()))


def finished(request: HttpRequest) -> HttpResponse:
    """Plain HTTP: how many times request_finished fired so far in this process."""
    return JsonResponse({"finished": FINISHED[0]})


#: The signals the receivers of each ``close_in_opened`` / ``killed_while_closing``
#: connection got, in order, by ``?id=``.
SIGNALS: dict[str, list[str]] = {}
#: What a "who is online" receiver (connected after the one that closes) holds, by ``?id=``.
ONLINE: dict[str, WebSocket] = {}


def _recorded(request: HttpRequest) -> HttpResponse:
    """Plain HTTP: what the receivers of the connection ``?id=`` saw, and whether the
    "who is online" receiver still holds it, as JSON."""
    key = request.GET["id"]
    return JsonResponse({"signals": list(SIGNALS.get(key, [])), "online": key in ONLINE})


def _record(request: HttpRequest) -> None:
    key = request.GET["id"]
    SIGNALS[key] = []
    request.dws_record = key  # type: ignore[attr-defined]


@accept_websocket
def close_in_opened(request: HttpRequest) -> HttpResponse | None:
    """WebSocket: ``wait()`` accepts, and a ``websocket_opened`` receiver
    (``_close_when_opened``) closes the connection with 4000 before it returns; the view
    waits until it is closed. Plain HTTP: :func:`_recorded`."""
    if not request.is_websocket():
        return _recorded(request)
    _record(request)
    request.dws_close_in_opened = True  # type: ignore[attr-defined]
    while request.websocket.wait(10.0) is not None:
        pass
    return None


@accept_websocket
def _hello(request: HttpRequest) -> None:
    request.websocket.send("hello")  # then the session closes, waiting for the reply


def killed_while_closing(request: HttpRequest) -> HttpResponse | None:
    """WebSocket (uwsgi --gevent): sends ``hello`` and returns, under a request timeout
    (``gevent.Timeout(?after=)``, as a middleware would set one) that expires while the
    session waits for the client's close frame. Plain HTTP: :func:`_recorded`."""
    if request.META.get("HTTP_UPGRADE", "").lower() != "websocket":
        return _recorded(request)
    import gevent

    _record(request)
    try:
        with gevent.Timeout(float(request.GET.get("after", "0.5"))):
            return _hello(request)
    except gevent.Timeout:
        return HttpResponse("request timeout", status=504)


@require_websocket
def closed_before_accept(request: HttpRequest) -> None:
    """Another thread closes the connection with 4001 before the view has accepted it;
    then the view sends (its first use of the connection)."""
    ws = request.websocket
    helper = threading.Thread(target=ws.close, args=(4001, "closed early"))
    helper.start()
    helper.join(10.0)
    ws.send("too late")


@accept_websocket
def signalled(request: HttpRequest) -> HttpResponse | None:
    """WebSocket: echo until closed, then add ``view CODE REASON`` (what the view saw) to
    the signals recorded for ``?id=``. Plain HTTP: :func:`_recorded`."""
    if not request.is_websocket():
        return _recorded(request)
    _record(request)
    ws = request.websocket
    for message in ws:
        ws.send(message)
    SIGNALS[request.GET["id"]].append(f"view {ws.close_code} {ws.close_reason}")
    return None


def _close_when_opened(sender: type, request: HttpRequest, websocket: Any, **kwargs: Any) -> None:
    key = getattr(request, "dws_record", None)
    if key is not None and getattr(request, "dws_close_in_opened", False):
        SIGNALS[key].append("opened")
        websocket.close(4000, "not today")
        SIGNALS[key].append("opened returned")


def _online(sender: type, request: HttpRequest, websocket: Any, **kwargs: Any) -> None:
    key = getattr(request, "dws_record", None)
    if key is not None:
        if not getattr(request, "dws_close_in_opened", False):
            SIGNALS[key].append("opened")
        ONLINE[key] = websocket


def _offline(sender: type, request: HttpRequest, code: int, **kwargs: Any) -> None:
    key = getattr(request, "dws_record", None)
    if key is not None:
        SIGNALS[key].append(f"closed {code}")
        ONLINE.pop(key, None)


websocket_opened.connect(_close_when_opened, dispatch_uid="tests.backends.uwsgi.close_when_opened")
websocket_opened.connect(_online, dispatch_uid="tests.backends.uwsgi.online")
websocket_closed.connect(_offline, dispatch_uid="tests.backends.uwsgi.offline")


#: What a thread's ``send()`` during the view's close did, by ``?id=`` (``send_in_the_close``).
SENT: dict[str, str] = {}


@accept_websocket
def send_in_the_close(request: HttpRequest) -> HttpResponse | None:
    """WebSocket: the view closes (4004); at the moment it has decided to -- the call of
    the backend's ``_close_now``, with nothing queued -- it lets a thread send ``from
    the thread`` and waits for that send to return or raise. Plain HTTP: what the send
    did for ``?id=`` (``{"send": "returned"}`` or ``"raised CODE"``; 404 until then)."""
    key = request.GET["id"]
    if not request.is_websocket():
        if key not in SENT:
            return HttpResponse(status=404)
        return JsonResponse({"send": SENT[key]})
    ws = request.websocket
    ws.accept()
    go, done = threading.Event(), threading.Event()

    def send() -> None:
        go.wait(10.0)
        try:
            ws.send("from the thread")
            SENT[key] = "returned"
        except ConnectionClosed as exc:
            SENT[key] = f"raised {exc.code}"
        done.set()

    def closing(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "_close_now" and not go.is_set():
            go.set()
            done.wait(10.0)

    thread = threading.Thread(target=send)
    thread.start()
    sys.setprofile(closing)
    try:
        ws.close(4004, "bye")
    finally:
        sys.setprofile(None)
        go.set()  # the hook never ran: the send goes after the close (and raises)
        thread.join(10.0)
    return None


@require_websocket
def close_then_refuse(request: HttpRequest) -> HttpResponse:
    """A close before the view accepted -- by the view (``?by=view``), by another thread
    (``?by=thread``) or by deliveries over the send queue (``?by=overflow``) -- then a
    refusal -- a 403 (``?then=refuse``) or an exception (``?then=raise``) -- or a
    ``wait()`` (``?then=accept``), then the 403."""
    ws = request.websocket
    by = request.GET.get("by", "view")
    if by == "view":
        ws.close(4003, "no")
    elif by == "thread":
        helper = threading.Thread(target=ws.close, args=(4003, "no"))
        helper.start()
        helper.join(10.0)
    else:
        for _ in range(5000):
            ws.deliver("x" * 1000)
    then = request.GET.get("then", "refuse")
    if then == "accept":
        ws.wait()
    elif then == "raise":
        raise RuntimeError("refused (on purpose, tests.backends.uwsgi.views.close_then_refuse)")
    return HttpResponse("refused\n", status=403, content_type="text/plain")
