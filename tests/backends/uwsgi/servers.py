"""uWSGI command lines only the uWSGI tests start, added to ``tests.servers.OTHER_SERVERS``
on import (``start_server`` / ``make_server`` then know them by name)."""

from __future__ import annotations

from tests.servers import OTHER_SERVERS, _script, _uwsgi

__all__ = ["APP_SERVERS"]

OTHER_SERVERS.update(
    {
        # Keepalive every second, one second to answer.
        "uwsgi-gevent-ping": lambda host, port: [
            *_uwsgi(host, port, "uwsgi", "--gevent", "10"),
            "--websocket-ping-freq",
            "1",
            "--websocket-pong-tolerance",
            "1",
        ],
        # Monkey-patched, as docs/deployment.rst says views using blocking libraries need.
        "uwsgi-gevent-patched": lambda host, port: _uwsgi(
            host, port, "uwsgi", "--gevent", "10", "--gevent-early-monkey-patch"
        ),
        # --async cores without a suspend engine (no --ugreen): refused (501).
        "uwsgi-async-plain": lambda host, port: _uwsgi(host, port, "uwsgi", "--async", "4"),
        # uWSGI's per-frame limit at 1 KiB, below WEBSOCKET_MAX_MESSAGE_SIZE.
        "uwsgi-gevent-small-frames": lambda host, port: [
            *_uwsgi(host, port, "uwsgi", "--gevent", "10"),
            "--websocket-max-size",
            "1",
        ],
    }
)


def _bare(app: str, *args: str) -> list[str]:
    return [
        _script("uwsgi"),
        "--master",
        "--die-on-term",
        "--need-app",
        "--processes",
        "1",
        "--module",
        f"tests.backends.uwsgi.bare:{app}",
        *args,
    ]


#: uWSGI serving tests/backends/uwsgi/bare.py (uWSGI's API alone, no Django, no dwebsocket): the
#: defects that are uWSGI's whoever calls it.
APP_SERVERS = {
    "uwsgi-bare-ugreen": lambda host, port: _bare(
        "echo", "--http-socket", f"{host}:{port}", "--async", "60", "--ugreen"
    ),
    "uwsgi-bare-suspend": lambda host, port: _bare(
        "suspend_echo", "--http-socket", f"{host}:{port}", "--async", "10", "--ugreen"
    ),
    "uwsgi-bare-router": lambda host, port: _bare(
        "echo", "--http", f"{host}:{port}", "--http-websockets", "--gevent", "10"
    ),
    # Answers after the client's FIN arrived: behind the router, and (for contrast) not.
    "uwsgi-bare-router-eof": lambda host, port: _bare(
        "echo_after_eof", "--http", f"{host}:{port}", "--http-websockets", "--gevent", "10"
    ),
    "uwsgi-bare-eof": lambda host, port: _bare(
        "echo_after_eof", "--http-socket", f"{host}:{port}", "--gevent", "10"
    ),
}
OTHER_SERVERS.update(APP_SERVERS)
