"""The test project's WSGI module, as ``startproject`` writes one: ``gunicorn tests.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = get_wsgi_application()
