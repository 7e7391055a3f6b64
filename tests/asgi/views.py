"""The views of ``tests/views.py`` as ``async def`` views (the same URLs in
``tests/asgi/async_urls.py``), and what the ASGI tests read from a server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable

from django.core.signals import got_request_exception
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.decorators import method_decorator
from django.views import View

from dwebsocket import ConnectionClosed, accept_websocket, groups, require_websocket
from dwebsocket.signals import websocket_closed, websocket_opened
from tests.groups.views import recovery_json
from tests.views import _CLOSES_LOCK, CLOSES, SIGNALS, recorded


@accept_websocket
async def echo(request: HttpRequest) -> HttpResponse | None:
    """Echo every message, with ``async for``; plain HTTP gets a page."""
    if not request.is_websocket():
        return HttpResponse("echo: plain HTTP\n", content_type="text/plain")
    async for message in request.websocket:
        await request.websocket.send(message)
    return None


@require_websocket
async def echo_wait(request: HttpRequest) -> None:
    """Echo every message, with ``await wait()`` (``?timeout=``: as in tests/views.py)."""
    timeout = float(request.GET["timeout"]) if "timeout" in request.GET else None
    while True:
        message = await request.websocket.wait(timeout)
        if message is None:
            return
        await request.websocket.send(message)


@require_websocket
async def refuse(request: HttpRequest) -> HttpResponse:
    """Refuse before accepting."""
    return HttpResponseForbidden("not you\n", content_type="text/plain")


@require_websocket
async def refuse_streaming(request: HttpRequest) -> StreamingHttpResponse:
    """Refuse before accepting with a body streamed by an async generator."""

    async def parts() -> AsyncIterator[bytes]:
        yield b"not "
        yield b"you\n"

    return StreamingHttpResponse(parts(), status=403)


@require_websocket
async def subprotocol(request: HttpRequest) -> None:
    """Choose "chat" if offered; report what was offered and chosen."""
    ws = request.websocket
    await ws.accept(subprotocol="chat" if "chat" in ws.offered_subprotocols else None)
    await ws.send(json.dumps({"offered": ws.protocols, "chosen": ws.subprotocol}))
    await ws.wait()


@require_websocket
async def close_with(request: HttpRequest) -> None:
    """Wait for one message, then close with ``?code=`` and ``?reason=``."""
    ws = request.websocket
    await ws.wait()
    await ws.close(int(request.GET.get("code", "1000")), request.GET.get("reason", ""))
    await ws.close(4999, "idempotent: never sent")


@accept_websocket
async def record(request: HttpRequest) -> HttpResponse | None:
    """As ``tests.views.record``: echo, then record how the connection closed."""
    key = request.GET["id"]
    if not request.is_websocket():
        return recorded(key)
    ws = request.websocket
    async for message in ws:
        await ws.send(message)
    with _CLOSES_LOCK:
        CLOSES[key] = {"code": ws.close_code, "reason": ws.close_reason, "closed": ws.closed}
    return None


@require_websocket
async def raise_closed(request: HttpRequest) -> None:
    """Raise ConnectionClosed after the first message: a normal end."""
    await request.websocket.wait()
    raise ConnectionClosed(1000, "done")


@require_websocket
async def raise_error(request: HttpRequest) -> None:
    """Raise after the first message: 1011 for the client."""
    await request.websocket.wait()
    raise RuntimeError("boom (on purpose, tests.asgi.views.raise_error)")


@require_websocket
async def ticks(request: HttpRequest) -> None:
    """A reader and a ticker in a ``TaskGroup`` (Python 3.11+), the way to run a view's
    tasks together: when the client leaves, the ticker's send raises ``ConnectionClosed``,
    which the group raises in an ``ExceptionGroup``."""
    ws = request.websocket

    async def read() -> None:
        async for _message in ws:
            pass

    async def tick() -> None:
        while True:
            await ws.send("tick")
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as tasks:  # type: ignore[attr-defined,unused-ignore]
        tasks.create_task(read())
        tasks.create_task(tick())


#: Django's ``got_request_exception`` (a view that raised: a 500 logged), by path.
ERRORS: dict[str, int] = {}


def _count_error(sender: object, request: HttpRequest | None = None, **kwargs: object) -> None:
    if request is not None:
        with _CLOSES_LOCK:
            ERRORS[request.path] = ERRORS.get(request.path, 0) + 1


got_request_exception.connect(_count_error, weak=False, dispatch_uid="tests.asgi.errors")


@require_websocket
async def big(request: HttpRequest) -> None:
    """Send 1 MiB, binary, or text with ``?text=1``."""
    size = int(request.GET.get("size", str(1 << 20)))
    if request.GET.get("text"):
        await request.websocket.send("é" * (size // 2))
    else:
        await request.websocket.send(bytes(range(256)) * (size // 256))
    await request.websocket.wait()


@require_websocket
async def nothing(request: HttpRequest) -> None:
    """Return None without touching the connection: accepted, then closed with 1000."""
    return None


@require_websocket
async def ping(request: HttpRequest) -> None:
    """Ping the client (under ASGI: nothing is sent), then echo."""
    await request.websocket.ping(b"server ping")
    async for message in request.websocket:
        await request.websocket.send(message)


@require_websocket
async def info(request: HttpRequest) -> None:
    """Send what the server sees: read()/count_messages() before and after a message."""
    ws = request.websocket
    first = await ws.read()
    await ws.send(json.dumps({"read": first}))
    message = await ws.wait(10)
    await ws.send(json.dumps({"wait": message, "count": ws.count_messages()}))
    await ws.wait()


@require_websocket
async def room(request: HttpRequest, name: str, then_direct: bool = False) -> None:
    """Join group ``name``; every message goes to the group (``groups.asend``). With
    ``then_direct`` (``room/<name>/then-direct/``), as ``tests.groups.views.member``'s."""
    ws = request.websocket
    await ws.join(name)
    await ws.send("joined")
    async for message in ws:
        if not then_direct:
            await groups.asend(name, message)
            continue
        for i in range(int(message)):
            await groups.asend(name, f"{i} group")
            await groups.asend(name, f"{i} group again")
            await ws.send(f"{i} direct")


