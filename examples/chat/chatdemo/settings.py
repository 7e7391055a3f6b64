"""Settings of the chat demo: one SQLite file, dwebsocket, and the groups layer from the
environment (``REDIS_URL`` or ``DWEBSOCKET_GROUPS_URL``; in-process when neither is set)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# A demo secret: this project only ever listens on 127.0.0.1.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dwebsocket-chat-demo-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# dwebsocket derives its Origin allow-list from ALLOWED_HOSTS: a page served from another
# host cannot open a socket here.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "dwebsocket",
    "chat",
]
# Django's own log-in: a socket opened by a logged-in page is known by its user and
# session, and closes (4001) when that session logs out, in any tab, in any process.
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
#: The demo's accounts, made at start (run.py); their password is DEMO_PASSWORD.
DEMO_USERS = ("alice", "bob", "carol")
DEMO_PASSWORD = "dwebsocket"
ROOT_URLCONF = "chatdemo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # Two demo processes (the Redis set-up) share this file, and so their history.
        "NAME": os.environ.get("CHAT_DB", str(HERE / "db.sqlite3")),
        "OPTIONS": {
            # WAL lets one process read while another writes; the timeout bounds the wait
            # for the write lock.
            "init_command": "PRAGMA journal_mode=WAL;",
            "timeout": 5,
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# unset / memory:// = this process only; redis://host:port/db = every process on that Redis.
WEBSOCKET_GROUPS_URL = (
    os.environ.get("DWEBSOCKET_GROUPS_URL") or os.environ.get("REDIS_URL") or "memory://"
)
# Each room's group keeps its last 500 messages for 10 minutes: a tab that reconnects
# (a server restart, a train tunnel) gets what it missed instead of the whole room again.
WEBSOCKET_GROUPS_HISTORY = {"chat.*": {"size": 500, "ttl": 600}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
