"""Views for the server lifecycle tests (``tests/test_servers_lifecycle.py``), under
``/lifecycle/``: connections that stay open until the server stops (with a slow
``finally``, or one that outlasts any stop), views killed the way servers kill them, and
a view that reports on its database connection."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path

from dwebsocket import require_websocket


@require_websocket
def wait(request: HttpRequest) -> None:
    """Say "ready" (the connection is registered), then echo until closed."""
    ws = request.websocket
    ws.send("ready")
    for message in ws:
        ws.send(message)


@require_websocket
def late(request: HttpRequest) -> None:
    """A handshake still in progress: create the file ``?mark=`` before touching the
    connection, wait (at most 10 s) for the file ``?go=`` to exist, then as ``wait``.
    ``?busy=SECONDS``: first run Python code that long without yielding, so that a stop
    signal sent meanwhile is handled on this view's own thread (greenlet)."""
    Path(request.GET["mark"]).touch()
    busy_until = time.monotonic() + float(request.GET.get("busy", 0))
    while time.monotonic() < busy_until:
        pass
    go = Path(request.GET["go"])
    deadline = time.monotonic() + 10.0
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    wait(request)


@require_websocket
def cleanup(request: HttpRequest) -> None:
    """As ``wait``, then a ``finally`` that takes a moment (a database write, a group
    leave) and creates the file ``?done=`` once over."""
    try:
        wait(request)
    finally:
        time.sleep(0.3)
        Path(request.GET["done"]).touch()


@require_websocket
def stubborn(request: HttpRequest) -> None:
    """As ``wait``, then a ``finally`` that runs ``?seconds=`` (a view that does not end
    when its connection does)."""
    try:
        wait(request)
    finally:
        time.sleep(float(request.GET["seconds"]))


class HoldBeforeTheView:
    """Middleware: a request with ``?hold=1`` creates the file ``?mark=`` and waits (at
    most 10 s) for the file ``?go=`` before going on: a handshake under way before
    dwebsocket has seen any WebSocket request in this process."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.GET.get("hold"):
            Path(request.GET["mark"]).touch()
            go = Path(request.GET["go"])
            deadline = time.monotonic() + 10.0
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return self.get_response(request)


def _exception(name: str) -> BaseException:
    if name == "GreenletExit":
        import greenlet

        return greenlet.GreenletExit()
    if name == "Timeout":
        import eventlet

        return eventlet.Timeout(None)
    if name == "SystemExit":
        return SystemExit(1)
    raise ValueError(name)


@require_websocket
def die(request: HttpRequest) -> None:
    """Say "ready", wait for one message, then raise ``?exc=`` (GreenletExit, Timeout,
    SystemExit): what a server's kill looks like from inside the view."""
    ws = request.websocket
    ws.send("ready")
    ws.wait()
    raise _exception(request.GET["exc"])


@require_websocket
def db(request: HttpRequest) -> None:
    """Use the database, then block in ``wait()``; report whether the connection was
    still open afterwards. With ``?atomic=1`` all of it happens inside ``atomic()``."""
    ws = request.websocket

    def session() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        ws.send("ready")
        ws.wait()
        ws.send(json.dumps({"open_after_wait": connection.connection is not None}))

    if request.GET.get("atomic"):
        with transaction.atomic():
            session()
    else:
        session()
    ws.wait()


urlpatterns = [
    path("wait/", wait),
    path("late/", late),
    path("cleanup/", cleanup),
    path("stubborn/", stubborn),
    path("die/", die),
    path("db/", db),
]
