"""Each system check id has a test."""

from __future__ import annotations

from django.core import checks
from django.test import override_settings

from dwebsocket.checks import check_unknown_settings


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
