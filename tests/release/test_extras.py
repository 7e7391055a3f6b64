"""Each extra, installed alone from the built wheel into a fresh venv, brings what its
server needs: the server starts with the quick-start project and echoes.

gunicorn 27's gevent worker imports ``packaging`` without declaring it (only
``gunicorn[gevent]`` does): ``pip install "dwebsocket[gunicorn,gevent]"`` then
``gunicorn -k gevent`` failed with ``No module named 'packaging'`` until the ``gunicorn``
extra brought it. The command lines are those of ``docs/deployment.rst``.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.groups.redis_server import REDIS_SERVER, RedisServer
from tests.release.conftest import Dist
from tests.release.support import PROJECT, WAIT, Venv, echo, make_project, serving

pytestmark = [pytest.mark.server, pytest.mark.venv]

GUNICORN = ["gunicorn", "-c", "python:dwebsocket.contrib.gunicorn", "--bind", "127.0.0.1:{port}"]
UWSGI = ["uwsgi", "--master", "--die-on-term", "--processes", "1"]
UWSGI += ["--http-socket", "127.0.0.1:{port}", "--module", f"{PROJECT}.wsgi:application"]

#: extras -> the server's command line (``{port}``: a free port).
SERVERS = {
    "gevent": ["python", "serve.py", "127.0.0.1", "{port}"],
    "gunicorn": [*GUNICORN, "-k", "gthread", "--threads", "8", f"{PROJECT}.wsgi"],
    "gunicorn,gevent": [*GUNICORN, "-k", "gevent", "--workers", "2", f"{PROJECT}.wsgi"],
    "eventlet": ["python", "serve_eventlet.py", "{port}"],
    "uwsgi": [*UWSGI, "--threads", "8"],
    "uwsgi,gevent": [*UWSGI, "--gevent", "100", "--gevent-early-monkey-patch"],
    # docs/asgi.rst: the asgi extra brings uvicorn, asgi.py uses dwebsocket.asgi
    "asgi": ["uvicorn", "--host", "127.0.0.1", "--port", "{port}", f"{PROJECT}.asgi:application"],
}

#: ``eventlet.wsgi`` as ``docs/deployment.rst`` shows it (``tests/run_eventlet.py``).
SERVE_EVENTLET = f"""\
import eventlet

eventlet.monkey_patch()

import os, sys
import eventlet.wsgi

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{PROJECT}.settings")
from django.core.wsgi import get_wsgi_application
from dwebsocket.contrib.shutdown import install

application = get_wsgi_application()
install()
eventlet.wsgi.server(eventlet.listen(("127.0.0.1", int(sys.argv[1]))), application)
"""


#: uWSGI's ``wsgi.py`` (``docs/deployment.rst``): dwebsocket's wrapper, so that Django's
#: response after a WebSocket session is dropped rather than written.
UWSGI_WSGI = f"""\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{PROJECT}.settings")

from dwebsocket.backends.uwsgi.wsgi import get_wsgi_application

application = get_wsgi_application()
"""


#: ``asgi.py`` as ``docs/asgi.rst`` shows it.
ASGI_PY = f"""\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{PROJECT}.settings")

from dwebsocket.asgi import get_asgi_application

application = get_asgi_application()
"""


def venv_with(extras: str, dist: Dist, tmp_path: Path) -> tuple[Venv, Path]:
    venv = Venv(tmp_path / "venv")
    venv.install(f"dwebsocket[{extras}] @ {dist.wheel.as_uri()}")
    project = make_project(venv, tmp_path / "site")
    (project / "serve_eventlet.py").write_text(SERVE_EVENTLET)
    if "uwsgi" in extras:
        (project / PROJECT / "wsgi.py").write_text(UWSGI_WSGI)
    if extras == "asgi":
        (project / PROJECT / "asgi.py").write_text(ASGI_PY)
    return venv, project


@pytest.mark.parametrize("extras", sorted(SERVERS))
def test_the_extra_starts_its_server(extras: str, dist: Dist, tmp_path: Path) -> None:
    venv, project = venv_with(extras, dist, tmp_path)
    log = tmp_path / "server.log"
    with serving(venv, SERVERS[extras], project, log) as port:
        for _ in range(3):  # gunicorn's two workers: likely both
            echo(port)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Error" not in text, text


ROOM = """
from dwebsocket import accept_websocket


@accept_websocket
def room(request):
    request.websocket.join("room")
    for message in request.websocket:
        request.websocket.send(message)
"""


def test_the_redis_extra_carries_group_messages(dist: Dist, tmp_path: Path) -> None:
    """``manage.py websocket_send`` in one process reaches a member in runserver's."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail("redis-server is not installed")
    venv, project = venv_with("redis", dist, tmp_path)
    package = project / PROJECT
    with open(package / "views.py", "a") as views:
        views.write(ROOM)
    with open(package / "urls.py", "a") as urls:
        urls.write('\nurlpatterns.append(path("room/", views.room))\n')
    redis = RedisServer()
    redis.start()
    try:
        with open(package / "settings.py", "a") as settings:
            settings.write(f"\nWEBSOCKET_GROUPS_URL = {redis.url!r}\n")
        argv = ["python", "manage.py", "runserver", "127.0.0.1:{port}", "--noreload"]
        with (
            serving(venv, argv, project, tmp_path / "runserver.log") as port,
            connect(f"ws://127.0.0.1:{port}/room/", proxy=None, open_timeout=WAIT) as ws,
        ):
            ws.send("joined?")
            assert ws.recv(timeout=WAIT) == "joined?"  # the view joined before echoing
            venv.run("python", "manage.py", "websocket_send", "room", "from cron", cwd=project)
            assert ws.recv(timeout=WAIT) == "from cron"
    finally:
        redis.close()


def test_the_prometheus_extra_serves_metrics(dist: Dist, tmp_path: Path) -> None:
    """``dwebsocket[prometheus]`` and ``dwebsocket.metrics.urls``: /metrics counts the
    quick start's echo."""
    venv, project = venv_with("prometheus", dist, tmp_path)
    with open(project / PROJECT / "urls.py", "a") as urls:
        urls.write(
            "\nfrom django.urls import include\n"
            'urlpatterns.append(path("", include("dwebsocket.metrics.urls")))\n'
        )
    argv = ["python", "manage.py", "runserver", "127.0.0.1:{port}", "--noreload"]
    with serving(venv, argv, project, tmp_path / "runserver.log") as port:
        echo(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as page:
            text = page.read().decode()
    assert 'django_websocket_handshakes_total{status="101"} 1.0' in text, text
    assert "django_websocket_messages_received_total 2.0" in text, text
    assert 'django_websocket_closes_total{code="1000"} 1.0' in text, text
