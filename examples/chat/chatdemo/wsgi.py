"""WSGI entry point: ``gunicorn -k gevent chatdemo.wsgi`` from examples/chat works too."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatdemo.settings")
application = get_wsgi_application()
