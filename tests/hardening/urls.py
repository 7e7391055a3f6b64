"""The test project's URLs plus ``/_stats/`` and ``/_poll/``, for servers the hardening tests start
(``ROOT_URLCONF = "tests.hardening.urls"``)."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

from django.http import HttpRequest, JsonResponse
from django.urls import path

from dwebsocket import require_websocket
from tests.urls import urlpatterns as base_urlpatterns


def _greenlets() -> int | None:
    """Greenlets alive in this process (started and not finished), or None without gevent."""
    if "greenlet" not in sys.modules:
        return None
    from greenlet import greenlet  # type: ignore[import-untyped]

    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and bool(obj))


@require_websocket
def poll(request: HttpRequest) -> None:
    """A slow consumer that polls, as dwebsocket 0.x views often did: ``has_messages()``,
    then ``read()``, one message per millisecond at most."""
    ws = request.websocket  # type: ignore[attr-defined]
    ws.accept()
    while not ws.is_closed():
        if ws.has_messages():
            ws.read()
            time.sleep(0.001)
        else:
            time.sleep(0.01)


def stats(request: HttpRequest) -> JsonResponse:
    """What a leak would show: open file descriptors, threads, live greenlets, RSS, and
    the connections dwebsocket has open. Counted after a full garbage collection."""
    from dwebsocket.backends.default.registry import open_websockets

    gc.collect()
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return JsonResponse(
        {
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")),
            # This request's own greenlet is alive while it counts: leave it out.
            "greenlets": None if (n := _greenlets()) is None else n - 1,
            "rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
            "websockets": len(open_websockets()),
        }
    )


urlpatterns = [*base_urlpatterns, path("_stats/", stats), path("_poll/", poll)]  # type: ignore[arg-type]
