"""``python bench/groups/serve_dwebsocket.py PORT``: dwebsocket_site under gevent.pywsgi."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwebsocket_site")


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from django.core.wsgi import get_wsgi_application

    server = WSGIServer(
        ("127.0.0.1", int(sys.argv[1])), get_wsgi_application(), backlog=2048, log=None
    )
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
