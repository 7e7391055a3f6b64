"""The default backend: takes the connection over from the WSGI server and speaks
RFC 6455 + RFC 7692 itself over the raw socket, with the sans-I/O core in
:mod:`dwebsocket.protocol`.

- :mod:`.takeovers`  finds the raw socket per server (uWSGI's included).
- :mod:`.transport`  that socket, and what the server already read of it.
- :mod:`.websocket`  ``request.websocket`` over that socket.
- :mod:`.factory`    ``WebSocketFactory``, the entry point named by ``WEBSOCKET_FACTORY_CLASS``.
"""
