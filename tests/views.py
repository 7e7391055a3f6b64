"""Views the tests drive, in-process and through real servers."""

from __future__ import annotations

import array
import contextlib
import datetime
import io
import json
import os
import threading
import time
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt

from dwebsocket import ConnectionClosed, accept_websocket, require_websocket
from dwebsocket.signals import websocket_closed, websocket_opened

#: What ``record`` saw when its connection closed, by ``?id=``; read back over plain HTTP.
CLOSES: dict[str, dict[str, object]] = {}
_CLOSES_LOCK = threading.Lock()


@accept_websocket
def echo(request: HttpRequest) -> HttpResponse | None:
    """Echo every message, with ``for``; plain HTTP gets a page."""
    if not request.is_websocket():
        return HttpResponse("echo: plain HTTP\n", content_type="text/plain")
    for message in request.websocket:
        request.websocket.send(message)
    return None


@require_websocket
def echo_wait(request: HttpRequest) -> None:
    """Echo every message, with ``wait()`` (``?timeout=``: with that timeout, which
    ``inf``, ``nan`` or more than a week make a wait without end)."""
    timeout = float(request.GET["timeout"]) if "timeout" in request.GET else None
    while True:
        message = request.websocket.wait(timeout)
        if message is None:
            return
        request.websocket.send(message)


@require_websocket
@csrf_exempt
@accept_websocket
def stacked(request: HttpRequest) -> None:
    """``require_websocket(csrf_exempt(accept_websocket(view)))``: plain HTTP gets the 400
    (had it reached the view, ``request.websocket`` would be None: a 500). Echoes."""
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def json_echo(request: HttpRequest) -> None:
    """``wait_json()`` / ``send_json()``: each JSON value comes back inside an object
    with a date (Django's encoder)."""
    ws = request.websocket
    while (data := ws.wait_json()) is not None:
        ws.send_json({"got": data, "on": datetime.date(2026, 12, 4)})


def slow(request: HttpRequest) -> HttpResponse:
    """Plain HTTP only: answers after ``?seconds=`` (a request that takes its time, ahead
    of another on the same connection)."""
    time.sleep(min(float(request.GET.get("seconds", "1")), 10.0))
    return HttpResponse("slow\n", content_type="text/plain")


@require_websocket
def refuse(request: HttpRequest) -> HttpResponse:
    """Refuse before accepting."""
    return HttpResponseForbidden("not you\n", content_type="text/plain")


@require_websocket
def refuse_streaming(request: HttpRequest) -> StreamingHttpResponse:
    """Refuse before accepting with a streamed body: a file's (Content-Length set) or a
    generator's (``?kind=generator``)."""
    if request.GET.get("kind") == "generator":
        return StreamingHttpResponse(iter([b"not ", b"you\n"]), status=403)
    return FileResponse(io.BytesIO(b"not you\n"), status=403)


@require_websocket
def subprotocol(request: HttpRequest) -> None:
    """Choose "chat" if offered; report what was offered and chosen."""
    ws = request.websocket
    ws.accept(subprotocol="chat" if "chat" in ws.offered_subprotocols else None)
    ws.send(json.dumps({"offered": ws.protocols, "chosen": ws.subprotocol}))
    ws.wait()


@require_websocket
def close_with(request: HttpRequest) -> None:
    """Wait for one message, then close with ``?code=`` and ``?reason=``."""
    ws = request.websocket
    ws.wait()
    ws.close(int(request.GET.get("code", "1000")), request.GET.get("reason", ""))
    ws.close(4999, "idempotent: never sent")


def recorded(key: str) -> HttpResponse:
    """What a ``record``-like view recorded under ``key``, as JSON (404 until then)."""
    with _CLOSES_LOCK:
        seen = CLOSES.get(key)
    return JsonResponse(seen) if seen is not None else HttpResponse(status=404)


@accept_websocket
def record(request: HttpRequest) -> HttpResponse | None:
    """WebSocket: echo until closed, then record close code/reason under ``?id=``.
    Plain HTTP: return the record as JSON (404 until there is one)."""
    key = request.GET["id"]
    if not request.is_websocket():
        return recorded(key)
    ws = request.websocket
    for message in ws:
        ws.send(message)
    with _CLOSES_LOCK:
        CLOSES[key] = {"code": ws.close_code, "reason": ws.close_reason, "closed": ws.closed}
    return None


@require_websocket
def tally(request: HttpRequest) -> None:
    """Read messages without a word until ``?size=`` bytes came, then send how many."""
    size, got = int(request.GET["size"]), 0
    for message in request.websocket:
        got += len(message)
        if got >= size:
            request.websocket.send(str(got))


@require_websocket
def raise_closed(request: HttpRequest) -> None:
    """Raise ConnectionClosed after the first message: a normal end."""
    request.websocket.wait()
    raise ConnectionClosed(1000, "done")


