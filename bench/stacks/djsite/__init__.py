"""The Django project every Django-based stack serves: one echo endpoint at ``/echo/``.

dwebsocket serves it through ``views.echo`` (an ordinary view), Channels through
``asgi.EchoConsumer``; both are what a user would write first.
"""
