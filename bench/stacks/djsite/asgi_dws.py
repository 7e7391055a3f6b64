"""The benchmark project through ``dwebsocket.asgi`` (``bench/asgi.py``): the sync echo of
``views.py``, or with ``ROOT_URLCONF = "bench.stacks.djsite.async_urls"`` an async one."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stacks.djsite.settings")

from dwebsocket.asgi import get_asgi_application

application = get_asgi_application()
