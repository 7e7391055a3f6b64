"""Each system check id has a test."""

from __future__ import annotations

import sys

import pytest
from django.core import checks
from django.test import override_settings

from dwebsocket.checks import check_allowed_origins, check_unknown_settings


def test_no_warnings_by_default() -> None:
    assert check_unknown_settings() == []


@override_settings(WEBSOCKET_PING_INTERVALL=5, WEBSOCKET_ACCEPT_ALL=True)
def test_w001_unknown_setting() -> None:
    [warning] = check_unknown_settings()
    assert warning.id == "dwebsocket.W001"
    assert warning.level == checks.WARNING
    assert "WEBSOCKET_PING_INTERVALL" in warning.msg
    assert warning.hint == "Did you mean WEBSOCKET_PING_INTERVAL?"


@override_settings(WEBSOCKET_TOTALLY_UNRELATED=1)
def test_w001_registered_with_django() -> None:
    ids = [message.id for message in checks.run_checks()]
    assert "dwebsocket.W001" in ids


@pytest.mark.parametrize(
    ("configured", "problems"),
    [
        ("*", 1),
        ("https://*.example.com", 1),
        (["https://ok.example", "https://ex*ample.com", "*example.com"], 2),
        ({"origins": "*"}, 1),
        (["https://ok.example", "null"], 1),
        # A host pattern with a port, as a browser's address bar shows it: a port needs
        # the scheme ("http://127.0.0.1:8000"). Taken for an IPv6 address when every
        # letter of it is a hex digit, it was accepted silently and matched nothing.
        (["127.0.0.1:8000", "example.com:8000", "face.cafe:8000", "a:b"], 4),
    ],
)
def test_e010_allowed_origins(configured: object, problems: int) -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=configured):
        errors = check_allowed_origins()
        assert [e.id for e in errors] == ["dwebsocket.E010"] * problems
        assert all(e.level == checks.ERROR for e in errors)
        assert "dwebsocket.E010" in [m.id for m in checks.run_checks()]


@pytest.mark.parametrize(
    "configured",
    [
        None,
        ["*"],
        ("https://example.com",),
        ["https://*.example.com", ".example.com", "[::1]"],
        ["::1", "[2001:db8::1]", "https://[::1]:8000", "127.0.0.1", "https://127.0.0.1:8000"],
    ],
)
def test_e010_silent_for_the_documented_forms(configured: object) -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=configured):
        assert check_allowed_origins() == []


def test_e010_says_why_null_cannot_be_allowed() -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=["null"]):
        [error] = check_allowed_origins()
    assert '"null" cannot be allowed' in error.msg and "any site" in error.msg


def test_w013_the_metrics_view_without_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tests/urls.py routes /metrics; without prometheus_client it could only answer 503."""
    assert "dwebsocket.W013" not in [message.id for message in checks.run_checks()]
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # an import of it fails
    [warning] = [message for message in checks.run_checks() if message.id == "dwebsocket.W013"]
    assert warning.level == checks.WARNING
    assert "'metrics'" in warning.msg
    assert "dwebsocket[prometheus]" in warning.hint


@pytest.mark.parametrize("in_a_partial", [False, True], ids=["decorated", "partial"])
def test_w013_the_metrics_view_behind_a_decorator(
    monkeypatch: pytest.MonkeyPatch, in_a_partial: bool
) -> None:
    """The view wrapped to protect it (login_required, never_cache...), or handed over in
    a functools.partial: W013 looked for dwebsocket's view itself, so it said nothing."""
    import functools
    from types import ModuleType

    from django.contrib.auth.decorators import login_required
    from django.urls import path
    from django.views.decorators.cache import never_cache

    from dwebsocket.checks import check_metrics_view
    from dwebsocket.metrics.views import metrics

    view = login_required(never_cache(metrics))
    urls = ModuleType("protected_metrics_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("metrics", functools.partial(view) if in_a_partial else view)
    ]
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # an import of it fails
    with override_settings(ROOT_URLCONF=urls):
        [warning] = check_metrics_view()
    assert warning.id == "dwebsocket.W013" and "'metrics'" in warning.msg
