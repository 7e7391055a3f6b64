"""uWSGI's own WebSocket API in a plain WSGI callable: the echo of uWSGI's documentation.

    uwsgi --master --http 127.0.0.1:PORT --http-websockets --gevent 1000 \
          --wsgi-file bench/stacks/uwsgi_native.py

``websocket_recv()`` loses the opcode, so the reply's type is chosen by the URL:
``?binary=1`` echoes binary frames, anything else text.
"""

import uwsgi


def application(environ, start_response):
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""))
    binary = "binary=1" in environ.get("QUERY_STRING", "")
    send = uwsgi.websocket_send_binary if binary else uwsgi.websocket_send
    while True:
        try:
            message = uwsgi.websocket_recv()
        except OSError:
            return []
        send(message)
