"""Serve the test project with ``eventlet.wsgi`` (monkey-patched), as eventlet's docs do.

    python tests/run_eventlet.py 127.0.0.1:PORT

SIGTERM/SIGINT: open WebSockets get 1001, then the server stops
(``dwebsocket.contrib.shutdown``). This is the script ``docs/deployment.rst`` shows.
"""

import eventlet

eventlet.monkey_patch()

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import eventlet.wsgi  # noqa: E402


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.wsgi import get_wsgi_application

    from dwebsocket.contrib.shutdown import install

    application = get_wsgi_application()
    host, _, port = sys.argv[1].rpartition(":")
    install()
    eventlet.wsgi.server(eventlet.listen((host or "127.0.0.1", int(port))), application)


if __name__ == "__main__":
    main()
