"""``path("", include("dwebsocket.metrics.urls"))`` serves ``/metrics`` (as
``django_prometheus.urls`` does: use either, they show the same metrics)."""

from __future__ import annotations

from django.urls import path

from dwebsocket.metrics.views import metrics

urlpatterns = [path("metrics", metrics, name="dwebsocket-metrics")]
