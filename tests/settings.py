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
# The tests' database is SQLite's shared in-memory one, where a read table-locks what it
# reads until it ends, and a write from another connection meanwhile fails at once with
# "database table is locked" (no busy timeout for those locks). Threads of the library
# read while a test writes (the session checks of dwebsocket.users, views' threads), and
# two fresh-clone runs failed that way; read_uncommitted readers take no such locks.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "OPTIONS": {"init_command": "PRAGMA read_uncommitted = 1"},
    },
    # Two more connections to the same test database, for the tests of closing a
    # thread's connections (tests/asgi/test_threads.py): the first one's close can fail.
    "close_fails": {
        "ENGINE": "tests.failing_db",
        "NAME": ":memory:",
        "TEST": {"MIRROR": "default"},
    },
    "after_close_fails": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "TEST": {"MIRROR": "default"},
    },
}
USE_TZ = True
# No periodic session check (dwebsocket.users) unless a test asks for one: less reading
# from a thread of its own while tests write.
WEBSOCKET_SESSION_CHECK_INTERVAL = None


# Server subprocesses started by the tests (tests/servers.py) get extra settings as JSON,
# e.g. DWEBSOCKET_TEST_SETTINGS='{"WEBSOCKET_MAX_MESSAGE_SIZE": 67108864}'.
globals().update(json.loads(os.environ.get("DWEBSOCKET_TEST_SETTINGS", "{}")))

# A server subprocess with hostile Python code in it (tests/hostile.py).
if os.environ.get("DWEBSOCKET_TEST_HOSTILE") == "1":
    import tests.hostile  # noqa: F401
