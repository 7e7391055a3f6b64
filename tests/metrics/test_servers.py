"""``/metrics`` scraped from a real server of each backend (default, ASGI, uwsgi) while
``websockets`` clients do what a counter or a bound is about."""

from __future__ import annotations

import array
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.metrics.test_gunicorn import Client, open_per_worker, scrape, until, websocket_status
from tests.servers import LOGGING, ServerProcess
from tests.wire import TIMEOUT

pytestmark = pytest.mark.server

#: One server of each backend: the default (gevent), the ASGI one (uvicorn), uwsgi's.
BACKENDS = ["gevent", "uvicorn", "uwsgi-gevent"]
#: Backends whose byte counters count payloads (their server does the framing).
PAYLOAD_COUNTED = {"uvicorn", "uwsgi-gevent"}
#: ASGI servers without the websocket.http.response extension: a refusal is a 403.
NO_HTTP_RESPONSE = {"daphne"}


@pytest.mark.parametrize("name", BACKENDS)
def test_a_memoryview_of_wide_items_counts_its_bytes(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """deliver() of a memoryview of 4-byte items: the send queue's bound and the byte
    counters count its bytes, not its items (len()): 1,600 bytes in 400 items go over a
    1,000-byte queue (before: the default backend's early queue and the ASGI queue took
    them and sent them), and 400 bytes in 100 items count 400 (before: ASGI counted 100).
    The early queue counts text in UTF-8 (before: 600 "é" counted 600, not 1,200). A
    message dropped for the overflow is not counted sent."""
    server = make_server(name, settings={"WEBSOCKET_SEND_QUEUE_SIZE": 1000})
    for query in ("n=400", "n=400&early=1", "n=600&early=1&text=1"):
        with (
            contextlib.ExitStack() as stack,
            pytest.raises(ConnectionClosed) as closed,
        ):
            client = Client(stack, server, f"/deliver-wide/?{query}")
            got = client.ws.recv(timeout=TIMEOUT)
            pytest.fail(f"{name} sent {len(got)} past its 1000-byte queue ({query})")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, (name, query)

    before = until({"connections_open": 0, "closes_total{code=1008}": 3}, server)
    # Dropped for the overflow, none of the three was sent (before: the default backend
    # counted the one delivered after the accept in messages_sent_total).
    assert before.get("messages_sent_total", 0) == 0, (name, before)
    with contextlib.ExitStack() as stack:
        client = Client(stack, server, "/deliver-wide/?n=100")
        assert client.ws.recv(timeout=TIMEOUT) == array.array("i", range(100)).tobytes()
    sent = before.get("messages_sent_total", 0) + 1
    got = until({"messages_sent_total": sent, "connections_open": 0}, server)
    counted = got.get("sent_bytes_total", 0) - before.get("sent_bytes_total", 0)
    assert counted == (400 if name in PAYLOAD_COUNTED else client.bytes()[1]), (name, got)


@pytest.mark.parametrize("name", [*BACKENDS, "daphne"])
def test_a_handshake_the_view_refuses_counts_once_with_the_status_sent(
    make_server: Callable[..., ServerProcess], name: str
) -> None:
    """A view that answers with HTTP or raises before accepting: the handshake counts in
    handshakes_total with the status the client got, once (before: not at all; a close
    before the accept was already a 101)."""
    # Django logs the refusals (with a traceback for an exception); not this test's matter.
    quiet = {**LOGGING, "loggers": {**LOGGING["loggers"], "django.request": {"level": "ERROR"}}}
    server = make_server(name, settings={"LOGGING": quiet})
    statuses = []
    for path in ("/refuse/", "/refuse-by-raising/?status=403", "/refuse-by-raising/?status=404"):
        with contextlib.ExitStack() as stack, pytest.raises(InvalidStatus) as refused:
            Client(stack, server, path)
        statuses.append(refused.value.response.status_code)
    with contextlib.ExitStack() as stack, pytest.raises(ConnectionClosed) as closed:
        Client(stack, server, "/close-unaccepted/").ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert statuses == ([403, 403, 403] if name in NO_HTTP_RESPONSE else [403, 403, 404])
    expected = {f"handshakes_total{{status={s}}}": float(statuses.count(s)) for s in statuses}
    expected["handshakes_total{status=101}"] = 1.0
    until(expected, server)
    got = {k: v for k, v in scrape(server).items() if k.startswith("handshakes_total")}
    assert got == expected, name


def test_a_killed_uwsgi_workers_websockets_stop_counting_as_open(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """uWSGI has no child_exit hook: a worker killed with a WebSocket open leaves its
    open gauge in PROMETHEUS_MULTIPROC_DIR, and the master starts another. /metrics (served
    by the new worker) and websocket_status leave out the gauges of processes that are
    gone. Before, connections_open stayed 1 for good."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    server = make_server("uwsgi-gevent", settings={"WEBSOCKET_PING_INTERVAL": None}, env=env)
    with contextlib.ExitStack() as stack:
        client = Client(stack, server, "/echo/")
        client.ws.send("x")
        assert client.ws.recv(timeout=TIMEOUT) == "x"
        assert until({"connections_open": 1}, server).get("connections_open") == 1
        (pid,) = [pid for pid, n in open_per_worker(directory).items() if n == 1]
        os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            client.ws.recv(timeout=TIMEOUT)
    got = until({"connections_open": 0, "handshakes_total{status=101}": 1}, server)
    assert got.get("connections_open", 0) == 0, got
    assert got["handshakes_total{status=101}"] == 1, got  # counters survive the worker
    counts = websocket_status(env)
    assert counts.get("connections_open", 0) == 0, counts
    assert counts["handshakes_total"] == {"101": 1}, counts
