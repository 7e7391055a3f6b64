"""The public names (dwebsocket 0.x names included) and the lazy top-level package."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dwebsocket


@pytest.mark.parametrize("name", dwebsocket.__all__)
def test_public_names(name: str) -> None:
    assert getattr(dwebsocket, name) is not None


def test_old_import_paths() -> None:
    from dwebsocket.backends.default.factory import WebSocketFactory
    from dwebsocket.decorators import accept_websocket, require_websocket
    from dwebsocket.factory import WebSocketFactory as AbstractFactory
    from dwebsocket.middleware import WebSocketMiddleware
    from dwebsocket.websocket import WebSocket

    assert issubclass(WebSocketFactory, AbstractFactory)
    assert dwebsocket.accept_websocket is accept_websocket
    assert dwebsocket.require_websocket is require_websocket
    assert dwebsocket.WebSocket is WebSocket
    assert WebSocketMiddleware is not None


def test_version() -> None:
    assert dwebsocket.__version__[0].isdigit()


def test_unknown_name() -> None:
    with pytest.raises(AttributeError):
        dwebsocket.no_such_name  # noqa: B018


def test_protocol_does_not_import_django() -> None:
    code = "import sys, dwebsocket, dwebsocket.protocol.connection; print('django' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"
