"""What uWSGI serves in the tests: the test project behind dwebsocket's WSGI wrapper.

``DWEBSOCKET_UWSGI_BACKEND=uwsgi`` (set by the uwsgi-gevent/uwsgi-async entries of
``tests/servers.py``) selects the uwsgi backend; otherwise the default backend takes the
connection over (uwsgi-takeover).
"""

import os

if os.environ.get("DWEBSOCKET_UWSGI_BACKEND") == "uwsgi":
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.backends.uwsgi.settings"
else:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from dwebsocket.backends.uwsgi.wsgi import get_wsgi_application

application = get_wsgi_application()