@require_websocket
async def follower(request: HttpRequest, name: str) -> None:
    """``tests.groups.views.follower`` as an ``async def`` view: join history group
    ``name`` from the position the client asks for (``groups.since``), report the outcome
    as JSON, then forward what the client sends to the group (``groups.asend``)."""
    ws = request.websocket
    recovery = await ws.join(name, since=groups.since(request, name))
    await ws.send(recovery_json(recovery))
    async for message in ws:
        await groups.asend(name, message)


@require_websocket
async def json_echo(request: HttpRequest) -> None:
    """``wait_json`` / ``send_json``: answer each JSON message with ``{"got": ...}``."""
    ws = request.websocket
    while True:
        data = await ws.wait_json()
        if data is None:
            return
        await ws.send_json({"got": data})


@require_websocket
async def close_from_the_loop(request: HttpRequest) -> None:
    """After one message, close through the sync connection object, as sync code called
    from this coroutine would (``users.disconnect``, say): it must not wait for itself."""
    ws = request.websocket
    await ws.wait()
    ws.sync.close(4003, "closed from the loop")
    await ws.wait()  # returns None once the close is done


@accept_websocket
async def two_readers(request: HttpRequest) -> HttpResponse | None:
    """Two tasks of the view wait for a message at the same time, twice: the client's two
    messages reach one each, then its close ends both waits. Plain HTTP with the same
    ``?id=`` gets what the two waits returned (404 until then)."""
    key = request.GET["id"]
    if not request.is_websocket():
        return recorded(key)
    ws = request.websocket
    await ws.accept()

    async def both() -> object:
        readers = [asyncio.ensure_future(ws.wait()) for _ in range(2)]
        await asyncio.sleep(0)  # each runs up to its wait
        if ws.is_closed():
            return None
        await ws.send("waiting")
        try:
            return await asyncio.wait_for(asyncio.gather(*readers), HOLD)
        except asyncio.TimeoutError:
            return "timed out"

    got = await both()
    await ws.send(json.dumps(got))
    got_then = await both()  # the client closes instead of sending
    with _CLOSES_LOCK:
        CLOSES[key] = {"messages": got, "closed": got_then}
    return None


@accept_websocket
async def stream(request: HttpRequest) -> HttpResponse | None:
    """Send 64 KiB messages, as fast as the server takes them, until the client leaves;
    then record how many and the close code under ``?id=`` (plain HTTP: that record, 404
    until then)."""
    key = request.GET["id"]
    if not request.is_websocket():
        return recorded(key)
    ws = request.websocket
    chunk, sent = bytes(1 << 16), 0
    try:
        while True:
            await ws.send(chunk)
            sent += 1
    except ConnectionClosed:
        with _CLOSES_LOCK:
            CLOSES[key] = {"code": ws.close_code, "sent": sent}
    return None


