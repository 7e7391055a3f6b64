"""Server integrations: ``dwebsocket.contrib.gunicorn`` (a gunicorn config module) and
``dwebsocket.contrib.shutdown`` (signal hooks for scripts that run gevent.pywsgi or
eventlet.wsgi). See ``docs/deployment.rst``."""