@require_websocket
def raise_error(request: HttpRequest) -> None:
    """Raise after the first message: 1011 for the client."""
    request.websocket.wait()
    raise RuntimeError("boom (on purpose, tests.views.raise_error)")


@require_websocket
def big(request: HttpRequest) -> None:
    """Send 1 MiB, binary, or text with ``?text=1``, or random bytes (which compression
    does not make smaller) with ``?random=1``."""
    size = int(request.GET.get("size", str(1 << 20)))
    if request.GET.get("text"):
        request.websocket.send("é" * (size // 2))
    elif request.GET.get("random"):
        request.websocket.send(os.urandom(size))
    else:
        request.websocket.send(bytes(range(256)) * (size // 256))
    request.websocket.wait()


@require_websocket
def refuse_by_raising(request: HttpRequest) -> None:
    """Raise before accepting: ``Http404`` with ``?status=404``, else ``PermissionDenied``."""
    if request.GET.get("status") == "404":
        raise Http404("no such room")
    raise PermissionDenied("not your room")


@require_websocket
def close_unaccepted(request: HttpRequest) -> None:
    """Close before accepting (which accepts first: a 101, then the close)."""
    request.websocket.close(4000, "closed before the accept")


@require_websocket
def deliver_wide(request: HttpRequest) -> None:
    """``deliver()`` a memoryview of ``?n=`` 4-byte ints (4n bytes, n items), or with
    ``?text=1`` n times "é" (2n bytes of UTF-8), after the accept or, with ``?early=1``,
    before it; then wait for the close."""
    n = int(request.GET["n"])
    items = array.array("i", range(n))
    assert items.itemsize == 4
    if not request.GET.get("early"):
        request.websocket.accept()
    request.websocket.deliver("é" * n if request.GET.get("text") else memoryview(items))
    request.websocket.wait()


@require_websocket
def nothing(request: HttpRequest) -> None:
    """Return None without touching the connection: accepted, then closed with 1000."""
    return None


@require_websocket
def ping(request: HttpRequest) -> None:
    """Ping the client, then echo."""
    request.websocket.ping(b"server ping")
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def info(request: HttpRequest) -> None:
    """Send what the server sees: read()/count_messages() before and after a message."""
    ws = request.websocket
    first = ws.read()
    ws.send(json.dumps({"read": first}))
    message = ws.wait(10)
    ws.send(json.dumps({"wait": message, "count": ws.count_messages()}))
    ws.wait()


@require_websocket
def helper_accepts(request: HttpRequest) -> None:
    """A helper thread's ``send("hello")`` is the first use of the connection, so it runs
    the handshake, and its ``websocket_opened`` (``_opened_slowly``, standing in for a
    receiver that queries a database) lasts until the view is waiting; the view echoes
    every message, prefixed "echo:"."""
    ws = request.websocket
    opened, waiting = threading.Event(), threading.Event()
    request.dws_opened_slowly = (opened, waiting)  # type: ignore[attr-defined]

    helper = _hello_from_a_helper(ws)
    if opened.wait(_WAIT):  # the helper accepted and is in websocket_opened
        waiting.set()
    for message in ws:
        ws.send(f"echo:{message}")
    helper.join(_WAIT)


_WAIT = 10.0


def _hello_from_a_helper(ws: Any) -> threading.Thread:
    """A started helper thread whose ``send("hello")`` is the connection's first use: it
    runs the handshake (and ``websocket_opened``) itself."""

    def hello() -> None:
        with contextlib.suppress(ConnectionClosed):
            ws.send("hello")

    helper = threading.Thread(target=hello, daemon=True)
    helper.start()
    return helper


def _opened_slowly(sender: type, request: HttpRequest, **kwargs: Any) -> None:
    """``helper_accepts``' receiver: return only once the view waits for a message (and a
    little later, so that the view's ``wait()`` is reading the socket by then)."""
    events = getattr(request, "dws_opened_slowly", None)
    if events is not None:
        opened, waiting = events
        opened.set()
        waiting.wait(_WAIT)
        time.sleep(0.2)


websocket_opened.connect(_opened_slowly, dispatch_uid="tests.views.opened_slowly")


#: The signals each ``opened_while_gone`` connection got, in order, by ``?id=``.
SIGNALS: dict[str, list[str]] = {}


@accept_websocket
def opened_while_gone(request: HttpRequest) -> HttpResponse | None:
    """WebSocket: a helper thread's ``send("hello")`` runs the handshake, and its
    ``websocket_opened`` receiver (``_opened_until_closed``) returns only once the
    connection is closed; meanwhile the view waits, and sees the client leave (it does
    right after the 101). What the connection's receivers got is recorded under ``?id=``.
    Plain HTTP: that record and how many connections the default backend's registry
    holds, as JSON."""
    key = request.GET["id"]
    if not request.is_websocket():
        from dwebsocket.backends.default.registry import open_websockets

        with _CLOSES_LOCK:
            seen = list(SIGNALS.get(key, []))
        return JsonResponse({"signals": seen, "open": len(open_websockets())})
    ws = request.websocket
    entered = threading.Event()
    with _CLOSES_LOCK:
        SIGNALS[key] = []
    request.dws_until_closed = (key, entered)  # type: ignore[attr-defined]

    helper = _hello_from_a_helper(ws)
    entered.wait(_WAIT)  # the helper accepted and is in websocket_opened
    while ws.wait(_WAIT) is not None:
        pass
    helper.join(_WAIT)
    return None


def _signal(request: HttpRequest, what: str) -> tuple[str, threading.Event] | None:
    marks = getattr(request, "dws_until_closed", None)
    if marks is not None:
        with _CLOSES_LOCK:
            SIGNALS[marks[0]].append(what)
    return marks


def _opened_until_closed(sender: type, request: HttpRequest, websocket: Any, **kwargs: Any) -> None:
    """``opened_while_gone``'s receiver: returns once the connection is closed (bounded)."""
    marks = _signal(request, "opened")
    if marks is not None:
        marks[1].set()
        deadline = time.monotonic() + _WAIT
        while not websocket.is_closed() and time.monotonic() < deadline:
            time.sleep(0.01)
        _signal(request, "opened returned")


def _closed_after(sender: type, request: HttpRequest, code: int, **kwargs: Any) -> None:
    _signal(request, f"closed {code}")


websocket_opened.connect(_opened_until_closed, dispatch_uid="tests.views.opened_until_closed")
websocket_closed.connect(_closed_after, dispatch_uid="tests.views.closed_after")


@require_websocket
def fail_accept(request: HttpRequest) -> None:
    """The transport's ``?step=`` (``take_over`` or ``fast_path``) raises ``MemoryError``
    once done, in the view's ``accept()``: the connection cannot open."""
    transport = request.websocket._transport
    real = getattr(transport, request.GET["step"])

    def failing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise MemoryError("tests.views.fail_accept")

    setattr(transport, request.GET["step"], failing)
    request.websocket.accept()


class _Answer(HttpResponse):
    """A 200 (or ``status``) that sets ``answered`` once the server is done with it (WSGI's
    ``close()``)."""

    def __init__(self, answered: threading.Event, status: int = 200) -> None:
        super().__init__("answered\n", content_type="text/plain", status=status)
        self["Content-Length"] = str(len(self.content))  # a reader knows where it ends
        self._answered = answered

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._answered.set()


@require_websocket
def answered_while_a_helper_accepts(request: HttpRequest) -> HttpResponse:
    """A helper thread's ``send("hello")`` runs the handshake, held right after taking the
    socket over until the server is done with the view's answer (at most a second): the
    view returns a 200 while the helper is inside ``accept()``. The connection's
    receivers are ``opened_while_gone``'s, which record under ``?id=`` (read back there)."""
    ws = request.websocket
    key = request.GET["id"]
    with _CLOSES_LOCK:
        SIGNALS[key] = []
    request.dws_until_closed = (key, threading.Event())  # type: ignore[attr-defined]
    inside, answered = threading.Event(), threading.Event()
    transport = ws._transport
    take_over = transport.take_over

    def held(*args: Any, **kwargs: Any) -> bytes:
        buffered = take_over(*args, **kwargs)
        inside.set()
        answered.wait(1.0)
        return buffered

    transport.take_over = held
    _hello_from_a_helper(ws)
    inside.wait(_WAIT)
    return _Answer(answered)


@require_websocket
def _answered_403(request: HttpRequest, answered: threading.Event) -> HttpResponse:
    return _Answer(answered, status=403)


def answered_then_a_helper_uses(request: HttpRequest) -> HttpResponse:
    """Around a view that answers 403 unaccepted, a helper thread's ``accept()`` or
    ``send("hello")`` (``?use=``) starts once the server is done with that answer
    (``?when=served``, at most ``_WAIT``), or (``?when=returned``) as soon as the session
    returned it, before the server has it: this view then waits until the helper is done
    (bounded). What the helper's call raised is recorded under ``?id=`` as
    ``"helper: ..."``, after any signal of the connection (``opened_while_gone``'s
    receivers; read back there)."""
    key, use = request.GET["id"], request.GET["use"]
    with _CLOSES_LOCK:
        SIGNALS[key] = []
    request.dws_until_closed = (key, threading.Event())  # type: ignore[attr-defined]
    answered, done = threading.Event(), threading.Event()

    def late() -> None:
        answered.wait(_WAIT)
        ws = request.websocket  # type: ignore[attr-defined]
        try:
            ws.accept() if use == "accept" else ws.send("hello")
        except Exception as exc:
            outcome = f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()
        else:
            outcome = "returned"
        with _CLOSES_LOCK:
            SIGNALS[key].append(f"helper: {outcome}")
        done.set()

    threading.Thread(target=late, daemon=True).start()
    response = _answered_403(request, answered)
    if request.GET.get("when") == "returned":
        answered.set()
        done.wait(_WAIT)
    return response
