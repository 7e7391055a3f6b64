"""The guides' views, run as written: the view of each sample in ``docs/groups.rst``,
``docs/migration.rst``, ``docs/channels.rst``, ``docs/recovery.rst`` and ``docs/users.rst``
is copied from its page into a project made with ``django-admin startproject mysite``
(with ``recovery.rst``'s settings, its groups on a private redis-server) and served by
the README's gevent ``serve.py`` and by uvicorn through ``channels.rst``'s ``asgi.py``. A
real client checks that each does what the text beside it says, and the server logs no
traceback. (The README's quick start has ``tests/testing/test_readme.py``.)
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dwebsocket.client import ReconnectingClient
from tests.servers import REPO, project_server
from tests.testing.test_readme import env, quick_start, run

pytestmark = pytest.mark.server

DOCS = REPO / "docs"
WAIT = 30.0

#: ``{module: (page, the line that starts the sample's view, its URL pattern)}``.
SAMPLES = {
    "groups_views": ("groups.rst", "def room(request, name):", "room/<str:name>/"),
    "migration_views": (
        "migration.rst",
        "def chat(request, room_name):",
        "ws/chat/<str:room_name>/",
    ),
    "channels_views": ("channels.rst", "async def chat(request, room):", "achat/<str:room>/"),
    "recovery_views": ("recovery.rst", "def room(request, name):", "chat/<str:name>/"),
    "users_views": ("users.rst", "def room(request, name):", "presence/<str:name>/"),
}

#: What the samples use without defining it ("what the page needs from scratch").
PRELUDE = """\
import json

from django.http import HttpResponseForbidden

from dwebsocket import accept_websocket, groups, require_websocket


def full_state(name):
    return json.dumps({"state": name})

"""


def blocks(page: str) -> list[str]:
    """The page's literal blocks (``::`` and ``.. code-block:: python``), dedented."""
    text = (DOCS / page).read_text()
    found = re.findall(r"(?:::|\.\. code-block:: python)\n\n((?:    .*\n|\n)+)", text)
    return [textwrap.dedent(block) for block in found]


def view_sample(page: str, start: str) -> str:
    """The view that begins with ``start`` on ``page``: its decorators, then its body."""
    [block] = [b for b in blocks(page) if start in b]
    lines = block.splitlines()
    first = last = next(i for i, line in enumerate(lines) if line.startswith(start))
    while first > 0 and lines[first - 1].startswith("@"):
        first -= 1
    while last + 1 < len(lines) and (not lines[last + 1] or lines[last + 1][0] == " "):
        last += 1
    return "\n".join(lines[first : last + 1]).rstrip() + "\n"


def settings_sample() -> str:
    """``recovery.rst``'s settings, with the test's redis-server for the one on 6379, and
    the test settings ``users.rst`` recommends (used by ``manage.py test`` only)."""
    [block] = [b for b in blocks("recovery.rst") if "WEBSOCKET_GROUPS_HISTORY" in b]
    assert '"redis://127.0.0.1:6379/0"' in block
    [tests] = [b for b in blocks("users.rst") if "read_uncommitted" in b]
    return (
        block.replace('"redis://127.0.0.1:6379/0"', 'os.environ["SAMPLES_REDIS_URL"]')
        + 'if sys.argv[1:2] == ["test"]:\n'
        + textwrap.indent(tests, "    ")
    )


NOTIFICATIONS = """
from django.http import HttpResponseForbidden
from dwebsocket import require_websocket


@require_websocket
def notifications(request):
    if not request.user.is_authenticated:
        return HttpResponseForbidden()
    for message in request.websocket:
        pass
"""


def case_sample(page: str, start: str) -> str:
    """The block on ``page`` that holds ``start`` (a test case, with its imports)."""
    [block] = [b for b in blocks(page) if start in b]
    return block


#: The test cases of users.rst and testing.rst, which the project's own tests run.
TEST_CASES = [
    ("users.rst", "class Notify(TransactionTestCase):"),
    ("testing.rst", "class EndToEnd(LiveServerTestCase):"),
]


