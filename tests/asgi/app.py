"""The test project as an ASGI application (``dwebsocket.asgi``), for the servers of
``tests/asgi/servers.py``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from dwebsocket.asgi import get_asgi_application

application = get_asgi_application()

if "DWEBSOCKET_TEST_IO_TIMEOUT" in os.environ:
    # Seconds the server may take to take an event, for the tests of a client that stopped
    # reading (dwebsocket's is a minute).
    from dwebsocket.backends.asgi import connection, websocket

    connection.IO_TIMEOUT = websocket.IO_TIMEOUT = float(os.environ["DWEBSOCKET_TEST_IO_TIMEOUT"])
