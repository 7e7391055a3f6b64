#!/usr/bin/env python
"""``make demo``: set up the chat demo's database, then serve it under gevent on 127.0.0.1.

Environment:
  PORT                     port to listen on (default 8000; 0 takes any free port)
  REDIS_URL or DWEBSOCKET_GROUPS_URL
                           groups layer; with a Redis URL, demo processes on other ports
                           that use the same Redis and the same database share the rooms
  CHAT_DB                  the SQLite file (default examples/chat/db.sqlite3)

Ctrl-C (SIGINT) or SIGTERM stops it: no new connections are taken, every open WebSocket is
closed with 1001 (going away), the views finish, and the process exits 0.
"""

# Before anything else: Django, redis-py and the sockets must all cooperate with gevent.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Not setdefault: a DJANGO_SETTINGS_MODULE left in the shell from another project must not win.
os.environ["DJANGO_SETTINGS_MODULE"] = "chatdemo.settings"

#: Seconds the views get to finish (their leave notices) once their sockets are closed;
#: a browser's idle keep-alive connection is dropped after as long.
FINISH_TIMEOUT = 2.0


def main() -> int:
    try:
        port = int(os.environ.get("PORT", "8000"))
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        print(f"PORT must be a number from 0 to 65535, not {os.environ['PORT']!r}", file=sys.stderr)
        return 2

    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    from django.contrib.auth.models import User

    for username in settings.DEMO_USERS:  # demo accounts (settings.DEMO_PASSWORD)
        if not User.objects.filter(username=username).exists():
            User.objects.create_user(username, password=settings.DEMO_PASSWORD)
    from django.db import connections

    connections.close_all()  # the serving greenlets open their own

    from django.core.wsgi import get_wsgi_application

    from dwebsocket.contrib.shutdown import going_away

    server = WSGIServer(("127.0.0.1", port), get_wsgi_application(), spawn=gevent.pool.Pool())
    try:
        server.start()
    except OSError as exc:
        print(
            f"cannot listen on 127.0.0.1:{port} "
            f"({os.strerror(exc.errno) if exc.errno else exc}); "
            f"choose another port: PORT={port + 1} make demo",
            file=sys.stderr,
        )
        return 1
    url = f"http://127.0.0.1:{server.address[1]}/"
    print(f"dwebsocket chat demo: {url}", flush=True)
    print(
        f"  groups: {redacted(settings.WEBSOCKET_GROUPS_URL)}"
        f"   database: {settings.DATABASES['default']['NAME']}",
        flush=True,
    )
    print(
        "  Open it in two browser tabs; log in as alice, bob or carol "
        f"(password {settings.DEMO_PASSWORD!r}). Ctrl-C stops.",
        flush=True,
    )

    stop = gevent.event.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait any longer
            os._exit(1)
        stop.set()

    gevent.signal_handler(signal.SIGINT, on_signal)
    gevent.signal_handler(signal.SIGTERM, on_signal)
    stop.wait()

    # Close the listener before the goodbyes, so that a page reconnecting at once finds
    # nobody there rather than a socket about to be dropped without a close frame.
    server.close()
    print("\nstopping: closing open WebSockets with 1001 (going away)", flush=True)
    closed = going_away()  # waits up to WEBSOCKET_CLOSE_TIMEOUT + 1 s
    # The views see their sockets closed and finish (leave notices); idle keep-alives end.
    server.stop(timeout=FINISH_TIMEOUT)
    print(f"stopped ({closed} WebSocket(s) closed)", flush=True)
    return 0


def redacted(url: str) -> str:
    """``url`` without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


if __name__ == "__main__":
    sys.exit(main())
