"""WSGI entry point for gunicorn and uWSGI (``bench.stacks.djsite.wsgi:application``).

Under uWSGI the application is wrapped by ``dwebsocket.backends.uwsgi.wsgi``, as the
uWSGI backend's documentation asks.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stacks.djsite.settings")

try:
    import uwsgi  # noqa: F401
except ImportError:
    from django.core.wsgi import get_wsgi_application
else:
    from dwebsocket.backends.uwsgi.wsgi import get_wsgi_application

application = get_wsgi_application()
