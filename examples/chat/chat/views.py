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

Every process serving the room reaches every tab through ``dwebsocket.groups``. Who is
here comes from ``groups.presence``: each socket joins the room's group as a present
member (``presence={"name": ...}``), so every process answers the same, and the tabs of a
process that died vanish within twice ``WEBSOCKET_PRESENCE_HEARTBEAT``. The messages
live in the database; the room's group keeps its recent ones (``WEBSOCKET_GROUPS_HISTORY``),
so a tab that comes back gets what it missed from the group; only a new tab, or one away
for longer than that history reaches, gets the last messages from the database. Typing
notices go to a group without history: they are stale a second later.

A page of a logged-in user (Django's ``LoginView``) chats under the user's name; its
socket is known by its user and session, so logging out -- in any tab, through any
process -- closes it with 4001 (``dwebsocket.users``), and the page says so instead of
reconnecting. Anonymous pages pick a name (``?name=``), but not an account's: that socket
is closed with 1008 and a reason, which the page shows.

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
import secrets
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

from chat.models import Message
from dwebsocket import groups, require_websocket
from dwebsocket.exceptions import GroupsUnavailable
from dwebsocket.websocket import WebSocket

#: Seconds between two typing notices one tab may cause; the page sends one every 2 s.
TYPING_INTERVAL = 1.0
#: Messages one tab may send at once, then one every MESSAGE_INTERVAL seconds: each is a
#: database write and a message to every tab of the room, so a flood is refused.
MESSAGE_BURST = 10
MESSAGE_INTERVAL = 1.0
MAX_TEXT = 2000
NAME = re.compile(r"^[\w .-]{1,24}$")


def room(request: HttpRequest, room: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room": room})


@require_websocket
def socket(request: HttpRequest, room: str) -> HttpResponse | None:
    if request.user.is_authenticated:
        # As Django allows it ('@', '+': an e-mail address), not as a guest may pick one.
        name = request.user.get_username()[:24]
    else:
        name = request.GET.get("name", "").strip()
        if not NAME.match(name):
            # The handshake has not happened yet: a plain HTTP answer still works.
            return HttpResponseBadRequest("name: 1 to 24 letters, digits, spaces, '.', '-' or '_'")
    ws = request.websocket
    if not request.user.is_authenticated and is_account(name):
        # Else a guest's messages would read as the account's. A close the page shows and
        # does not retry (1008), rather than a refused handshake it would retry forever.
        ws.accept()
        ws.close(1008, "that name is an account's: log in to use it, or pick another")
        return None
    group = f"chat.{room}"
    sid = secrets.token_hex(6)  # this tab, so that the page knows its own notices
    # Join before reading the history, so that nothing said in between is lost (it reaches
    # the page before the welcome: the page drops a message it already has and shows each
    # in the order of the ids). A tab that reconnects gets what it missed from the group's
    # history, before this returns. Present from here on, in every process's
    # groups.presence, until the socket closes.
    joined = ws.join(group, since=groups.since(request, group), presence={"name": name})
    ws.join(f"typing.{room}")
    try:
        history = [] if joined.recovered else Message.history(room)
        members = present(group)
        welcome = dump(
            type="welcome",
            room=room,
            user=name,
            sid=sid,
            history=history,
            members=members,
            recovered=joined.recovered,
        )
        ws.send(welcome)
        groups.send(group, dump(type="join", user=name, sid=sid, members=members))
        converse(ws, group, room, name, sid)
    finally:
        groups.leave(group, ws)  # no longer present (closing would do it too)
        groups.send(group, dump(type="leave", user=name, sid=sid, members=present(group)))
    return None


def is_account(name: str) -> bool:
    """Whether ``name`` is a user name of an account, whatever its case."""
    User = get_user_model()
    return User._default_manager.filter(**{f"{User.USERNAME_FIELD}__iexact": name}).exists()


def present(group: str) -> list[str]:
    """Names connected to the room now, in every process, sorted, each once (a user may
    have two tabs; anonymous pages may pick the same name)."""
    try:
        return sorted({str(member.info.get("name")) for member in groups.presence(group)})
    except GroupsUnavailable:  # Redis away for now: the list comes with the next notice
        return []


def converse(ws: WebSocket, group: str, room: str, name: str, sid: str) -> None:
    """Handle the tab's messages until it goes away."""
    typed = time.monotonic() - TYPING_INTERVAL
    # A token bucket: MESSAGE_BURST at most, one more every MESSAGE_INTERVAL.
    allowed, counted = float(MESSAGE_BURST), time.monotonic()
    for raw in ws:
        now = time.monotonic()
        event = parse(raw)
        kind = event.get("type")
        if kind == "message":
            text = event.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                ws.send(dump(type="error", error=f"a message is 1 to {MAX_TEXT} characters"))
                continue
            allowed = min(MESSAGE_BURST, allowed + (now - counted) / MESSAGE_INTERVAL)
            counted = now
            if allowed < 1:
                ws.send(dump(type="error", error="too many messages: wait a moment"))
                continue
            allowed -= 1
            message = Message.objects.create(room=room, user=name, text=text.strip())
            # Sent after the write has committed: a tab that reconnects right now finds the
            # message in its history, and the page drops the duplicate.
            groups.send(group, dump(**message.as_json()))
            typed = now - TYPING_INTERVAL  # the next keystroke is news again
        elif kind == "typing":
            if now - typed >= TYPING_INTERVAL:
                typed = now
                groups.send(f"typing.{room}", dump(type="typing", user=name, sid=sid))
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
