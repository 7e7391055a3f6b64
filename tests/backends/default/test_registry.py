"""The goodbyes at interpreter exit (``registry._at_exit``): each open connection is
closed with 1001, in a real interpreter that exits, whatever Python (3.12 and later start
no thread from an ``atexit`` hook)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace

import pytest
from django.http import HttpRequest
from django.test import override_settings

from dwebsocket import require_websocket
from dwebsocket.backends.default import registry
from dwebsocket.backends.default.factory import WebSocketFactory as DefaultFactory
from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.protocol.connection import Close
from tests.inprocess import Session
from tests.wire import TIMEOUT, split_frames

SCRIPT = textwrap.dedent(
    """
    import django
    from django.conf import settings

    settings.configure(INSTALLED_APPS=["dwebsocket"])
    django.setup()

    from dwebsocket.backends.default import registry


    class Open:
        def close(self, code, reason):
            print("closed", code, reason, flush=True)
            registry._open.discard(self)


    registry._open.add(Open())
    print("exiting", flush=True)
    """
)


def test_open_connections_are_closed_at_interpreter_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=TIMEOUT * 3
    )
    assert done.stdout.splitlines() == ["exiting", "closed 1001 server shutting down"]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0


@require_websocket
def _wait(request: HttpRequest) -> None:
    ws = request.websocket  # type: ignore[attr-defined]
    ws.send("ready")
    ws.wait()


class _NoThread(threading.Thread):
    def start(self) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=30)
def test_the_exit_hooks_goodbyes_go_out_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.12 and later start no thread from an ``atexit`` hook: the goodbyes ran one
    after the other, each close() waiting for its peer's answer before the next close
    frame went out, so ``runserver`` took N times WEBSOCKET_CLOSE_TIMEOUT to exit on
    Ctrl-C with N clients that did not answer (15 s for three). Every close frame goes
    out first now: here none waits 30 s for another (a thread that cannot start stands
    in for Python 3.12)."""
    sessions = [Session(_wait) for _ in range(3)]
    try:
        for session in sessions:
            session.expect_101()
            assert session.client.recv() == "ready"
        monkeypatch.setattr(registry, "_exiting", True)
        # What going_away() sets for good, restored after the test: the process stops.
        monkeypatch.setattr(registry, "_stopping", None)
        monkeypatch.setattr(registry, "_waited", False)
        monkeypatch.setattr(registry, "threading", SimpleNamespace(Thread=_NoThread))
        stopping = threading.Thread(target=registry.going_away, daemon=True)
        stopping.start()
        received = []
        for session in sessions:  # read, not answered yet (a 30 s wait for an answer each)
            data = b""
            while not (frames := split_frames(data)[0]) or frames[-1][0] != 0x88:
                chunk = session.client.sock.recv(65536)  # TIMEOUT: 10 s
                assert chunk, data
                data += chunk
            received.append(data)
        for session, data in zip(sessions, received, strict=True):
            session.client.receive(data)  # answers the close
            assert session.client.events.popleft() == Close(1001, "server shutting down")
        stopping.join(TIMEOUT)
        assert not stopping.is_alive()
        for session in sessions:
            session.finish()
    finally:
        for session in sessions:
            session.close()


class _Subclass(DefaultWebSocket):
    """An application's own WebSocket class (made by its ``WEBSOCKET_FACTORY_CLASS``)."""


class _SubclassFactory(DefaultFactory):
    def create_websocket(self) -> DefaultWebSocket | None:
        websocket = super().create_websocket()
        if websocket is not None:
            websocket.__class__ = _Subclass
        return websocket


@override_settings(
    WEBSOCKET_FACTORY_CLASS=f"{__name__}._SubclassFactory", WEBSOCKET_CLOSE_TIMEOUT=1
)
def test_a_subclass_of_the_backends_class_is_said_goodbye_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry listened to the signals of ``DefaultWebSocket`` itself only (their
    ``sender``), so a subclass an application's factory made was never in it: a stop
    closed every connection but those, which the server then cut (no 1001)."""
    monkeypatch.setattr(registry, "_stopping", None)  # going_away() sets it for good
    monkeypatch.setattr(registry, "_waited", False)
    session = Session(_wait)
    try:
        session.expect_101()
        assert session.client.recv() == "ready"
        assert registry.open_websockets() and type(registry.open_websockets()[0]) is _Subclass
        stopping = threading.Thread(target=registry.going_away, daemon=True)
        stopping.start()
        assert session.client.recv() == Close(1001, "server shutting down")
        stopping.join(TIMEOUT)
        assert not stopping.is_alive()
        session.finish()
    finally:
        session.close()
