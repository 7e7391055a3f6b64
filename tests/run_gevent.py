"""Serve the test project with ``gevent.pywsgi`` (monkey-patched), as users deploy it.

    python tests/run_gevent.py 127.0.0.1:PORT

Stops cleanly on SIGTERM/SIGINT (``dwebsocket.contrib.shutdown``). This is the script
``docs/deployment.rst`` shows.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.wsgi import get_wsgi_application

    from dwebsocket.contrib.shutdown import install

    host, _, port = sys.argv[1].rpartition(":")
    server = WSGIServer((host or "127.0.0.1", int(port)), get_wsgi_application())
    # SIGTERM/SIGINT: open WebSockets get 1001 ("going away"), then the server stops.
    install(server.stop)
    print(f"gevent.pywsgi serving on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
