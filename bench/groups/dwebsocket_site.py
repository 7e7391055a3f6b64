"""The dwebsocket side of the groups benchmark: settings, URLs and the member view.

``/member/`` joins group "bench", says "joined" and waits until the client leaves -- the
smallest view a chat room's members would run.

Diagnostics: ``BENCH_TRACE=1`` logs each fan-out's duration to the server's log
(``bench/out/groups-dwebsocket-server*.log``); ``BENCH_TRACE=profile`` also profiles the
fan-out of round 3.
"""

from __future__ import annotations

import os

from django.http import HttpRequest
from django.urls import path

from dwebsocket import require_websocket

SECRET_KEY = "bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["dwebsocket"]
ROOT_URLCONF = "dwebsocket_site"
DATABASES: dict[str, object] = {}
USE_TZ = True
WEBSOCKET_GROUPS_URL = os.environ["BENCH_REDIS_URL"]
WEBSOCKET_PING_INTERVAL = None  # as daphne's is disabled: no keepalive traffic
WEBSOCKET_COMPRESSION = False


@require_websocket
def member(request: HttpRequest) -> None:
    ws = request.websocket  # type: ignore[attr-defined]
    ws.join("bench")
    ws.send("joined")
    for _ in ws:
        pass


urlpatterns = [path("member/", member)]


if os.environ.get("BENCH_TRACE"):  # log each fan-out's duration (diagnostics)
    import sys
    import time

    from dwebsocket.groups import memory, redis

    _fan_out = memory.fan_out

    def _timed(registry, group, message):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        cpu = time.process_time()
        try:
            if os.environ["BENCH_TRACE"] == "profile" and message == "3":
                import cProfile
                import pstats

                profile = cProfile.Profile()
                result = profile.runcall(_fan_out, registry, group, message)
                pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(12)
                return result
            return _fan_out(registry, group, message)
        finally:
            print(
                f"fan-out {message!r}: {1000 * (time.monotonic() - started):.2f} ms "
                f"cpu {1000 * (time.process_time() - cpu):.2f} ms "
                f"at {started:.4f}",
                file=sys.stderr,
                flush=True,
            )

    redis.fan_out = _timed  # type: ignore[assignment]
