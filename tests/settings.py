import json
import os

SECRET_KEY = "dwebsocket-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "dwebsocket",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
# No periodic session check (dwebsocket.users) unless a test asks for one: it reads the
# sessions of the open authenticated sockets from its own thread whenever its interval
# comes round, and a read of SQLite's shared in-memory test database table-locks it, so a
# test that wrote a session at that moment failed with "database table is locked".
WEBSOCKET_SESSION_CHECK_INTERVAL = None


# Server subprocesses started by the tests (tests/servers.py) get extra settings as JSON,
# e.g. DWEBSOCKET_TEST_SETTINGS='{"WEBSOCKET_MAX_MESSAGE_SIZE": 67108864}'.
globals().update(json.loads(os.environ.get("DWEBSOCKET_TEST_SETTINGS", "{}")))

# A server subprocess with hostile Python code in it (tests/hostile.py).
if os.environ.get("DWEBSOCKET_TEST_HOSTILE") == "1":
    import tests.hostile  # noqa: F401
