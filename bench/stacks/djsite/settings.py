"""Settings of the benchmark project: production-like (DEBUG off, no request logging).

Extra settings come as JSON in ``DWEBSOCKET_BENCH_SETTINGS``, e.g. the uWSGI backend's
``{"WEBSOCKET_FACTORY_CLASS": "dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory"}``.
"""

import json
import os

SECRET_KEY = "dwebsocket-bench"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["dwebsocket"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.stacks.djsite.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# Channels' consumers read it; it is not used by dwebsocket.
ASGI_APPLICATION = "bench.stacks.djsite.asgi.application"
# 64 KiB messages are well under dwebsocket's default 1 MiB limit.

globals().update(json.loads(os.environ.get("DWEBSOCKET_BENCH_SETTINGS", "{}")))
