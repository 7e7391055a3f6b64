"""Counts for operators, in Prometheus' format through ``prometheus_client``.

With ``prometheus_client`` installed (``pip install "dwebsocket[prometheus]"``) and
``WEBSOCKET_METRICS`` left True, dwebsocket keeps these, named as django-prometheus names
its own (``django_`` first; ``PROMETHEUS_METRIC_NAMESPACE`` before that, if set):
``django_websocket_connections_open`` (a gauge), ``..._handshakes_total{status}`` (101,
400, 403, 426, 501, 503), ``..._messages_received_total``, ``..._messages_sent_total``,
``..._received_bytes_total``, ``..._sent_bytes_total`` (after the 101),
``..._closes_total{code}``, ``..._group_sends_total``,
``..._group_members_dropped_total`` (1008) and ``..._keepalive_timeouts_total`` (1011);
``docs/metrics.rst`` says what each counts.

They go to ``prometheus_client``'s default registry, so any exporter shows them:
``dwebsocket.metrics.urls`` (``/metrics``), django-prometheus' ``/metrics``, or
``prometheus_client.start_http_server``. With ``PROMETHEUS_MULTIPROC_DIR`` set, as
``prometheus_client`` wants for gunicorn and uWSGI, every process writes its counts there
and an exporter adds them up (the open gauge counts live processes only);
``manage.py websocket_status`` prints them without Prometheus.

The cost: per session and per handshake, a few counter increments. Per message, nothing
here: a connection counts its messages and bytes in its own state (plain integers, which
the C fast path increments as it reads and writes), and :func:`flush` adds what is new to
the counters every :data:`FLUSH_INTERVAL` seconds and when the connection closes.

Every function here returns at once when metrics are off (no ``prometheus_client``, or
``WEBSOCKET_METRICS = False``) and never raises: counting must not break a connection.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings as django_settings

from dwebsocket.conf import settings
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.signals import websocket_closed, websocket_opened

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dwebsocket.websocket import WebSocket

# The recording hooks (handshake(), group_send(), ...) are dwebsocket's own, not exported.
__all__ = ["FLUSH_INTERVAL", "Traffic", "enabled", "flush"]

logger = logging.getLogger("dwebsocket")

#: Seconds between two additions of open connections' messages and bytes to the counters.
FLUSH_INTERVAL = 5.0


class Traffic(NamedTuple):
    """What a connection has counted since it opened (each only grows)."""

    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int


class _Metrics:
    """The ``prometheus_client`` objects, made once per process."""

    def __init__(self, namespace: str) -> None:
        from prometheus_client import Counter, Gauge

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(f"django_websocket_{name}", doc, labels, namespace=namespace)

        self.open = Gauge(
            "django_websocket_connections_open",
            "Open WebSocket connections.",
            namespace=namespace,
            multiprocess_mode="livesum",
        )
        self.handshakes = counter(
            "handshakes", "WebSocket upgrade requests, by HTTP status answered.", ("status",)
        )
        self.messages_in = counter("messages_received", "Data messages received from peers.")
        self.messages_out = counter("messages_sent", "Data messages sent to peers.")
        self.bytes_in = counter("received_bytes", "Bytes read from WebSockets after the 101.")
        self.bytes_out = counter("sent_bytes", "Bytes written to WebSockets after the 101.")
        self.closes = counter("closes", "Closed WebSocket connections, by close code.", ("code",))
        self.group_sends = counter("group_sends", "dwebsocket.groups.send() calls.")
        self.dropped = counter(
            "group_members_dropped", "Members closed with 1008 for not reading fast enough."
        )
        self.keepalive_timeouts = counter(
            "keepalive_timeouts", "Peers closed with 1011 for not answering a ping."
        )
        self.accepted = self.handshakes.labels("101")
        # labels() takes a lock and builds a key at each call: keep the children.
        self._by_status: dict[int, Any] = {}
        self._by_code: dict[int, Any] = {}

    def handshake(self, status: int) -> Any:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.handshakes.labels(str(status))
        return child

    def close(self, code: int) -> Any:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self.closes.labels(str(code))
        return child


_metrics: _Metrics | None = None
_unavailable = False
_lock = threading.Lock()


def _get() -> _Metrics | None:
    """The metrics, or None when they are off; made on first use."""
    global _metrics, _unavailable
    if _metrics is None:
        if _unavailable:
            return None
        failed: OSError | None = None
        with _lock:
            if _metrics is None and not _unavailable:
                # django-prometheus' setting, not ours: its metrics and ours share a prefix.
                namespace = getattr(django_settings, "PROMETHEUS_METRIC_NAMESPACE", "")
                try:
                    _metrics = _Metrics(namespace)
                except ImportError:
                    _unavailable = True
                    return None
                except OSError as exc:  # PROMETHEUS_MULTIPROC_DIR gone, or not ours to write
                    _unavailable = True
                    failed = exc
        if failed is not None:  # logged outside the lock: a handler may do I/O
            logger.warning(
                "dwebsocket's metrics are off in this process: prometheus_client "
                "cannot write to PROMETHEUS_MULTIPROC_DIR (%s)",
                failed,
            )
            return None
    try:
        on = settings.WEBSOCKET_METRICS
    except InvalidSetting:  # reported by check dwebsocket.E024; counting stays off
        return None
    return _metrics if on else None


def enabled() -> bool:
    """True if dwebsocket counts: ``prometheus_client`` is installed and
    ``WEBSOCKET_METRICS`` is True. Never blocks."""
    return _get() is not None


def handshake(status: int) -> None:
    """Count an upgrade request answered with ``status`` (101 when accepted)."""
    metrics = _get()
    if metrics is not None:
        metrics.handshake(status).inc()


# The open connections of this process that count, and what of each was added already.
_open: weakref.WeakKeyDictionary[Any, Traffic] = weakref.WeakKeyDictionary()
_flushing = False  # a flusher runs (under _lock)
_wakeup = threading.Event()  # ends the flusher's wait early (tests)
_ZERO = Traffic(0, 0, 0, 0)


def _opened(sender: Any, websocket: WebSocket, **kwargs: Any) -> None:
    """``websocket_opened``: count the 101 and the open connection; its traffic from now."""
    global _flushing
    metrics = _get()
    if metrics is None:
        return
    try:
        metrics.accepted.inc()
        metrics.open.inc()
        with _lock:
            _open[websocket] = _ZERO
            start, _flushing = not _flushing, True
        if start:  # a thread, or a greenlet / green thread where threading is patched
            threading.Thread(
                target=_flush_while_open, name="dwebsocket-metrics", daemon=True
            ).start()
    except Exception as exc:  # counting must never break a connection
        logger.debug("Counting an open WebSocket failed: %r", exc)


def _closed(sender: Any, websocket: WebSocket, code: int | None = None, **kwargs: Any) -> None:
    """``websocket_closed``: count the close code and add the rest of the traffic."""
    # Not _get(): a connection counted open is counted closed, even if WEBSOCKET_METRICS
    # was turned off (or made invalid) since, or the open gauge would stay up for good.
    metrics = _metrics
    if metrics is None or websocket not in _open:
        return
    try:
        _add(metrics, websocket)
    except Exception as exc:
        logger.debug("Counting the traffic of %r failed: %r", websocket, exc)
    try:
        with _lock:
            counted = _open.pop(websocket, None) is not None
        if counted:
            metrics.open.dec()
            metrics.close(code if code is not None else 1006).inc()
    except Exception as exc:
        logger.debug("Counting a closed WebSocket failed: %r", exc)


def group_send() -> None:
    """Count one ``dwebsocket.groups.send()``."""
    metrics = _get()
    if metrics is not None:
        metrics.group_sends.inc()


def group_member_dropped() -> None:
    """Count a member closed with 1008 because its queue overflowed."""
    metrics = _get()
    if metrics is not None:
        metrics.dropped.inc()


def keepalive_timeout() -> None:
    """Count a peer closed with 1011 because it did not answer a ping in time."""
    metrics = _get()
    if metrics is not None:
        metrics.keepalive_timeouts.inc()


def _add(metrics: _Metrics, websocket: Any) -> None:
    """Add what ``websocket`` counted since the last time (a backend without
    ``traffic()`` counts none)."""
    traffic = getattr(websocket, "traffic", None)
    if traffic is None:
        return
    # Read and record under the lock: the flusher, the exporter's flush() and the close
    # may add one connection's traffic at once; each new count is added by one of them.
    with _lock:
        before = _open.get(websocket)
        if before is None:  # closed: its traffic was added then
            return
        now: Traffic = traffic()
        if now == before:
            return
        _open[websocket] = now
    for counter, new, old in (
        (metrics.messages_in, now.messages_in, before.messages_in),
        (metrics.bytes_in, now.bytes_in, before.bytes_in),
        (metrics.messages_out, now.messages_out, before.messages_out),
        (metrics.bytes_out, now.bytes_out, before.bytes_out),
    ):
        if new > old:
            counter.inc(new - old)


def flush() -> None:
    """Add the messages and bytes the open connections of this process counted since the
    last flush. Called every :data:`FLUSH_INTERVAL` seconds while any is open, and by the
    exporter before it reads. Never blocks on I/O."""
    metrics = _get()
    if metrics is None:
        return
    with _lock:  # an open or close in another thread meanwhile would break the listing
        websockets = list(_open.keys())
    for websocket in websockets:
        try:
            _add(metrics, websocket)
        except Exception as exc:  # counting must never break anything
            logger.debug("Counting the traffic of %r failed: %r", websocket, exc)


def _flush_while_open() -> None:
    """Flush every :data:`FLUSH_INTERVAL` seconds until no connection is open."""
    global _flushing
    while True:
        _wakeup.wait(FLUSH_INTERVAL)
        _wakeup.clear()
        flush()
        with _lock:
            if not _open:
                _flushing = False
                return


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that adds up what the processes writing to ``path`` (by default
    ``PROMETHEUS_MULTIPROC_DIR``) counted, as ``prometheus_client``'s
    ``MultiProcessCollector`` does, but without the live gauges (``connections_open``) of
    processes that no longer run. gunicorn's ``child_exit`` (``dwebsocket.contrib.gunicorn``)
    deletes those; uWSGI has no such hook, so a worker killed with WebSockets open (OOM,
    harakiri, SIGKILL) would count them as open for good. Nothing is deleted here: the
    files are the servers'. Raises ``ValueError`` when ``path`` is not a directory,
    ``ImportError`` without ``prometheus_client``. Reads files; never blocks otherwise."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    class LiveProcessesCollector(MultiProcessCollector):
        def collect(self) -> Any:
            files = glob.glob(os.path.join(self._path, "*.db"))
            live = [f for f in files if not _of_a_dead_process(f)]
            return self.merge(live, accumulate=True)  # type: ignore[no-untyped-call]

    registry = CollectorRegistry()
    LiveProcessesCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def _of_a_dead_process(file: str) -> bool:
    """Whether ``file`` holds live gauges (``gauge_live*_<pid>.db``) of a process that is
    gone. A pid that does not parse (a custom ``_pidFunc``) or that runs, also as another
    user, is not gone."""
    name = os.path.basename(file)
    if not name.startswith("gauge_live"):
        return False
    try:
        pid = int(name.removesuffix(".db").rsplit("_", 1)[1])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, OverflowError, OSError):  # PermissionError: it runs
        return False
    return False


websocket_opened.connect(_opened, dispatch_uid="dwebsocket.metrics")
websocket_closed.connect(_closed, dispatch_uid="dwebsocket.metrics")
