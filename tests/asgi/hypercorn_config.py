"""hypercorn's configuration for the tests (``--config python:tests.asgi.hypercorn_config``)."""

# The server's own limit: above WEBSOCKET_MAX_MESSAGE_SIZE, dwebsocket says 1009.
websocket_max_message_size = 64 << 20
