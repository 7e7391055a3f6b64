"""``manage.py websocket_status``: dwebsocket's counts, for people without Prometheus."""

from __future__ import annotations

import http.client
import json
import os
import struct
import urllib.request
from argparse import ArgumentParser
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

#: Metric (without ``django_websocket_``) -> its line in the report, in report order.
ROWS = {
    "connections_open": "Open WebSockets",
    "handshakes_total": "Handshakes, by status",
    "messages_received_total": "Messages received",
    "received_bytes_total": "Bytes received",
    "messages_sent_total": "Messages sent",
    "sent_bytes_total": "Bytes sent",
    "closes_total": "Closes, by code",
    "group_sends_total": "Group sends",
    "group_members_dropped_total": "Group members dropped (1008)",
    "keepalive_timeouts_total": "Keepalive timeouts (1011)",
}
LABELS = {"handshakes_total": "status", "closes_total": "code"}


class Command(BaseCommand):
    help = (
        "Print dwebsocket's counts (open WebSockets, handshakes, messages, bytes, closes...) "
        "added up over this machine's server processes: those writing to "
        "PROMETHEUS_MULTIPROC_DIR (set it here as for the servers), or the process behind "
        "--url. Needs prometheus_client (pip install 'dwebsocket[prometheus]')."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--url", help="read a /metrics page instead (a single-process server's)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            import prometheus_client  # noqa: F401 - only to say what is missing
        except ImportError:
            raise CommandError(
                "prometheus_client is not installed: pip install 'dwebsocket[prometheus]'"
            ) from None
        url: str | None = options["url"]
        variable, directory = _multiprocess_dir()
        if url:
            families, source = _scrape(url), url
        elif directory:
            source = f"{variable} {directory}"
            families = _multiprocess(source, directory)
        else:
            raise CommandError(
                "PROMETHEUS_MULTIPROC_DIR is not set, so the counts are in each server "
                "process's own memory. Set it for the servers and for this command (see "
                "docs/metrics.rst), or pass --url http://HOST:PORT/metrics."
            )
        try:
            counts = _counts(families)
        # Not dwebsocket's metrics, or a damaged file: NaN or a missing label (ValueError,
        # OverflowError, KeyError), a file cut short (struct.error).
        except (ValueError, OverflowError, KeyError, struct.error) as exc:
            raise CommandError(f"could not read dwebsocket's counts from {source}: {exc}") from None
        if options["json"]:
            self.stdout.write(json.dumps(counts, indent=2, sort_keys=True))
            return
        width = max(map(len, ROWS.values()))
        for name, title in ROWS.items():
            value = counts.get(name, 0)
            if isinstance(value, dict):
                shown = "  ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "-"
            else:
                shown = str(value)
            self.stdout.write(f"{title:<{width}}  {shown}")


def _multiprocess_dir() -> tuple[str, str | None]:
    """The variable naming the servers' multiprocess directory, and its value (None if
    unset), chosen as ``prometheus_client`` chooses: ``PROMETHEUS_MULTIPROC_DIR`` if it is
    in the environment (even empty), else the deprecated ``prometheus_multiproc_dir``."""
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        if variable in os.environ:
            return variable, os.environ[variable]
    return "PROMETHEUS_MULTIPROC_DIR", None


def _multiprocess(source: str, directory: str) -> Iterable[Any]:
    """The metric families counted in ``directory``; ``source`` names it (the variable
    and its value) in the error when it is not a directory."""
    from dwebsocket.metrics import multiprocess_registry

    if not os.path.isdir(directory):
        raise CommandError(
            f"{source} is not a directory: set it to the servers' (see docs/metrics.rst)"
        )
    # Without the open gauges of processes that are gone (a killed uWSGI worker's).
    return multiprocess_registry(directory).collect()


def _scrape(url: str) -> Iterable[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
        return list(text_string_to_metric_families(text))
    except (OSError, ValueError) as exc:  # ValueError: not a URL, not UTF-8, not metrics
        raise CommandError(f"could not read {url}: {exc}") from None
    except http.client.HTTPException as exc:  # another service's port, a page cut short
        # repr(): the peer's bytes (a status line that is none) escaped, on one line
        raise CommandError(f"could not read {url}: {exc!r}") from None


def _counts(families: Iterable[Any]) -> dict[str, Any]:
    """``{row: total}`` (``{row: {label: total}}`` for the labelled ones) from the samples
    named ``[namespace_]django_websocket_<row>``."""
    counts: dict[str, Any] = {}
    for family in families:
        for sample in family.samples:
            _, found, row = sample.name.partition("django_websocket_")
            if not found or row not in ROWS:
                continue
            value = int(sample.value)
            label = LABELS.get(row)
            if label is None:
                counts[row] = counts.get(row, 0) + value
            else:
                by_label = counts.setdefault(row, defaultdict(int))
                by_label[sample.labels[label]] += value
    return {k: dict(v) if isinstance(v, defaultdict) else v for k, v in counts.items()}
