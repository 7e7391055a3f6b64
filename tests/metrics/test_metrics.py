"""dwebsocket.metrics in one process: each counter moves by exactly what a session did,
through the real default backend (``dwebsocket.testing``) and Django's test client for
refused handshakes. ``test_gunicorn.py`` checks the same across gunicorn's workers."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from dwebsocket import ConnectionClosed, groups, metrics
from dwebsocket.testing import HandshakeRefused, WebSocketClient

NAMES = [
    "connections_open",
    "messages_received_total",
    "messages_sent_total",
    "received_bytes_total",
    "sent_bytes_total",
    "group_sends_total",
    "group_members_dropped_total",
    "keepalive_timeouts_total",
]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"django_websocket_{name}", labels) or 0.0


class Counts:
    """What the counters moved by since the snapshot."""

    def __init__(self) -> None:
        self.before = self.now()

    @staticmethod
    def now() -> dict[str, float]:
        values = {name: value(name) for name in NAMES}
        for status in ("101", "400", "403", "426", "503"):
            values[f"handshakes:{status}"] = value("handshakes_total", status=status)
        for code in ("1000", "1008", "1011", "4000"):
            values[f"closes:{code}"] = value("closes_total", code=code)
        return values

    def delta(self) -> dict[str, float]:
        metrics.flush()
        now = self.now()
        return {k: now[k] - self.before[k] for k in now if now[k] != self.before[k]}


@pytest.fixture
def counts() -> Iterator[Counts]:
    assert metrics.enabled()
    yield Counts()


@override_settings(WEBSOCKET_COMPRESSION=False)
def test_an_echo_session(counts: Counts) -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
        ws.send(b"\x00\x01")
        assert ws.receive() == b"\x00\x01"
        assert counts.delta()["connections_open"] == 1
    # Client frames are masked: 2 + 4 + payload bytes; the server's: 2 + payload. The
    # close frames carry the code (2 bytes): the client's, then the server's answer.
    assert counts.delta() == {
        "handshakes:101": 1,
        "messages_received_total": 2,
        "messages_sent_total": 2,
        "received_bytes_total": (6 + 5) + (6 + 2) + (6 + 2),
        "sent_bytes_total": (2 + 5) + (2 + 2) + (2 + 2),
        "closes:1000": 1,
    }


def test_a_close_code_of_the_views_choice(counts: Counts) -> None:
    with WebSocketClient("/close/?code=4000") as ws:
        ws.send("close, please")
        with pytest.raises(ConnectionClosed):
            ws.receive()
    assert counts.delta()["closes:4000"] == 1


UPGRADE = {
    "Host": "testserver",  # django.test.Client sends none
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-WebSocket-Key": "short"}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Origin": "https://evil.example"}, 403),
    ],
    ids=["400", "426", "403"],
)
def test_refused_handshakes(counts: Counts, headers: dict[str, str], status: int) -> None:
    response = Client().get("/echo/", headers={**UPGRADE, **headers})
    assert response.status_code == status
    assert counts.delta() == {f"handshakes:{status}": 1}


@override_settings(WEBSOCKET_MAX_CONNECTIONS="many")
def test_an_invalid_setting(counts: Counts) -> None:
    """Answered 503 (the server is misconfigured); before, not counted."""
    with pytest.raises(HandshakeRefused) as refused, WebSocketClient("/echo/"):
        pass
    assert refused.value.status == 503
    assert counts.delta() == {"handshakes:503": 1}


@override_settings(WEBSOCKET_MAX_CONNECTIONS=1)
def test_over_the_cap(counts: Counts) -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send("x")
        assert ws.receive() == "x"
        with pytest.raises(HandshakeRefused) as refused, WebSocketClient("/echo/"):
            pass
        assert refused.value.status == 503
    delta = counts.delta()
    assert (delta["handshakes:101"], delta["handshakes:503"]) == (1, 1)


def test_group_sends(counts: Counts) -> None:
    with WebSocketClient("/group/room-metrics/") as member:
        assert member.receive() == "joined"
        member.send("one")  # the view sends it to the group: the member gets it back
        assert member.receive() == "one"
        groups.send("room-metrics", "two")
        assert member.receive() == "two"
    delta = counts.delta()
    assert delta["group_sends_total"] == 2
    assert delta["messages_sent_total"] == 3  # joined, one, two
    assert delta["messages_received_total"] == 1


@override_settings(WEBSOCKET_METRICS=False)
def test_off(counts: Counts) -> None:
    assert not metrics.enabled()
    with WebSocketClient("/echo/") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
    assert counts.delta() == {}


def test_open_connections_are_flushed_while_open(
    counts: Counts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a scrape in this process (another worker serves /metrics), the traffic of
    a connection still open reaches the counters every FLUSH_INTERVAL."""
    monkeypatch.setattr(metrics, "FLUSH_INTERVAL", 0.05)
    metrics._wakeup.set()  # a flusher from an earlier test may be in its 5 s wait
    with WebSocketClient("/echo/") as ws:
        for i in range(3):
            ws.send(f"m{i}")
            assert ws.receive() == f"m{i}"
        deadline = time.monotonic() + 10
        while value("messages_received_total") - counts.before["messages_received_total"] < 3:
            assert time.monotonic() < deadline, "the flusher did not add the traffic"
            time.sleep(0.02)


