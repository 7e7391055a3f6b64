"""``/metrics``: every ``prometheus_client`` metric of this process, or of every process
writing to ``PROMETHEUS_MULTIPROC_DIR`` (as django-prometheus' ``ExportToDjangoView``)."""

from __future__ import annotations

import logging
import os

from django.http import HttpRequest, HttpResponse

from dwebsocket import metrics as dwebsocket_metrics

__all__ = ["metrics"]

logger = logging.getLogger("dwebsocket.metrics")

#: The answer without ``prometheus_client`` (503, text): what is missing and how to add it.
UNAVAILABLE = (
    "metrics unavailable: prometheus_client is not installed "
    "(pip install 'dwebsocket[prometheus]')\n"
)

_warned = False


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of the metrics (this process's open connections'
    traffic added first); without ``prometheus_client``, 503 saying so (and one warning
    per process: a scraper retries every few seconds); 503 too when
    ``PROMETHEUS_MULTIPROC_DIR`` is not a directory. Does not block beyond reading the
    multiprocess files."""
    global _warned
    try:
        import prometheus_client
    except ImportError:
        if not _warned:
            _warned = True
            logger.warning("%s", UNAVAILABLE.strip())
        return HttpResponse(UNAVAILABLE, status=503, content_type="text/plain; charset=utf-8")

    dwebsocket_metrics.flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        try:
            registry = dwebsocket_metrics.multiprocess_registry()
        except ValueError as exc:  # the variable names no directory
            return HttpResponse(
                f"metrics unavailable: {exc}\n",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
    else:
        registry = prometheus_client.REGISTRY
    return HttpResponse(
        prometheus_client.generate_latest(registry),
        content_type=prometheus_client.CONTENT_TYPE_LATEST,
    )
