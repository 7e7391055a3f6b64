"""The uWSGI backend: framing delegated to uWSGI's ``uwsgi.websocket_*`` API.

``factory`` (the ``WEBSOCKET_FACTORY_CLASS``), ``websocket`` (``request.websocket``),
``loops`` (waiting under ``--gevent``, ``--async --ugreen`` and threads), ``wsgi`` (the
WSGI wrapper a uWSGI deployment serves, with either backend). Only ``websocket`` and
``loops`` import ``uwsgi`` at module level; elsewhere only the default backend's uWSGI
takeover does, inside its function (``dwebsocket.backends.default.takeovers``).
"""
