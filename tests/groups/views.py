"""Group views the server tests drive (mounted under ``/group/`` by ``tests/urls.py``)."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse

from dwebsocket import accept_websocket, groups, require_websocket


@require_websocket
def member(request: HttpRequest, name: str, then_direct: bool = False) -> None:
    """Join group ``name``, say ``joined``, then forward every message the client sends to
    the group. With ``?id=X``, report the close code to group ``monitor`` when closed.
    With ``then_direct`` (``<name>/then-direct/``), a message ``n`` is ``n`` rounds of two
    messages to the group (this connection among its members), then one to this
    connection (``send``)."""
    ws = request.websocket
    ws.join(name)
    ws.send("joined")
    for message in ws:
        if not then_direct:
            groups.send(name, message)
            continue
        for i in range(int(message)):
            groups.send(name, f"{i} group")
            groups.send(name, f"{i} group again")
            ws.send(f"{i} direct")
    if "id" in request.GET:
        groups.send(
            "monitor",
            json.dumps({"id": request.GET["id"], "code": ws.close_code, "pid": _pid()}),
        )


@accept_websocket
def status(request: HttpRequest, name: str) -> HttpResponse:
    """Plain HTTP: this process's pid and the number of local members of ``name``, and of
    those present in it."""
    return JsonResponse(
        {
            "pid": _pid(),
            "members": len(groups.members(name)),
            "present": len(groups.presence(name)),
        }
    )


@require_websocket
def joined_then_refused(request: HttpRequest, name: str) -> HttpResponse:
    """Joins group ``name``, present, before the 101 (as docs/channels.rst's chat does),
    then answers with HTTP: 403 (a check that failed after the join)."""
    request.websocket.join(name, presence={})
    return HttpResponseForbidden("not you")


def _pid() -> int:
    import os

    return os.getpid()


@require_websocket
def follower(request: HttpRequest, name: str) -> None:
    """Join history group ``name`` from the position the client asks for
    (``groups.since``), report the outcome as JSON, then forward what the client sends
    to the group (``"position?"``: answer with the position ``groups.send`` returned)."""
    ws = request.websocket
    recovery = ws.join(name, since=groups.since(request, name))
    ws.send(recovery_json(recovery))
    for message in ws:
        groups.send(name, message)


#: The browser client's test page: ``?group=NAME`` (and ``ping``/``pingTimeout`` in ms,
#: ``module=1`` to load the ES module instead of the plain script). It records the group
#: messages in ``window.got`` and the events in ``window.events``.
PAGE = """<!doctype html>
<meta charset="utf-8"><title>dwebsocket client</title>
<script src="/group/static/dwebsocket/dwebsocket.js"></script>
<script type="module">
const params = new URLSearchParams(location.search);
const Socket = params.get("module")
  ? (await import("/group/static/dwebsocket/dwebsocket.module.js")).Socket
  : window.dwebsocket.Socket;
window.got = [];
window.plain = [];
window.events = [];
const options = { minDelay: 200, maxDelay: 2000 };
if (params.get("ping")) options.pingInterval = +params.get("ping");
if (params.get("pingTimeout")) options.pingTimeout = +params.get("pingTimeout");
window.sock = new Socket("/group/" + params.get("group") + "/follow/", options);
sock.on("message", (data, meta) => {
  const value = typeof data === "string" ? data : [...new Uint8Array(data)];
  if (meta.group) got.push([value, meta.position]);
  else plain.push(data);
});
for (const type of ["open", "close", "joined", "recovered", "recoveryfailed", "dws"]) {
  sock.on(type, (e) => events.push([type, e]));
}
</script>
"""


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def recovery_json(recovery: groups.Recovery) -> str:
    """What ``follower`` (and its async twin) tells its client of its join."""
    fields = ("since", "position", "recovered", "failed", "missed")
    return json.dumps({"recovery": {name: getattr(recovery, name) for name in fields}})
