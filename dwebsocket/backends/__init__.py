"""The backends: ``default`` (the WSGI servers' sockets, taken over), ``uwsgi`` (uWSGI's
own WebSocket API) and ``asgi``. What they share is defined here, once."""

#: The view's backlog: with this many received messages waiting for the view, or this
#: many bytes of them (the message limit, if larger), a backend stops reading the
#: connection until the view catches up, so a client that sends faster than the view
#: reads is pushed back by TCP's (or the ASGI server's) own flow control.
BACKLOG_MESSAGES = 1024
BACKLOG_BYTES = 1 << 20