@method_decorator(accept_websocket, name="dispatch")
class ClassEcho(View):
    """:func:`echo` as a class-based view with ``async def`` handlers, decorated as
    Django's docs decorate class-based views (``method_decorator`` on ``dispatch``, a
    sync method that returns the handler's coroutine)."""

    async def get(self, request: HttpRequest) -> HttpResponse | None:
        if not request.is_websocket():  # type: ignore[attr-defined]
            return HttpResponse("class echo: plain HTTP\n", content_type="text/plain")
        async for message in request.websocket:  # type: ignore[attr-defined]
            await request.websocket.send(message)  # type: ignore[attr-defined]
        return None


async def marked_echo(request: HttpRequest) -> HttpResponse | None:
    """:func:`echo` without a decorator, for ``WebSocketMiddleware`` (which runs the
    session of a view with a true ``accept_websocket``)."""
    if not request.is_websocket():
        return HttpResponse("marked echo: plain HTTP\n", content_type="text/plain")
    async for message in request.websocket:
        await request.websocket.send(message)
    return None


marked_echo.accept_websocket = True  # type: ignore[attr-defined]


def marked_echo_sync(request: HttpRequest) -> HttpResponse | None:
    """:func:`marked_echo` as a sync view."""
    if not request.is_websocket():
        return HttpResponse("marked sync echo: plain HTTP\n", content_type="text/plain")
    for message in request.websocket:
        request.websocket.send(message)
    return None


marked_echo_sync.accept_websocket = True  # type: ignore[attr-defined]


async def required_echo(request: HttpRequest) -> None:
    """:func:`marked_echo` for WebSocket requests only (``require_websocket`` attribute)."""
    async for message in request.websocket:
        await request.websocket.send(message)


required_echo.require_websocket = True  # type: ignore[attr-defined]


