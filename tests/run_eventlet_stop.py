"""``tests/run_eventlet.py`` with a stop callable: ``eventlet.wsgi.server`` runs in a
green thread, and ``install(server.kill)`` ends it once the open WebSockets got 1001.

    python tests/run_eventlet_stop.py 127.0.0.1:PORT
"""

import eventlet

eventlet.monkey_patch()

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import eventlet.wsgi  # noqa: E402
from greenlet import GreenletExit  # noqa: E402


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.wsgi import get_wsgi_application

    from dwebsocket.contrib.shutdown import install

    application = get_wsgi_application()
    host, _, port = sys.argv[1].rpartition(":")
    listener = eventlet.listen((host or "127.0.0.1", int(port)))
    server = eventlet.spawn(eventlet.wsgi.server, listener, application)
    install(server.kill)
    with contextlib.suppress(GreenletExit):  # killed: the stop
        server.wait()


if __name__ == "__main__":
    main()
