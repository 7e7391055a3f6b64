"""The server and configuration system checks: one test per id (W002-W006, E001), and
how W002/W003 get reported inside a gunicorn worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.db import transaction
from django.test import override_settings
from django.urls import path
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from dwebsocket import accept_websocket, require_websocket
from dwebsocket import checks as dwebsocket_checks
from dwebsocket import worker as worker_info
from dwebsocket.checks import (
    MIDDLEWARE_PATH,
    check_atomic_requests,
    check_middleware,
    check_server,
)
from dwebsocket.middleware import WebSocketMiddleware


class ProjectWebSocketMiddleware(WebSocketMiddleware):
    """A project's own subclass of the middleware, listed in MIDDLEWARE instead of it."""


SUBCLASS_PATH = f"{__name__}.ProjectWebSocketMiddleware"


@require_websocket
def atomic_view(request: Any) -> None: ...


@transaction.non_atomic_requests
@accept_websocket
def non_atomic_view(request: Any) -> None: ...


def plain_view(request: Any) -> None: ...


urlpatterns = [
    path("atomic/", atomic_view),
    path("non-atomic/", non_atomic_view),
    path("plain/", plain_view),
]


def fake_worker(cls: type, threads: int = 1, timeout: float = 30) -> Any:
    worker = cls.__new__(cls)  # no __init__: it would want an arbiter
    worker.cfg = SimpleNamespace(threads=threads, timeout=timeout)
    return worker


@pytest.fixture(autouse=True)
def no_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(worker_info, "_worker", None)
    monkeypatch.setattr(dwebsocket_checks, "_reported", False)
    yield


def ids(messages: list[checks.CheckMessage]) -> list[str | None]:
    return [message.id for message in messages]


def test_no_server_outside_a_worker() -> None:
    assert check_server() == []


def test_w002_gunicorn_sync_worker() -> None:
    worker_info.note_gunicorn_worker(fake_worker(SyncWorker, timeout=30), hooks=True)
    [warning] = check_server()
    assert warning.id == "dwebsocket.W002" and warning.level == checks.WARNING
    assert "--timeout (30 s)" in warning.msg


def test_w003_gthread_with_one_thread() -> None:
    worker_info.note_gunicorn_worker(fake_worker(ThreadWorker, threads=1), hooks=True)
    assert ids(check_server()) == ["dwebsocket.W003"]
    worker_info.note_gunicorn_worker(fake_worker(ThreadWorker, threads=32), hooks=True)
    assert check_server() == []


def test_gevent_worker_is_fine() -> None:
    worker_info.note_gunicorn_worker(fake_worker(GeventWorker), hooks=True)
    assert check_server() == []


def test_worker_found_on_the_call_stack_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    def handle(self: Any) -> None:  # gunicorn's Worker.handle(self, ...) frame
        dwebsocket_checks.report_once()

    with caplog.at_level(logging.WARNING, logger="dwebsocket"):
        handle(fake_worker(SyncWorker))
        handle(fake_worker(SyncWorker))
    found = [r.getMessage() for r in caplog.records]
    # Found on the stack, not noted by dwebsocket.contrib.gunicorn: W007 too.
    assert [m.count("dwebsocket.W002") for m in found] == [1, 0]
    assert "dwebsocket.W007" in found[1]


def test_w004_atomic_requests_on_a_websocket_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=__name__):
        messages = check_atomic_requests()
    [warning] = messages
    assert warning.id == "dwebsocket.W004"
    assert "atomic_view" in warning.msg and "'atomic/'" in warning.msg
    assert "non_atomic_requests" in (warning.hint or "")


def test_w004_quiet_without_atomic_requests() -> None:
    with override_settings(ROOT_URLCONF=__name__):
        assert check_atomic_requests() == []


@override_settings(MIDDLEWARE_CLASSES=[MIDDLEWARE_PATH], MIDDLEWARE=[])
def test_e001_middleware_in_middleware_classes() -> None:
    [error] = check_middleware()
    assert error.id == "dwebsocket.E001" and error.level == checks.ERROR


@override_settings(WEBSOCKET_ACCEPT_ALL=True, MIDDLEWARE=[])
def test_w005_accept_all_without_the_middleware() -> None:
    assert ids(check_middleware()) == ["dwebsocket.W005"]


@override_settings(WEBSOCKET_ACCEPT_ALL=True, MIDDLEWARE=[MIDDLEWARE_PATH])
def test_w005_quiet_with_the_middleware() -> None:
    assert check_middleware() == []


@override_settings(WEBSOCKET_ACCEPT_ALL=True, MIDDLEWARE=[SUBCLASS_PATH])
def test_w005_quiet_with_a_subclass_of_the_middleware() -> None:
    # The subclass runs the WebSocket sessions as the middleware does; W005 looked for
    # dwebsocket's own dotted path in MIDDLEWARE and said WEBSOCKET_ACCEPT_ALL did nothing.
    assert check_middleware() == []


@override_settings(MIDDLEWARE_CLASSES=[SUBCLASS_PATH], MIDDLEWARE=[])
def test_e001_a_subclass_in_middleware_classes() -> None:
    assert ids(check_middleware()) == ["dwebsocket.E001"]


@pytest.mark.parametrize("ours", [MIDDLEWARE_PATH, SUBCLASS_PATH])
def test_w006_process_view_middleware_after_ours(ours: str) -> None:
    with override_settings(MIDDLEWARE=[ours, "django.middleware.csrf.CsrfViewMiddleware"]):
        [warning] = check_middleware()
    assert warning.id == "dwebsocket.W006"
    assert "CsrfViewMiddleware" in warning.msg


@override_settings(MIDDLEWARE=[MIDDLEWARE_PATH, "django.middleware.common.CommonMiddleware"])
def test_w006_quiet_for_middleware_without_process_view() -> None:
    assert check_middleware() == []


@override_settings(
    WEBSOCKET_ACCEPT_ALL=True,
    MIDDLEWARE=[],
    MIDDLEWARE_CLASSES=[MIDDLEWARE_PATH],
    ROOT_URLCONF=__name__,
)
def test_registered_with_django(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    found = set(ids(checks.run_checks(include_deployment_checks=False)))
    assert {"dwebsocket.E001", "dwebsocket.W004", "dwebsocket.W005"} <= found
    # The server checks say nothing in manage.py check (no worker there).
    assert not found & {"dwebsocket.W002", "dwebsocket.W003"}


def test_w007_gunicorn_without_dwebsocket_hooks() -> None:
    worker_info.note_gunicorn_worker(fake_worker(GeventWorker))
    assert ids(check_server()) == ["dwebsocket.W007"]


def test_w007_quiet_once_the_hooks_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    from dwebsocket.contrib import gunicorn as hooks
    from dwebsocket.signals import websocket_opened

    worker = fake_worker(GeventWorker)
    monkeypatch.setattr(hooks.signal, "signal", lambda *args: None)  # keep pytest's handlers
    # and the websocket_opened receivers: the hook connects one for this (fake) worker
    # that would outlive the test and run at every later test's handshake.
    monkeypatch.setattr(websocket_opened, "receivers", list(websocket_opened.receivers))
    hooks.post_worker_init(worker)
    assert worker_info.gunicorn_worker() == worker_info.GunicornWorker("gevent", 1, 30, hooks=True)
    assert check_server() == []
