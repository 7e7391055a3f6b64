"""The test project as an ASGI application (``dwebsocket.asgi``), for the servers of
``tests/asgi/servers.py``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from dwebsocket.asgi import get_asgi_application

application = get_asgi_application()
