"""The chat: a page, and one long-lived WebSocket view per browser tab.

Wire format: JSON text messages (the page uses dwebsocket's browser client, which keeps
the position of the last room message it saw and resumes from it when it reconnects).

browser -> server   {"type": "message", "text": "..."}   {"type": "typing"}
server -> browser   {"type": "welcome", "room", "user", "sid", "history": [...], "members": [...],
                     "recovered"}
                    {"type": "message", "id", "user", "text", "time"}
                    {"type": "join" | "leave", "user", "sid", "members": [...]}
                    {"type": "typing", "user", "sid"}
                    {"type": "error", "error": "..."}

Every process serving the room reaches every tab through ``dwebsocket.groups``; what must
outlive a process (the history, who is here) lives in the database. The room's group keeps
its recent messages (``WEBSOCKET_GROUPS_HISTORY``), so a tab that comes back gets what it
missed from the group; only a new tab, or one away for longer than that history reaches,
gets the last messages from the database. Typing notices go to a group without history:
they are stale a second later.

Database connections: nothing to do here. Before ``wait()`` blocks, dwebsocket gives back
the connections Django would close at the end of a request (``CONN_MAX_AGE``; see
docs/deployment.rst), so a hundred idle tabs hold no connection and a connection the
database dropped meanwhile is never reused. What a long-lived view must not do is wait or
send inside ``transaction.atomic()`` (or run under ``ATOMIC_REQUESTS``): that holds the
connection, and with SQLite the write lock, for as long as the network takes. Here every
write is one autocommitted statement.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.utils import timezone

from chat.models import Message, Presence
from dwebsocket import groups, require_websocket
from dwebsocket.websocket import WebSocket

#: Seconds between presence refreshes while a socket is idle (see models.PRESENCE_TTL).
HEARTBEAT = 20.0
#: Seconds between two typing notices one tab may cause; the page sends one every 2 s.
TYPING_INTERVAL = 1.0
MAX_TEXT = 2000
NAME = re.compile(r"^[\w .-]{1,24}$")


def room(request: HttpRequest, room: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room": room})


@require_websocket
def socket(request: HttpRequest, room: str) -> HttpResponse | None:
    name = request.GET.get("name", "").strip()
    if not NAME.match(name):
        # The handshake has not happened yet: a plain HTTP answer still works.
        return HttpResponseBadRequest("name: 1 to 24 letters, digits, spaces, '.', '-' or '_'")
    ws = request.websocket
    group = f"chat.{room}"
    # Join before reading the history, so that nothing said in between is lost (the page
    # drops a message it already has, by id). A tab that reconnects gets what it missed
    # from the group's history, before this returns.
    joined = ws.join(group, since=groups.since(request, group))
    ws.join(f"typing.{room}")
    me = Presence.objects.create(room=room, user=name)
    try:  # from here on, the presence row goes when the tab does, whatever happens
        history = [] if joined.recovered else Message.history(room)
        members = Presence.members(room)
        welcome = dump(
            type="welcome",
            room=room,
            user=name,
            sid=me.pk,
            history=history,
            members=members,
            recovered=joined.recovered,
        )
        ws.send(welcome)
        groups.send(group, dump(type="join", user=name, sid=me.pk, members=members))
        converse(ws, group, room, me)
    finally:
        me.delete()
        members = Presence.members(room)
        groups.send(group, dump(type="leave", user=name, sid=me.pk, members=members))
    return None


def converse(ws: WebSocket, group: str, room: str, me: Presence) -> None:
    """Handle the tab's messages until it goes away."""
    refreshed = time.monotonic()
    typed = refreshed - TYPING_INTERVAL
    while True:
        # A timeout, not a bare wait(): the presence row must be refreshed while idle.
        raw = ws.wait(timeout=HEARTBEAT)
        if raw is None and ws.is_closed():
            return
        now = time.monotonic()
        if now - refreshed >= HEARTBEAT:
            Presence.objects.filter(pk=me.pk).update(seen=timezone.now())
            refreshed = now
        if raw is None:
            continue
        event = parse(raw)
        kind = event.get("type")
        if kind == "message":
            text = event.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                ws.send(dump(type="error", error=f"a message is 1 to {MAX_TEXT} characters"))
                continue
            message = Message.objects.create(room=room, user=me.user, text=text.strip())
            # Sent after the write has committed: a tab that reconnects right now finds the
            # message in its history, and the page drops the duplicate.
            groups.send(group, dump(**message.as_json()))
            typed = now - TYPING_INTERVAL  # the next keystroke is news again
        elif kind == "typing":
            if now - typed >= TYPING_INTERVAL:
                typed = now
                groups.send(f"typing.{room}", dump(type="typing", user=me.user, sid=me.pk))
        else:
            ws.send(dump(type="error", error="expected a JSON object with type message or typing"))


def parse(raw: str | bytes) -> dict[str, Any]:
    """The JSON object the page sent; empty if it is anything else."""
    if isinstance(raw, bytes):
        return {}
    try:
        event = json.loads(raw)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def dump(**fields: Any) -> str:
    return json.dumps(fields, separators=(",", ":"))
