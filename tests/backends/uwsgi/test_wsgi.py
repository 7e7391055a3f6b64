"""The uWSGI WSGI wrapper and its system check (dwebsocket.W008), in-process: no uWSGI
needed (the wrapper does not import ``uwsgi``)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core import checks
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from dwebsocket.backends.uwsgi import wsgi
from dwebsocket.backends.uwsgi.checks import UWSGI_FACTORY, check_wsgi_wrapper


def taken_over(request: HttpRequest) -> HttpResponse:
    """Stands in for an accepted WebSocket: the backend marks the environ at the 101."""
    request.META[wsgi.TAKEN_OVER] = True
    return HttpResponse("never written")


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plain")


urlpatterns = [path("taken/", taken_over), path("plain/", plain)]


def environ(path_info: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path_info,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
    }


class UwsgiStartResponse:
    """uWSGI's start_response once the 101 is out: ``OSError: headers already sent``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.headers_sent = False

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if self.headers_sent:
            raise OSError("headers already sent")
        self.calls.append(status)
        return lambda data: None


@pytest.fixture
def finished() -> Any:
    fired: list[int] = []

    def receiver(**kwargs: Any) -> None:
        fired.append(1)

    # As Django's test client does: the handler's request signals would close database
    # connections, which pytest-django forbids outside a db test once any test of this
    # process has opened one (the order pytest -n gives).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    request_finished.connect(receiver)
    yield fired
    request_finished.disconnect(receiver)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@override_settings(ROOT_URLCONF=__name__)
def test_after_a_takeover_django_response_is_dropped_and_request_finished_fires(
    finished: list[int],
) -> None:
    application = wsgi.wrap(WSGIHandler())
    start_response = UwsgiStartResponse()
    start_response.headers_sent = True  # what uwsgi.websocket_handshake / our 101 did
    assert list(application(environ("/taken/"), start_response)) == []
    assert finished == [1]


@override_settings(ROOT_URLCONF=__name__)
def test_plain_requests_pass_through(finished: list[int]) -> None:
    application = wsgi.wrap(WSGIHandler())
    start_response = UwsgiStartResponse()
    env = environ("/plain/")
    response = application(env, start_response)
    assert b"".join(response) == b"plain"
    response.close()  # type: ignore[attr-defined]
    assert start_response.calls == ["200 OK"]
    assert env[wsgi.START_RESPONSE] is start_response  # for the backend's own 101
    assert finished == [1]


def test_wrap_is_idempotent_and_detectable() -> None:
    application = WSGIHandler()
    wrapped = wsgi.wrap(application)
    assert wsgi.wrap(wrapped) is wrapped
    assert wsgi.is_wrapped(wrapped) and not wsgi.is_wrapped(application)


def test_w007_not_wrapped() -> None:
    with override_settings(
        WEBSOCKET_FACTORY_CLASS=UWSGI_FACTORY, WSGI_APPLICATION="tests.wsgi.application"
    ):
        [warning] = check_wsgi_wrapper()
        assert warning.id == "dwebsocket.W008" and warning.level == checks.WARNING
        assert "tests.wsgi.application" in warning.msg
        assert "dwebsocket.W008" in [m.id for m in checks.run_checks()]


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "WEBSOCKET_FACTORY_CLASS": UWSGI_FACTORY,
            "WSGI_APPLICATION": "tests.backends.uwsgi.wsgi.application",
        },
        {"WSGI_APPLICATION": "tests.wsgi.application"},  # the default backend
        {"WEBSOCKET_FACTORY_CLASS": UWSGI_FACTORY, "WSGI_APPLICATION": None},
    ],
)
def test_w007_silent(overrides: dict[str, Any]) -> None:
    with override_settings(**overrides):
        assert check_wsgi_wrapper() == []
