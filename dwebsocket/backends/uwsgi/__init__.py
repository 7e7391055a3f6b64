"""The uWSGI backend: framing delegated to uWSGI's ``uwsgi.websocket_*`` API.

``factory`` (the ``WEBSOCKET_FACTORY_CLASS``), ``websocket`` (``request.websocket``),
``loops`` (waiting under ``--gevent``, ``--async --ugreen`` and threads), ``wsgi`` (the
WSGI wrapper a uWSGI deployment serves), ``takeover`` (the default backend's raw
takeover under uWSGI). Only ``websocket``, ``loops`` and ``takeover`` import ``uwsgi``,
and only this package does.
"""