def test_each_sample_is_found() -> None:
    for page, start, _ in SAMPLES.values():
        assert view_sample(page, start).count("request.websocket") >= 1, page
    for page, start in TEST_CASES:
        assert "def test_" in case_sample(page, start)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    run(root, "-m", "django", "startproject", "mysite", str(root))
    package = root / "mysite"
    settings = package / "settings.py"
    settings.write_text(
        "import os\nimport sys\n"
        + settings.read_text()
        + '\nINSTALLED_APPS = [*INSTALLED_APPS, "dwebsocket"]\n'
        + settings_sample()
    )
    patterns = []
    for module, (page, start, route) in SAMPLES.items():
        (package / f"{module}.py").write_text(PRELUDE + view_sample(page, start))
        name = start.split("def ")[1].split("(")[0]
        patterns.append(f'    path("{route}", {module}.{name}),')
    # What the test cases need besides: the README's echo view, a socket for
    # notifications (its view is not on the page), Django's own logout view (whose page
    # is the admin's).
    (package / "views.py").write_text(quick_start()["views.py"] + NOTIFICATIONS)
    patterns += [
        '    path("admin/", admin.site.urls),',
        '    path("echo/", views.echo),',
        '    path("notifications/", views.notifications),',
        '    path("logout/", LogoutView.as_view()),',
    ]
    (package / "urls.py").write_text(
        "from django.contrib import admin\n"
        "from django.contrib.auth.views import LogoutView\n"
        "from django.urls import path\n\n"
        f"from mysite import views, {', '.join(SAMPLES)}\n\n"
        "urlpatterns = [\n" + "\n".join(patterns) + "\n]\n"
    )
    (package / "tests.py").write_text(
        "\n\n".join(case_sample(page, start) for page, start in TEST_CASES)
    )
    # channels.rst's asgi.py: dwebsocket's get_asgi_application() for Django's.
    asgi = package / "asgi.py"
    django_import = "from django.core.asgi import get_asgi_application"
    assert django_import in asgi.read_text()
    asgi.write_text(
        asgi.read_text().replace(django_import, "from dwebsocket.asgi import get_asgi_application")
    )
    (root / "serve.py").write_text(
        quick_start()["serve.py"]
        .replace('("0.0.0.0", 8000)', "(sys.argv[1], int(sys.argv[2]))")
        .replace("from gevent import monkey;", "import sys; from gevent import monkey;")
    )
    return root


def uvicorn() -> str:
    script = Path(sys.executable).with_name("uvicorn")
    return str(script) if script.exists() else "uvicorn"


SERVE = {
    "gevent": lambda port: [sys.executable, "serve.py", "127.0.0.1", str(port)],
    "uvicorn": lambda port: [
        uvicorn(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "mysite.asgi:application",
    ],
}


def status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture(scope="module", params=sorted(SERVE))
def served(
    request: pytest.FixtureRequest,
    project: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, int]]:
    log = tmp_path_factory.mktemp(request.param) / "server.log"
    samples_env = env(SAMPLES_REDIS_URL=redis_url)

    def ready(port: int) -> int:  # the project's pages answer: its URLconf loaded
        return status(port, "/")

    with project_server(SERVE[request.param], project, samples_env, log, ready, WAIT) as server:
        yield request.param, server[1]


def test_the_test_cases_pass(project: Path) -> None:
    """users.rst's (a logout closes the socket with 4001) and testing.rst's (the live
    server), in the project's ``manage.py test``; memory:// as users.rst says."""
    output = run(project, "manage.py", "test", "--noinput", SAMPLES_REDIS_URL="memory://")
    assert re.search(r"Ran 2 tests\b.*\nOK\b", output, re.S), output


def ws(port: int, path: str, cookie: str | None = None) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else None
    return connect(
        f"ws://127.0.0.1:{port}{path}", additional_headers=headers, proxy=None, open_timeout=WAIT
    )


