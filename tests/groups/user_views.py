"""Views for the users and presence tests (``tests/groups/user_urls.py``): a socket that
says whose it is, and plain HTTP views that log in and out, change a password, and call
``dwebsocket.users`` -- what a site's own views would do."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_out
from django.db import router, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from dwebsocket import groups, require_websocket, users

PASSWORD = "correct horse battery staple"


class DirectoryBackend(ModelBackend):
    """A backend whose ``get_user`` looks users up by primary key in a mapping (a cache, a
    directory), keyed as Django hands the key over: ``pk.to_python`` of the session's,
    an int for an ``AutoField``."""

    def get_user(self, user_id: Any) -> User | None:
        return {user.pk: user for user in User.objects.all()}.get(user_id)


@require_websocket
def socket(request: HttpRequest) -> None:
    """Say ``{"user": name or null, "pid": ...}``, then stay open until the client
    closes (what arrives is ignored). With ``?group=G`` join G; with ``&presence=1`` as a
    present member (info: the user name and the ``tab`` parameter); with ``&events=1``
    receive the join/leave events (without ``presence``: listening, not present)."""
    ws = request.websocket
    name = request.user.get_username() if request.user.is_authenticated else None
    group = request.GET.get("group")
    if group:
        if request.GET.get("presence"):
            ws.join(
                group,
                presence={"name": name, "tab": request.GET.get("tab", "")},
                events=bool(request.GET.get("events")),
            )
        else:
            ws.join(group, events=bool(request.GET.get("events")))
    ws.send(json.dumps({"user": name, "pid": os.getpid()}))
    for _message in ws:
        pass


@require_websocket
def quiet(request: HttpRequest) -> None:
    """Send nothing; stay open until the client closes (what arrives is ignored)."""
    for _message in request.websocket:
        pass


@require_websocket
async def quiet_async(request: HttpRequest) -> None:
    """:func:`quiet` as an ``async def`` view."""
    async for _message in request.websocket:
        pass


class EndedAfterAuthentication:
    """Middleware: on ``/ws/ended-after-authentication/``, authenticate the request (as a
    middleware checking access does), then end its session (a logout in another tab,
    landing then) -- all before the view, and so before its decorator sees the request."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/ws/ended-after-authentication/":
            from django.contrib.sessions.models import Session

            assert request.user.is_authenticated
            Session.objects.get(session_key=request.session.session_key).delete()
        response: HttpResponse = self.get_response(request)
        return response


@require_websocket
def revoked_while_opening(request: HttpRequest) -> None:
    """As :func:`socket`, but the session ends after the request was authenticated and
    before the socket is accepted (a logout in another tab, landing meanwhile)."""
    from django.contrib.sessions.models import Session

    assert request.user.is_authenticated
    Session.objects.get(session_key=request.session.session_key).delete()
    socket(request)


@require_websocket
def store_down_while_opening(request: HttpRequest) -> None:
    """As :func:`socket`, but the session store (``tests.groups.flaky_sessions``) goes
    down after the request was authenticated and before the socket is accepted."""
    from tests.groups import flaky_sessions

    assert request.user.is_authenticated
    flaky_sessions.DOWN.set()
    request.user.save()  # a user saved (every field): check the sessions
    socket(request)


@require_websocket
def saved_while_opening(request: HttpRequest) -> None:
    """As :func:`socket`, but its user is saved (in the admin's change form, say: every
    field) after the request was authenticated and before the socket is accepted: the
    command to check that user's sessions finds no socket of this one's."""
    assert request.user.is_authenticated
    request.user.save()
    socket(request)


@require_websocket
def disconnected_while_opening(request: HttpRequest) -> None:
    """As :func:`socket`, but ``users.disconnect`` of its user runs (and returns) after
    the request was authenticated and before the socket is accepted (a ban by an admin,
    landing while the page loads)."""
    assert request.user.is_authenticated
    users.disconnect(request.user, code=4003, reason="banned")
    socket(request)


@require_websocket
def token_disconnected_while_opening(request: HttpRequest) -> None:
    """As :func:`disconnected_while_opening`, for a socket whose user is not in a session
    (``?username=X``: what a middleware authenticating by a token in the URL does)."""
    request.user = User.objects.get(username=request.GET["username"])
    users.disconnect(request.user, code=4003, reason="banned")
    socket(request)


