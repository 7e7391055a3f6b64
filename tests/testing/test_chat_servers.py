"""The scenarios of ``test_chat.py``, same names, against real servers and the
``websockets`` client: what ``dwebsocket.testing`` shows in process holds in production.

Each server serves the chat (``tests/testing/urls.py``) from one SQLite file that a
setup process migrates and fills with the users; clients log in over HTTP and present
the session cookie, as a browser does. Groups go through a private redis-server, as in
production: some servers run several worker processes.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.servers import REPO, ServerProcess, shared_servers, start_server
from tests.testing.support import CHAT_SETTINGS, PASSWORD, USERS

pytestmark = pytest.mark.server

WAIT = 20.0

SETUP = f"""
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import User
call_command("migrate", verbosity=0)
for name in {USERS!r}:
    User.objects.create_user(name, password={PASSWORD!r})
"""


@pytest.fixture(scope="module")
def chat_settings(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, Any]:
    """The chat's settings with a migrated SQLite file holding the users."""
    db = tmp_path_factory.mktemp("chat") / "db.sqlite3"
    settings = {
        **CHAT_SETTINGS,
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db)}},
        "WEBSOCKET_GROUPS_URL": redis_url,
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DWEBSOCKET_TEST_SETTINGS": json.dumps(settings),
    }
    subprocess.run([sys.executable, "-c", SETUP], cwd=REPO, env=env, check=True, timeout=120)
    return settings


@pytest.fixture(scope="module", params=shared_servers())
def server(
    request: pytest.FixtureRequest,
    chat_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp(f"chat-{request.param}") / "server.log"
    srv = start_server(request.param, log, settings=chat_settings)
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


def login(server: ServerProcess, username: str) -> str:
    """Log in over HTTP; return the ``Cookie`` header value a browser would send."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        body = f"username={username}&password={PASSWORD.replace(' ', '+')}"
        conn.request("POST", "/login/", body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        assert response.status == 204, response.status
        cookies = response.headers.get_all("Set-Cookie") or []
    finally:
        conn.close()
    return "; ".join(cookie.split(";", 1)[0] for cookie in cookies)


def join(
    server: ServerProcess, room: str, username: str | None = None, **kwargs: Any
) -> ClientConnection:
    headers = {"Cookie": login(server, username)} if username else {}
    return connect(
        server.url(f"/chat/{room}/"),
        additional_headers=headers,
        open_timeout=WAIT,
        close_timeout=WAIT,
        proxy=None,
        **kwargs,
    )


def receive_json(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=WAIT))


def test_anonymous_is_refused(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        join(server, "lobby")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"Log in to chat.\n"


def test_foreign_origin_is_refused(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        join(server, "lobby", "alice", origin="https://evil.example")
    assert refused.value.response.status_code == 403


def test_same_origin_is_accepted(server: ServerProcess) -> None:
    with join(server, "origin", "alice", origin=server.url("", scheme="http")) as ws:
        assert receive_json(ws) == {"user": "alice", "event": "joined"}


def test_messages_reach_everyone_in_the_room(server: ServerProcess) -> None:
    with join(server, "everyone", "alice") as alice:
        assert receive_json(alice) == {"user": "alice", "event": "joined"}
        with join(server, "everyone", "bob") as bob:
            assert receive_json(bob) == {"user": "bob", "event": "joined"}
            assert receive_json(alice) == {"user": "bob", "event": "joined"}
            alice.send("hi bob")
            for ws in (alice, bob):
                assert receive_json(ws) == {"user": "alice", "text": "hi bob"}


def test_rooms_are_separate(server: ServerProcess) -> None:
    with (
        join(server, "separate", "alice") as alice,
        join(server, "separate-kitchen", "carol") as carol,
    ):
        assert receive_json(alice) == {"user": "alice", "event": "joined"}
        assert receive_json(carol) == {"user": "carol", "event": "joined"}
        alice.send("lobby only")
        assert receive_json(alice) == {"user": "alice", "text": "lobby only"}
        carol.send("kitchen only")
        assert receive_json(carol) == {"user": "carol", "text": "kitchen only"}


def test_leaving_is_announced(server: ServerProcess) -> None:
    with join(server, "leaving", "alice") as alice:
        assert receive_json(alice) == {"user": "alice", "event": "joined"}
        with join(server, "leaving", "bob") as bob:
            assert receive_json(bob) == {"user": "bob", "event": "joined"}
        assert bob.close_code == 1000
        assert receive_json(alice) == {"user": "bob", "event": "joined"}
        assert receive_json(alice) == {"user": "bob", "event": "left"}


def test_bye_closes_with_4000(server: ServerProcess) -> None:
    with join(server, "bye", "alice") as alice:
        assert receive_json(alice) == {"user": "alice", "event": "joined"}
        alice.send("/bye")
        with pytest.raises(ConnectionClosed):
            alice.recv(timeout=WAIT)
    assert alice.close_code == 4000
    assert alice.close_reason == "bye"


def test_the_same_scenarios_run_in_process() -> None:
    """Every scenario here has its twin in test_chat.py, and the other way round."""

    def scenarios(path: Path, scope: str | None) -> set[str]:
        tree = ast.parse(path.read_text())
        body = tree.body
        if scope is not None:
            body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == scope).body
        return {
            node.name
            for node in body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }

    here = Path(__file__).parent
    mine = scenarios(Path(__file__), None) - {"test_the_same_scenarios_run_in_process"}
    assert mine == scenarios(here / "test_chat.py", "ChatTests")
