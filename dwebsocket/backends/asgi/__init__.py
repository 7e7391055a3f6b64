"""The ASGI backend: ``request.websocket`` over an ASGI server's ``websocket`` scope
(:mod:`dwebsocket.asgi` routes the scope here; the server does the framing)."""