def test_the_metrics_page(counts: Counts) -> None:
    with WebSocketClient("/echo/") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    page = response.content.decode()
    assert 'django_websocket_handshakes_total{status="101"}' in page
    assert "django_websocket_connections_open 0.0" in page


def test_websocket_status_needs_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(CommandError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        call_command("websocket_status")
    with pytest.raises(CommandError, match="could not read"):
        call_command("websocket_status", "--url", "http://127.0.0.1:1/metrics")


def test_the_open_gauge_comes_down_when_metrics_were_turned_off_meanwhile(
    counts: Counts,
) -> None:
    """A connection counted open is counted closed whatever WEBSOCKET_METRICS says by
    then; before, its close was not counted and connections_open stayed one up."""
    with WebSocketClient("/echo/") as ws:
        ws.send("x")
        assert ws.receive() == "x"
        assert counts.delta()["connections_open"] == 1
        with override_settings(WEBSOCKET_METRICS=False):
            ws.close()
    delta = counts.delta()
    assert delta.get("connections_open", 0) == 0
    assert delta["closes:1000"] == 1


def test_a_close_during_a_flush_adds_the_traffic_once(counts: Counts) -> None:
    """The flusher thread (or the exporter's flush()) and the close may add one
    connection's traffic at the same moment: each message and byte is counted once, and
    the closed connection is forgotten. Before, a flush that had read the traffic before
    the close added it again after (the close had reset what was added to nothing) and
    put the connection back among the open ones."""
    entered, go = threading.Event(), threading.Event()

    class Connection:
        calls = 0

        def traffic(self) -> metrics.Traffic:
            self.calls += 1
            if self.calls == 1:  # the first flush is held here while the close runs
                entered.set()
                go.wait(5)
            return metrics.Traffic(1, 10, 0, 0)

    connection = Connection()
    metrics._opened(None, connection)
    try:
        flush = threading.Thread(target=metrics.flush)
        flush.start()
        assert entered.wait(5)
        close = threading.Thread(target=metrics._closed, args=(None, connection, 1000))
        close.start()
        close.join(0.5)  # before: it counted everything meanwhile; now it waits its turn
        go.set()
        flush.join(5)
        close.join(5)
        assert not flush.is_alive() and not close.is_alive()
    finally:
        go.set()
    assert connection not in metrics._open
    assert counts.delta() == {
        "handshakes:101": 1,
        "messages_received_total": 1,
        "received_bytes_total": 10,
        "closes:1000": 1,
    }


def test_an_open_during_a_flush_does_not_break_it(counts: Counts) -> None:
    """A connection opened (or closed) by another thread while flush() lists the open
    ones: flush() goes on. Before, it listed them without the lock that opens and closes
    take, and the listing raised ``RuntimeError: dictionary changed size during
    iteration``: the flusher thread died, for good (the traffic of open connections then
    reached the counters only at their close or a scrape), and a scrape got a 500.

    The other thread's open is made here at the moment a thread switch could run it: in
    the listing's loop, if the lock it takes is free then."""
    import weakref

    class Connection:
        pass

    listed, other = Connection(), Connection()
    keys = weakref.WeakKeyDictionary.keys.__code__
    opened: list[bool] = []

    def tracer(frame: Any, event: str, arg: object) -> Any:
        in_the_loop = frame.f_code is keys and event == "line" and "wr" in frame.f_locals
        # Unless the listing holds the lock, which that open would wait for.
        if in_the_loop and not opened and metrics._lock.acquire(blocking=False):
            metrics._lock.release()
            metrics._opened(None, other)
            opened.append(True)
        return tracer

    metrics._opened(None, listed)
    try:
        previous = sys.gettrace()  # coverage's, under make coverage
        sys.settrace(tracer)
        try:
            metrics.flush()
        finally:
            sys.settrace(previous)
    finally:
        metrics._closed(None, other, 1000)
        metrics._closed(None, listed, 1000)
    assert counts.delta() == {"handshakes:101": 1 + len(opened), "closes:1000": 1 + len(opened)}


def test_the_metrics_page_without_prometheus_client(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, an ImportError: a 500 and a traceback for every scrape."""
    from dwebsocket.metrics import views

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # an import of it fails
    monkeypatch.setattr(views, "_warned", False)
    with caplog.at_level("WARNING", logger="dwebsocket.metrics"):
        for _ in range(3):
            response = Client().get("/metrics")
            assert response.status_code == 503
            assert response.content.decode() == views.UNAVAILABLE
    ours = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.metrics"]
    assert ours == [views.UNAVAILABLE.strip()]


def test_the_metrics_page_with_a_multiprocess_dir_that_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before, prometheus_client's ValueError: a 500 and a traceback for every scrape."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    response = Client().get("/metrics")
    assert response.status_code == 503
    assert "PROMETHEUS_MULTIPROC_DIR" in response.content.decode()