class SyncOnlyMiddleware:
    """A middleware that can only be sync (Django's default for a class without
    ``async_capable``): listed after ``WebSocketMiddleware``, it makes that one sync too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)


@accept_websocket
async def close_behind_a_send(request: HttpRequest) -> HttpResponse | None:
    """A task sends 256 KiB messages until the connection closes, while the view closes
    (4000): behind a client that does not read, the close waits behind a send. Plain
    HTTP with the same ``?id=`` gets how the close ended, once it returned (404 until
    then)."""
    key = request.GET["id"]
    if not request.is_websocket():
        return recorded(key)
    ws = request.websocket
    await ws.accept()

    async def send() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(bytes(256 << 10))

    sender = asyncio.ensure_future(send())
    await asyncio.sleep(0.5)  # the client's buffers are full by now
    await ws.close(4000, "bye")
    await sender
    with _CLOSES_LOCK:
        CLOSES[key] = {"code": ws.close_code, "closed": ws.is_closed()}
    return None


@require_websocket
async def goodbye(request: HttpRequest) -> None:
    """Join group ``goodbye-<id>``; after one message, send ``?n=`` messages to that group
    (this connection among its members), then return, or close with 4000 (``?close=1``):
    the messages queued for it go out before the close, as on the default backend."""
    ws = request.websocket
    group = f"goodbye-{request.GET['id']}"
    await ws.join(group)
    await ws.wait()
    for i in range(int(request.GET.get("n", "5"))):
        await groups.asend(group, f"m{i}")
    if request.GET.get("close"):
        await ws.close(4000, "bye")


#: ``websocket_opened`` and ``websocket_closed`` signals sent for the ``lazy-accepts`` and
#: ``close-first`` views, by ``?lazy=``.
SIGNALLED: dict[str, dict[str, int]] = {}


def _counter(kind: str) -> Callable[..., None]:
    def count(sender: object, request: HttpRequest, **kwargs: object) -> None:
        key = request.GET.get("lazy")
        if key is not None:
            with _CLOSES_LOCK:
                seen = SIGNALLED.setdefault(key, {"opened": 0, "closed": 0})
                seen[kind] += 1

    return count


websocket_opened.connect(_counter("opened"), weak=False, dispatch_uid="tests.asgi.opened")
websocket_closed.connect(_counter("closed"), weak=False, dispatch_uid="tests.asgi.closed")


#: How long a ``?open_gate=`` connection's ``websocket_opened`` receiver waits for its
#: release (beyond the tests' waits: the test releases it).
OPEN_HOLD = 30.0


def _held_open(sender: object, request: HttpRequest, **kwargs: object) -> None:
    """``websocket_opened`` of a request with ``?open_gate=``: returns once
    ``release/?id=`` of that gate was requested (or ``OPEN_HOLD`` passed), as a receiver
    that waits for Redis does (users' join of a user's group waits for its SUBSCRIBE to be
    confirmed, up to the socket timeout)."""
    key = request.GET.get("open_gate")
    if key is not None:
        _gate(key).wait(OPEN_HOLD)


websocket_opened.connect(_held_open, weak=False, dispatch_uid="tests.asgi.held_open")


def _opened_count(request: HttpRequest) -> JsonResponse:
    with _CLOSES_LOCK:
        return JsonResponse(SIGNALLED.get(request.GET["lazy"], {"opened": 0, "closed": 0}))


@accept_websocket
async def lazy_accepts(request: HttpRequest) -> HttpResponse | None:
    """No explicit accept: a task sends while the view waits, both accepting on first use.
    Plain HTTP with the same ``?lazy=`` gets how many ``websocket_opened`` were sent."""
    if not request.is_websocket():
        return _opened_count(request)
    ws = request.websocket
    sender = asyncio.ensure_future(ws.send("tick"))
    message = await ws.wait()
    await sender
    await ws.send(f"got {message}")
    return None


@accept_websocket
def lazy_accepts_sync(request: HttpRequest) -> HttpResponse | None:
    """:func:`lazy_accepts` as a sync view, with a thread that sends."""
    if not request.is_websocket():
        return _opened_count(request)
    ws = request.websocket
    sender = threading.Thread(target=ws.send, args=("tick",))
    sender.start()
    message = ws.wait()
    sender.join(HOLD)
    ws.send(f"got {message}")
    return None


@accept_websocket
async def close_first(request: HttpRequest) -> HttpResponse | None:
    """Closes (4000) without accepting first: the accept it implies is signalled as any
    other. Plain HTTP with the same ``?lazy=`` gets the signals sent."""
    if not request.is_websocket():
        return _opened_count(request)
    await request.websocket.close(4000, "closed first")
    return None


@accept_websocket
def close_first_sync(request: HttpRequest) -> HttpResponse | None:
    """:func:`close_first` as a sync view."""
    if not request.is_websocket():
        return _opened_count(request)
    request.websocket.close(4000, "closed first")
    return None


#: Gates that ``held`` views wait at before accepting, by ``?id=``; ``release`` opens one.
_GATES: dict[str, threading.Event] = {}
_GATES_LOCK = threading.Lock()
#: How long a held view waits for its release before it goes on anyway (under the
#: tests' socket timeout, tests.wire.TIMEOUT).
HOLD = 5.0


def _gate(key: str) -> threading.Event:
    with _GATES_LOCK:
        return _GATES.setdefault(key, threading.Event())


@require_websocket
def held(request: HttpRequest) -> None:
    """A sync echo view that accepts only once ``release/?id=`` was requested (so that a
    test can act between the handshake reaching the view and the accept)."""
    _gate(request.GET["id"]).wait(HOLD)
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
async def held_async(request: HttpRequest) -> None:
    """:func:`held` as an ``async def`` view."""
    gate, deadline = _gate(request.GET["id"]), time.monotonic() + HOLD
    while not gate.is_set() and time.monotonic() < deadline:  # no thread for the wait
        await asyncio.sleep(0.02)
    async for message in request.websocket:
        await request.websocket.send(message)


@accept_websocket
def joined_held(request: HttpRequest) -> HttpResponse | None:
    """Joins group ``joined-<id>`` (present) before the accept, then :func:`held`. Plain
    HTTP with the same ``?id=``: the group's members and presence in this process."""
    group = f"joined-{request.GET['id']}"
    if not request.is_websocket():
        return JsonResponse(_membership(group))
    request.websocket.join(group, presence={})
    return held(request)


@accept_websocket
async def joined_held_async(request: HttpRequest) -> HttpResponse | None:
    """:func:`joined_held` as an ``async def`` view."""
    group = f"joined-{request.GET['id']}"
    if not request.is_websocket():
        return JsonResponse(_membership(group))
    await request.websocket.join(group, presence={})
    return await held_async(request)