@pytest.fixture(scope="module")
def logged_in(project: Path) -> str:
    """The cookie of a session of a user in the project's database (``db.sqlite3``)."""
    run(project, "manage.py", "migrate", "--noinput", SAMPLES_REDIS_URL="memory://")
    output = run(
        project,
        "manage.py",
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from django.test import Client; "
        "c = Client(); c.force_login(User.objects.create_user('alice')); "
        "print('cookie', c.cookies['sessionid'].value)",
        SAMPLES_REDIS_URL="memory://",
    )
    [session] = re.findall(r"^cookie (\w+)$", output, re.M)
    return f"sessionid={session}"


def test_groups_room_reaches_everyone_this_one_included(served: tuple[str, int]) -> None:
    port = served[1]
    # The view joins before its loop accepts: a member is in the room once it is open.
    with ws(port, "/room/42/") as alice, ws(port, "/room/42/") as bob:
        bob.send("bob is here")
        alice.send("hello")
        for member in (alice, bob):
            got = [member.recv(timeout=WAIT) for _ in range(2)]
            assert sorted(got) == ["bob is here", "hello"]


def test_migration_chat_relays_the_json_to_the_room(served: tuple[str, int]) -> None:
    port = served[1]
    with ws(port, "/ws/chat/lobby/") as alice, ws(port, "/ws/chat/lobby/") as bob:
        alice.send(json.dumps({"message": "hi", "extra": "dropped"}))
        for member in (alice, bob):
            assert json.loads(member.recv(timeout=WAIT)) == {"message": "hi"}


def test_channels_chat_refuses_anonymous_users_with_a_real_403(served: tuple[str, int]) -> None:
    name, port = served
    with pytest.raises(InvalidStatus) as refused:
        ws(port, "/achat/lobby/")
    # Under WSGI an async def view is answered 501 (asgi.rst); under ASGI, the view's 403.
    assert refused.value.response.status_code == (403 if name == "uvicorn" else 501)


def test_channels_chat_relays_a_logged_in_users_messages(
    served: tuple[str, int], logged_in: str
) -> None:
    name, port = served
    if name != "uvicorn":  # an async def view: ASGI servers only, logged in or not
        with pytest.raises(InvalidStatus) as refused:
            ws(port, "/achat/lobby/", logged_in)
        assert refused.value.response.status_code == 501
        return
    with ws(port, "/achat/lobby/", logged_in) as alice, ws(port, "/achat/lobby/", logged_in) as tab:
        alice.send("hello")
        for member in (alice, tab):
            assert member.recv(timeout=WAIT) == "hello"


def test_recovery_room_gives_a_returning_client_what_it_missed(served: tuple[str, int]) -> None:
    port = served[1]
    url = f"ws://127.0.0.1:{port}/chat/lobby/"
    with ReconnectingClient(url, timeout=WAIT) as first:
        assert first.recv(WAIT).data == json.dumps({"state": "lobby"})  # a first visit
        first.send("hello")
        assert first.recv(WAIT).data == "hello"
        positions = dict(first.positions)
    with ws(port, "/chat/lobby/") as other:
        assert other.recv(timeout=WAIT) == json.dumps({"state": "lobby"})
        other.send("while you were away")
        assert other.recv(timeout=WAIT) == "while you were away"
    events = []
    with ReconnectingClient(url, timeout=WAIT, positions=positions, on_event=events.append) as back:
        assert back.recv(WAIT).data == "while you were away"  # no full state: recovered
        back.send("back")
        assert back.recv(WAIT).data == "back"
    assert "recovered" in [event.type for event in events]


def test_users_presence_room_lists_who_is_here(served: tuple[str, int]) -> None:
    port = served[1]
    with ws(port, "/presence/lobby/") as alice:
        # The list, and its own join (the first socket), which comes through Redis: in
        # either order.
        first, second = (json.loads(alice.recv(timeout=WAIT)) for _ in range(2))
        here, join = (first, second) if "here" in first else (second, first)
        assert here == {"here": [""]}
        assert (join["presence"], join["info"]) == ("join", {"name": ""})
    # Plain HTTP gets 400, not a 500 from a view that expected a WebSocket.
    assert status(port, "/presence/lobby/") == 400