@require_websocket
def token(request: HttpRequest) -> None:
    """:func:`socket` for the user ``?username=X`` names, whatever the session (what a
    middleware authenticating by a token in the URL does)."""
    request.user = User.objects.get(username=request.GET["username"])
    socket(request)


class StatelessUser:
    """A user a token names, made from its claims, not read from the database (as
    simplejwt's ``TokenUser``: the users may live in another service's database)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True

    def __init__(self, pk: str) -> None:
        self.pk = self.id = pk

    def get_username(self) -> str:
        return f"user {self.pk}"


@require_websocket
def stateless_token(request: HttpRequest) -> None:
    """:func:`socket` for the user ``?pk=X`` of a token, known by no database here."""
    request.user = StatelessUser(request.GET["pk"])  # type: ignore[assignment]
    socket(request)


@require_websocket
def model_token(request: HttpRequest) -> None:
    """:func:`socket` for an instance of the user model (whatever it is) of primary key
    ``?pk=X`` (read by the model's pk field), made from a token's claims: not read from
    the database (``tests.groups.uuid_users`` has no table)."""
    from django.contrib.auth import get_user_model

    model = get_user_model()
    pk = model._meta.pk.to_python(request.GET["pk"])
    request.user = model(pk=pk, **{model.USERNAME_FIELD: f"user {pk}"})
    socket(request)


@require_websocket
def session_written(request: HttpRequest) -> None:
    """Before the handshake, ``?write=cycle``: ``request.session.cycle_key()`` (what
    ``login()`` does); ``?write=value``: ``request.session["value"] = "written"``;
    ``?write=deleted``: that, and the session's row deleted behind it; nothing else: the
    session untouched. Then accept, say the session key, and stay open
    until the client closes."""
    write = request.GET.get("write")
    if write == "cycle":
        request.session.cycle_key()
    elif write == "value":
        request.session["value"] = "written"
    elif write == "deleted":
        # A value written, and the session's row deleted meanwhile (a logout in another
        # tab): saving it then raises, and Django answers SessionInterrupted.
        request.session["value"] = "written"
        type(request.session)().delete(request.session.session_key)
    ws = request.websocket
    ws.accept()  # the session saved: a new one has its key now
    ws.send(json.dumps({"session": request.session.session_key}))
    for _message in ws:
        pass


def session_value(request: HttpRequest) -> HttpResponse:
    """What the session holds at "value" (empty: nothing)."""
    return HttpResponse(request.session.get("value", ""))


def log_in(request: HttpRequest) -> HttpResponse:
    """``?username=X``: log X in (password ``PASSWORD``); the session cookie is set."""
    user = authenticate(request, username=request.GET["username"], password=PASSWORD)
    if user is None:
        return HttpResponse("bad credentials", status=403)
    login(request, user)
    return JsonResponse({"session": request.session.session_key})


def whoami(request: HttpRequest) -> HttpResponse:
    """The user name of the request's user (empty: anonymous): a page any request reads
    the user in (``django.contrib.auth.get_user``)."""
    return HttpResponse(request.user.get_username() if request.user.is_authenticated else "")


def log_out(request: HttpRequest) -> HttpResponse:
    """``logout()``; with ``?paused=F&go=G`` its ``user_logged_out`` is slow
    (:func:`_logging_out`)."""
    logout(request)
    return HttpResponse("bye")


def _logging_out(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """``user_logged_out`` of the site's own (an audit log, say), connected after
    dwebsocket's: with ``?paused=F&go=G`` on the logout, it writes file F and waits (at
    most 20 s) for file G -- Django flushes the session only after every receiver."""
    from pathlib import Path

    if request is None or "paused" not in request.GET:
        return
    Path(request.GET["paused"]).touch()
    deadline = time.monotonic() + 20.0
    while not Path(request.GET["go"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


user_logged_out.connect(_logging_out, dispatch_uid="tests.groups.user_views")


def flush(request: HttpRequest) -> HttpResponse:
    """``request.session.flush()``: this session ends without a logout (what a "log out
    everywhere" page does to the other sessions, or ``login()`` as another user)."""
    request.session.flush()
    return HttpResponse("flushed")


class _RolledBack(Exception):
    pass


def delete_session(request: HttpRequest) -> HttpResponse:
    """``?key=K``: delete session K's row (an admin deleting it) in a transaction that,
    with ``&rollback=1``, is rolled back (something after it failed); with
    ``&deleted=F&commit=G``, writes file F once the row is deleted, then waits (at most
    20 s) for file G before it commits (the rest of a slow view)."""
    from pathlib import Path

    from django.contrib.sessions.models import Session

    try:
        with transaction.atomic(using=router.db_for_write(Session)):
            Session.objects.filter(session_key=request.GET["key"]).delete()
            if request.GET.get("rollback"):
                raise _RolledBack
            if "deleted" in request.GET:
                Path(request.GET["deleted"]).touch()
                deadline = time.monotonic() + 20.0
                while not Path(request.GET["commit"]).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
    except _RolledBack:
        return HttpResponse("rolled back")
    return HttpResponse("deleted")


def set_password(request: HttpRequest) -> HttpResponse:
    """``?username=X&password=Y``: change X's password, without
    ``update_session_auth_hash`` (every session of X ends)."""
    user = User.objects.get(username=request.GET["username"])
    user.set_password(request.GET["password"])
    user.save()
    return HttpResponse("changed")


def _user_model(request: HttpRequest) -> type[User]:
    """``User``, or with ``?through=staff`` its proxy ``Staff`` (``tests.groups.staff``,
    which the server must have installed)."""
    if request.GET.get("through") == "staff":
        from tests.groups.staff.models import Staff

        return Staff
    return User


def delete_user(request: HttpRequest) -> HttpResponse:
    """``?username=X``: delete X (their sessions stay, naming nobody)."""
    _user_model(request).objects.get(username=request.GET["username"]).delete()
    return HttpResponse("deleted")


def deactivate(request: HttpRequest) -> HttpResponse:
    """``?username=X``: X may no longer log in (``is_active = False``, saved). With
    ``&hold=S``, in a transaction that goes on S seconds after the save."""
    model = _user_model(request)
    with transaction.atomic(using=router.db_for_write(model)):
        user = model.objects.get(username=request.GET["username"])
        user.is_active = False
        user.save()
        time.sleep(float(request.GET.get("hold", 0)))  # more work: nothing committed yet
    return HttpResponse("deactivated")


def send(request: HttpRequest) -> HttpResponse:
    """``?username=X&text=T``: ``users.send(X, T)``."""
    user = User.objects.get(username=request.GET["username"])
    users.send(user, request.GET["text"])
    return HttpResponse("sent")


def disconnect(request: HttpRequest) -> HttpResponse:
    """``?username=X&code=C``: ``users.disconnect(X's pk, code=C)``."""
    user = User.objects.get(username=request.GET["username"])
    users.disconnect(user.pk, code=int(request.GET.get("code", users.REVOKED)))
    return HttpResponse("disconnected")


def presence(request: HttpRequest, name: str) -> HttpResponse:
    """``groups.presence(name)`` as JSON, with this process's pid."""
    return JsonResponse(
        {"pid": os.getpid(), "presence": [e._asdict() for e in groups.presence(name)]}
    )


def hang_sessions(request: HttpRequest) -> HttpResponse:
    """``?keys=K1,K2``: reads of those sessions hang (``tests.groups.flaky_sessions``)
    until :func:`answer_sessions`."""
    from tests.groups import flaky_sessions

    flaky_sessions.ANSWER.clear()
    flaky_sessions.HUNG.update(request.GET["keys"].split(","))
    return HttpResponse("hung")


def answer_sessions(request: HttpRequest) -> HttpResponse:
    """The reads that :func:`hang_sessions` hung return, and no read hangs any more."""
    from tests.groups import flaky_sessions

    flaky_sessions.HUNG.clear()
    flaky_sessions.ANSWER.set()
    return HttpResponse("answered")


def tasks(request: HttpRequest) -> HttpResponse:
    """How many threads run in this process, and greenlets under gevent."""
    count = threading.active_count()
    if "gevent" in sys.modules:
        from greenlet import greenlet

        count += sum(isinstance(o, greenlet) and not o.dead for o in gc.get_objects())
    return JsonResponse({"tasks": count})
