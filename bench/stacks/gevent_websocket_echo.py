"""gevent-websocket's echo under ``gevent.pywsgi`` (monkey-patched), its documented setup.

python bench/stacks/gevent_websocket_echo.py 127.0.0.1:PORT
"""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402


def application(environ, start_response):
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket only\n"]
    while True:
        message = ws.receive()
        if message is None:
            return []
        ws.send(message, binary=not isinstance(message, str))


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    server = WSGIServer((host, int(port)), application, handler_class=WebSocketHandler, log=None)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    print(f"gevent-websocket serving on {host}:{port}", flush=True)
    server.serve_forever()
