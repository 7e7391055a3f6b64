"""``manage.py check --deploy`` (W010, W011), W004 as one message for many views, and the
report made at the first WebSocket when ``"dwebsocket"`` is not in ``INSTALLED_APPS``."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.db import transaction
from django.test import override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from dwebsocket import accept_websocket, require_websocket
from dwebsocket import apps as dwebsocket_apps
from dwebsocket.checks import check_async_views, check_atomic_requests, check_deploy_origins
from dwebsocket.exceptions import HandshakeRefused
from dwebsocket.handshake import origin_allowed
from dwebsocket.testing import WebSocketClient

ROOT = Path(__file__).resolve().parent.parent


@require_websocket
def first_view(request: Any) -> None: ...


@require_websocket
def second_view(request: Any) -> None: ...


urlpatterns = [path("first/", first_view), path("second/<int:n>/", second_view)]


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


def test_w004_one_message_naming_every_view_by_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=__name__):
        [warning] = check_atomic_requests()
    assert warning.id == "dwebsocket.W004" and warning.obj is None
    assert "2 views" in warning.msg
    assert "'first/' (tests.test_checks_deploy.first_view)" in warning.msg
    assert "'second/<int:n>/' (tests.test_checks_deploy.second_view)" in warning.msg
    assert "<function" not in warning.msg


class DecoratedGet(View):
    @method_decorator(accept_websocket)
    def get(self, request: Any) -> None: ...


class PlainGet(View):
    def get(self, request: Any) -> None: ...


#: A URLconf: a class-based WebSocket view (its handler decorated) and a plain one.
CLASS_BASED_VIEWS = ModuleType("class_based_views")
CLASS_BASED_VIEWS.urlpatterns = [  # type: ignore[attr-defined]
    path("cbv/", DecoratedGet.as_view()),
    path("plain/", PlainGet.as_view()),
]


def test_w004_names_a_class_based_view_whose_handler_is_decorated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ATOMIC_REQUESTS wraps the view Django resolves, as_view()'s function, so the session
    # of the decorated get() holds a transaction: W004 said nothing.
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=CLASS_BASED_VIEWS):
        [warning] = check_atomic_requests()
    assert warning.id == "dwebsocket.W004"
    assert "1 view:" in warning.msg and "'cbv/'" in warning.msg, warning.msg


@pytest.mark.parametrize(
    ("configured", "hosts", "expected"),
    [
        (["*"], [], ["dwebsocket.W010"]),
        (None, ["*"], ["dwebsocket.W010"]),
        (["https://example.com", "http://localhost:8000"], [], ["dwebsocket.W011"]),
        ([".localhost", "https://*.example.com"], [], ["dwebsocket.W011"]),
        (["127.0.0.1"], [], ["dwebsocket.W011"]),
        (None, ["example.com", "127.0.0.1"], ["dwebsocket.W011"]),
        (["https://example.com", "https://*.example.com"], [], []),
        (None, ["example.com", ".example.org"], []),
    ],
)
def test_deploy_origins(configured: object, hosts: list[str], expected: list[str]) -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=configured, ALLOWED_HOSTS=hosts, DEBUG=False):
        assert ids(check_deploy_origins()) == expected


@pytest.mark.parametrize("star", [" *", "* ", " * "])
def test_a_star_with_spaces_is_warned_about(star: str) -> None:
    # What "https://example.com, *".split(",") from an environment variable gives: the
    # handshake reads it as "*" (every origin allowed), and so must the check (it said
    # nothing).
    configured = ["https://example.com", star]
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=configured, DEBUG=False):
        assert origin_allowed("https://evil.example")
        assert ids(check_deploy_origins()) == ["dwebsocket.W010"]


@override_settings(WEBSOCKET_ALLOWED_ORIGINS=["*"])
def test_deploy_checks_run_only_with_deploy() -> None:
    assert "dwebsocket.W010" not in ids(checks.run_checks(include_deployment_checks=False))
    assert "dwebsocket.W010" in ids(checks.run_checks(include_deployment_checks=True))


def test_check_deploy_from_the_command_line() -> None:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(ROOT))
    code = (
        "import django; from django.conf import settings; django.setup();"
        "settings.WEBSOCKET_ALLOWED_ORIGINS = ['*'];"
        "from django.core.management import call_command;"
        "call_command('check', '--deploy')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stderr.count("dwebsocket.W010") == 1, done.stderr


def test_the_first_websocket_says_that_the_app_is_not_installed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dwebsocket_apps, "_not_installed_reported", False)
    others = [app for app in settings.INSTALLED_APPS if app != "dwebsocket"]
    with (
        override_settings(INSTALLED_APPS=others, WEBSOCKET_MAX_MESSAGE_SIZE="1M"),
        caplog.at_level(logging.ERROR, "dwebsocket"),
    ):
        for _ in range(2):
            with pytest.raises(HandshakeRefused) as refused, WebSocketClient("/echo/"):
                pass
            assert refused.value.status == 503  # the wrong setting
    [record] = [r for r in caplog.records if "INSTALLED_APPS" in r.getMessage()]
    assert "dwebsocket.E014" in record.getMessage()


def test_nothing_said_when_the_app_is_installed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dwebsocket_apps, "_not_installed_reported", False)
    with caplog.at_level(logging.ERROR, "dwebsocket"), WebSocketClient("/echo/") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
    assert not [r for r in caplog.records if "INSTALLED_APPS" in r.getMessage()]


def test_w012_gunicorn_without_its_hooks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dwebsocket.checks import check_deploy_gunicorn

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    assert ids(check_deploy_gunicorn()) == ["dwebsocket.W012"]  # gunicorn is installed here
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "-c python:dwebsocket.contrib.gunicorn -k gevent")
    assert check_deploy_gunicorn() == []
    monkeypatch.delenv("GUNICORN_CMD_ARGS")
    (tmp_path / "gunicorn.conf.py").write_text("from dwebsocket.contrib.gunicorn import *\n")
    assert check_deploy_gunicorn() == []


def test_i001_async_websocket_views_need_an_asgi_server() -> None:
    from dwebsocket.checks import check_async_views

    with override_settings(ROOT_URLCONF="tests.asgi.async_urls"):
        [info] = check_async_views()
    assert info.id == "dwebsocket.I001" and info.level == checks.INFO
    assert "'echo/'" in info.msg and "501" in info.msg
    with override_settings(ROOT_URLCONF=__name__):
        assert check_async_views() == []


@require_websocket
async def async_view(request: Any) -> None: ...


#: A URLconf: an async WebSocket view and a sync one.
ASYNC_AND_SYNC_VIEWS = ModuleType("async_and_sync_views")
ASYNC_AND_SYNC_VIEWS.urlpatterns = [  # type: ignore[attr-defined]
    path("async/", async_view),
    path("sync/", first_view),
]


def test_w004_says_that_django_refuses_to_run_an_async_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Django does not wrap an async view in ATOMIC_REQUESTS' transaction: it raises
    # RuntimeError("You cannot use ATOMIC_REQUESTS with async views") at each request, so
    # every WebSocket request to it is a 500. W004 said it held a transaction open.
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=ASYNC_AND_SYNC_VIEWS):
        warnings = check_atomic_requests()
    assert ids(warnings) == ["dwebsocket.W004", "dwebsocket.W004"]
    [held] = [w for w in warnings if "'sync/'" in w.msg]
    assert "holds a transaction open" in held.msg and "'async/'" not in held.msg
    [refused] = [w for w in warnings if "'async/'" in w.msg]
    assert "async" in refused.msg and "500" in refused.msg, refused.msg
    assert "holds a transaction open" not in refused.msg, refused.msg
    assert "non_atomic_requests" in (refused.hint or "")


def takes_a_room(request: Any, room: str) -> None: ...


@require_websocket
def room_view(request: Any, room: str) -> None: ...


@require_websocket
def non_atomic_room_view(request: Any, room: str) -> None: ...


@require_websocket
async def async_room_view(request: Any, room: str) -> None: ...


#: A URLconf of WebSocket views that are functools.partial objects, or wrap one.
PARTIAL_VIEWS = ModuleType("partial_views")
PARTIAL_VIEWS.urlpatterns = [  # type: ignore[attr-defined]
    path("partial/", functools.partial(room_view, room="lobby")),
    path("wraps-a-partial/", require_websocket(functools.partial(takes_a_room, room="lobby"))),
    path("cbv-partial/", functools.partial(DecoratedGet.as_view())),
    path("async-partial/", functools.partial(async_room_view, room="lobby")),
    # non_atomic_requests on the partial: Django reads it there, and runs no transaction.
    path(
        "non-atomic/",
        transaction.non_atomic_requests(functools.partial(room_view, room="lobby")),
    ),
    # ... but not through it: Django wraps this partial in the transaction.
    path(
        "non-atomic-inside/",
        functools.partial(transaction.non_atomic_requests(non_atomic_room_view), room="x"),
    ),
]


def test_w004_sees_websocket_views_that_are_partials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Django wraps the view it resolves, the partial, in ATOMIC_REQUESTS' transaction (or
    # refuses to run it, async), and the decorated view it calls runs the session in it.
    # W004 read the decorator's marks on the partial, which has none: it said nothing, and
    # named a decorated partial "functools._websocket_view.<locals>.wrapper".
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=PARTIAL_VIEWS):
        warnings = check_atomic_requests()
    assert ids(warnings) == ["dwebsocket.W004", "dwebsocket.W004"], warnings
    [held] = [w for w in warnings if "holds a transaction open" in w.msg]
    assert "4 views:" in held.msg, held.msg
    assert "'partial/' (tests.test_checks_deploy.room_view)" in held.msg
    assert "'wraps-a-partial/' (tests.test_checks_deploy.takes_a_room)" in held.msg
    assert "'cbv-partial/'" in held.msg
    assert "'non-atomic-inside/' (tests.test_checks_deploy.non_atomic_room_view)" in held.msg
    assert "'non-atomic/'" not in held.msg and "functools" not in held.msg, held.msg
    [refused] = [w for w in warnings if w is not held]
    assert "1 async view is answered 500" in refused.msg, refused.msg
    assert "'async-partial/' (tests.test_checks_deploy.async_room_view)" in refused.msg


def test_i001_sees_async_websocket_views_that_are_partials() -> None:
    # Django awaits the partial of an async view (asgiref's iscoroutinefunction unwraps
    # it), so a WSGI server answers it 501. I001 did not see it (no decorator's marks).
    with override_settings(ROOT_URLCONF=PARTIAL_VIEWS):
        [info] = check_async_views()
    assert info.id == "dwebsocket.I001"
    assert "('async-partial/')" in info.msg, info.msg