def _membership(group: str) -> dict[str, int]:
    return {"members": len(groups.members(group)), "present": len(groups.presence(group))}


@require_websocket
def stalled(request: HttpRequest) -> None:
    """Accepts, then reads nothing until ``release/?id=`` was requested (or ``HOLD``
    passed), so that what the client sends fills the backlog; then echoes it all (with
    ``?sink=1``, reads it all and sends nothing)."""
    request.websocket.accept()
    _gate(request.GET["id"]).wait(HOLD)
    for message in request.websocket:
        if "sink" not in request.GET:
            request.websocket.send(message)


@require_websocket
async def stalled_async(request: HttpRequest) -> None:
    """:func:`stalled` as an ``async def`` view."""
    await request.websocket.accept()
    gate, deadline = _gate(request.GET["id"]), time.monotonic() + HOLD
    while not gate.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    async for message in request.websocket:
        if "sink" not in request.GET:
            await request.websocket.send(message)


@require_websocket
def database_while_waiting(request: HttpRequest) -> None:
    """At each message, whether this thread held a database connection when it came,
    then a query (which opens one): a sync view waiting in ``wait()`` gives back what
    Django would close at a request's end (docs/deployment.rst, "Database
    connections")."""
    from django.db import connection

    for message in request.websocket:  # type: ignore[attr-defined]
        held = connection.connection is not None
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        request.websocket.send(json.dumps({"message": message, "held": held}))  # type: ignore[attr-defined]


def release(request: HttpRequest) -> HttpResponse:
    """Let the held view of ``?id=`` accept."""
    _gate(request.GET["id"]).set()
    return HttpResponse("released")


async def counts(request: HttpRequest) -> JsonResponse:
    """Threads and tasks of this process, and the sessions open (plain HTTP)."""
    from dwebsocket.backends.asgi.session import sync_threads
    from dwebsocket.limits import open_sessions

    # Bounded pools keep their threads whatever the traffic: dwebsocket's signal threads,
    # the loop's default executor (sync_to_async(thread_sensitive=False)), the metrics
    # flusher. Counted apart from the others, which a session could leak.
    pooled = sum(
        1
        for thread in threading.enumerate()
        if thread.name.startswith(("dwebsocket-signals", "asyncio_", "dwebsocket-metrics"))
    )
    return JsonResponse(
        {
            "threads": threading.active_count() - pooled,
            "pooled": pooled,
            "tasks": len(asyncio.all_tasks()),
            "sync_sessions": sync_threads(),
            "sessions": open_sessions()[0],
            "errors": dict(ERRORS),
            "names": sorted(
                {thread.name.rstrip("0123456789_-") for thread in threading.enumerate()}
            ),
        }
    )


@require_websocket
async def _answered_403(request: HttpRequest) -> HttpResponse:
    return HttpResponseForbidden("answered\n", content_type="text/plain")


async def answered_then_a_task_uses(request: HttpRequest) -> HttpResponse:
    """``tests.views.answered_then_a_helper_uses`` with ``?when=returned`` for async views:
    around a view that answers 403 unaccepted, an ``accept()`` or ``send("hello")``
    (``?use=``) as soon as the session returned that answer, before the server has it.
    What it raised is recorded under ``?id=`` (read back at ``opened-while-gone/``)."""
    key, use = request.GET["id"], request.GET["use"]
    with _CLOSES_LOCK:
        SIGNALS[key] = []
    response = await _answered_403(request)
    ws = request.websocket  # type: ignore[attr-defined]
    try:
        await (ws.accept() if use == "accept" else ws.send("hello"))
    except Exception as exc:
        outcome = f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()
    else:
        outcome = "returned"
    with _CLOSES_LOCK:
        SIGNALS[key].append(f"helper: {outcome}")
    return response


@require_websocket
async def joined_by_function(request: HttpRequest, name: str) -> None:
    """:func:`follower` joining with ``dwebsocket.groups.join(name, request.websocket, ...)``
    (from a worker thread, as async code calls sync code), present, rather than with the
    method; then each message the client sends goes to the group."""
    from asgiref.sync import sync_to_async

    ws = request.websocket
    since = groups.since(request, name)
    recovery = await sync_to_async(groups.join)(name, ws, since, presence={})
    await ws.send(json.dumps({"recovered": recovery.recovered, "missed": recovery.missed}))
    async for message in ws:
        await groups.asend(name, message)
