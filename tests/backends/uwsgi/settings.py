"""The test project with the uwsgi backend (the uwsgi-gevent and uwsgi-async servers)."""

from tests.settings import *  # noqa: F403

WEBSOCKET_FACTORY_CLASS = "dwebsocket.backends.uwsgi.factory.uWsgiWebSocketFactory"
ROOT_URLCONF = "tests.backends.uwsgi.urls"
WSGI_APPLICATION = "tests.backends.uwsgi.wsgi.application"
globals().update(json.loads(os.environ.get("DWEBSOCKET_TEST_SETTINGS", "{}")))  # noqa: F405
