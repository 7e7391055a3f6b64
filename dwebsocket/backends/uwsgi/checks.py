"""The uwsgi backend's system check (registered by ``dwebsocket.checks``).

- ``dwebsocket.W008``: ``WEBSOCKET_FACTORY_CLASS`` is the uwsgi backend but
  ``WSGI_APPLICATION`` is not wrapped by :mod:`dwebsocket.backends.uwsgi.wsgi`: after
  each WebSocket session Django's ``start_response`` fails (uWSGI counts the 101 as the
  response), ``request_finished`` never fires and database connections are not closed.

uWSGI serves whatever ``--module``/``--wsgi-file`` names; the check looks at
``WSGI_APPLICATION``, which ``startproject`` points at the same ``wsgi.py``. Inside uWSGI
the backend also logs a warning at the first WebSocket served without the wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks
from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from dwebsocket.conf import FACTORY_CLASS

from .wsgi import is_wrapped

__all__ = ["check_wsgi_wrapper"]

UWSGI_FACTORY = "dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory"


def check_wsgi_wrapper(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``dwebsocket.W008`` when the uwsgi backend is selected and ``WSGI_APPLICATION``
    is set but not wrapped. Imports ``WSGI_APPLICATION`` (as ``runserver`` does)."""
    # Read raw: a wrong value is dwebsocket.E012's to report.
    if getattr(django_settings, FACTORY_CLASS.name, FACTORY_CLASS.default) != UWSGI_FACTORY:
        return []
    path = getattr(django_settings, "WSGI_APPLICATION", None)
    if not path:
        return []
    try:
        application = import_string(path)
    except ImportError:
        return []  # Django's own checks and servers report that
    if is_wrapped(application):
        return []
    return [
        checks.Warning(
            f"WSGI_APPLICATION {path!r} is not wrapped for the uwsgi backend: after each "
            "WebSocket session Django's response fails ('headers already sent'), "
            "request_finished never fires and database connections stay open.",
            hint="In wsgi.py: from dwebsocket.backends.uwsgi.wsgi import "
            "get_wsgi_application; application = get_wsgi_application() "
            "(or wrap(application)).",
            id="dwebsocket.W008",
        )
    ]
