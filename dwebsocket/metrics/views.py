"""``/metrics``: every ``prometheus_client`` metric of this process, or of every process
writing to ``PROMETHEUS_MULTIPROC_DIR`` (as django-prometheus' ``ExportToDjangoView``)."""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse

from dwebsocket import metrics as dwebsocket_metrics

__all__ = ["metrics"]


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of the metrics (this process's open connections'
    traffic added first). Raises ``ImportError`` without ``prometheus_client``. Does not
    block beyond reading the multiprocess files."""
    import prometheus_client
    from prometheus_client import multiprocess

    dwebsocket_metrics.flush()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus_client.REGISTRY
    return HttpResponse(
        prometheus_client.generate_latest(registry),
        content_type=prometheus_client.CONTENT_TYPE_LATEST,
    )
