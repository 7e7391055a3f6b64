"""Every ``WEBSOCKET_*`` setting: a typed property, a system check with its own id for a
wrong value, and at runtime a clear refusal (503, logged) instead of a 500."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.http import HttpRequest
from django.test import Client, RequestFactory, override_settings
from django.urls import path
from django.utils.functional import SimpleLazyObject

from dwebsocket import conf, handshake, require_websocket
from dwebsocket.conf import SETTINGS, settings
from dwebsocket.exceptions import InvalidSetting
from tests.inprocess import upgrade_headers
from tests.wire import TIMEOUT

REPO = Path(__file__).resolve().parent.parent

#: For each setting, a wrong value a user could plausibly write.
WRONG: dict[str, object] = {
    "WEBSOCKET_ACCEPT_ALL": "yes",
    "WEBSOCKET_FACTORY_CLASS": "myproject.backends.NoSuchFactory",
    "WEBSOCKET_ALLOWED_ORIGINS": "https://example.com",
    "WEBSOCKET_COMPRESSION": "false",
    "WEBSOCKET_MAX_MESSAGE_SIZE": "1MB",
    "WEBSOCKET_MAX_FRAME_SIZE": -1,
    "WEBSOCKET_PING_INTERVAL": -5,
    "WEBSOCKET_PING_TIMEOUT": "20",
    "WEBSOCKET_CLOSE_TIMEOUT": None,
    "WEBSOCKET_SEND_QUEUE_SIZE": 0,
    "WEBSOCKET_GROUPS_URL": "mysql://localhost/db",
    "WEBSOCKET_MAX_CONNECTIONS": 1.5,
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP": True,
    "WEBSOCKET_GROUPS_HISTORY": {"chat.*": {"size": 0, "ttl": 60}},
    "WEBSOCKET_METRICS": "off",
    "WEBSOCKET_REVOKE_SESSIONS": 1,
    "WEBSOCKET_SESSION_CHECK_INTERVAL": 0,
    "WEBSOCKET_PRESENCE_HEARTBEAT": None,
    "WEBSOCKET_ASGI_THREADS": "1000",
}

#: More wrong values, for the settings whose range has more than one edge.
MORE_WRONG: list[tuple[str, object]] = [
    ("WEBSOCKET_FACTORY_CLASS", 42),
    ("WEBSOCKET_FACTORY_CLASS", "dwebsocket.websocket.WebSocket"),  # not a factory
    ("WEBSOCKET_MAX_MESSAGE_SIZE", 0),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", 1.5e6),
    ("WEBSOCKET_PING_INTERVAL", 0),
    ("WEBSOCKET_PING_INTERVAL", float("nan")),
    ("WEBSOCKET_CLOSE_TIMEOUT", -1),
    ("WEBSOCKET_CLOSE_TIMEOUT", float("inf")),
    ("WEBSOCKET_SEND_QUEUE_SIZE", None),
    ("WEBSOCKET_GROUPS_URL", "localhost:6379"),
    # A scheme the Redis layer serves, in a URL it cannot read: the check looked at the
    # scheme only, and each WebSocket request that reached the layer got a 500.
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:notaport/0"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/cache"),
    ("WEBSOCKET_GROUPS_URL", "redis://[::1/0"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?socket_timeout=soon"),
    ("WEBSOCKET_GROUPS_URL", "redis-sentinel://localhost:26379"),
    ("WEBSOCKET_GROUPS_URL", "redis-sentinel://localhost:x/mymaster"),
    ("WEBSOCKET_GROUPS_URL", "redis-cluster://"),
    ("WEBSOCKET_GROUPS_URL", "redis-cluster://localhost:7000/1"),
    # An option redis-py does not know (a typo): the check passed, then every connection
    # raised TypeError: each send a 500, the reader a traceback at every attempt.
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?socket_timout=1"),
    ("WEBSOCKET_GROUPS_URL", "redis-sentinel://localhost:26379/mymaster?socket_timout=1"),
    # Options a Cluster's client does not take were dropped without a word: ssl=true
    # connected in plain text.
    ("WEBSOCKET_GROUPS_URL", "redis-cluster://localhost:7000?ssl=true"),
    ("WEBSOCKET_GROUPS_URL", "redis-cluster://localhost:7000?health_check_interval=5"),
    # Seconds socket.settimeout() or the pool's wait cannot take, a negative pool size: the
    # check passed, then each connection raised ValueError or OverflowError out of every
    # groups.send, fail_silently or not (test_a_groups_url_option_redis_py_cannot_use).
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?socket_timeout=-1"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?socket_connect_timeout=nan"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?socket_timeout=1e12"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?timeout=-1"),
    ("WEBSOCKET_GROUPS_URL", "redis://localhost:6379/0?max_connections=-1"),
    ("WEBSOCKET_GROUPS_URL", "redis-sentinel://localhost:26379/mymaster?socket_timeout=inf"),
    ("WEBSOCKET_GROUPS_URL", "redis-cluster://localhost:7000?socket_connect_timeout=-5"),
    ("WEBSOCKET_MAX_CONNECTIONS", -1),
    ("WEBSOCKET_ASGI_THREADS", -1),
    ("WEBSOCKET_GROUPS_HISTORY", ["chat.*"]),
    ("WEBSOCKET_GROUPS_HISTORY", {"chat.*": {"size": 10, "ttl": 60, "maxlen": 5}}),
    # Past what Redis takes (a 64-bit count of ms, a 64-bit MAXLEN): each of the group's
    # messages failed, taken for Redis unreachable; inf raised OverflowError at each send.
    ("WEBSOCKET_GROUPS_HISTORY", {"chat.*": {"size": 10, "ttl": float("inf")}}),
    ("WEBSOCKET_GROUPS_HISTORY", {"chat.*": {"size": 10, "ttl": 1e16}}),
    ("WEBSOCKET_GROUPS_HISTORY", {"chat.*": {"size": 2**63, "ttl": 60}}),
    # Longer than poll() (2**31 - 1 ms) or threading can wait in one call, larger than a
    # frame length (63 bits) and the core's C limits: each raised OverflowError in every
    # session, a 500 (test_the_largest_values_accepted_run_a_session shows the edge).
    ("WEBSOCKET_PING_INTERVAL", 30 * 24 * 3600),
    ("WEBSOCKET_PING_TIMEOUT", 1e10),
    ("WEBSOCKET_CLOSE_TIMEOUT", 1e10),
    ("WEBSOCKET_SESSION_CHECK_INTERVAL", 1e10),
    ("WEBSOCKET_PRESENCE_HEARTBEAT", 1e10),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", 2**63 - 1),
    ("WEBSOCKET_MAX_FRAME_SIZE", 2**63),
    ("WEBSOCKET_SEND_QUEUE_SIZE", 2**64),
    # A lazy number passes isinstance() (it proxies __class__) but does no arithmetic: the
    # check said nothing for a size (each session then a TypeError) and crashed for seconds.
    ("WEBSOCKET_MAX_MESSAGE_SIZE", SimpleLazyObject(lambda: 1000)),
    ("WEBSOCKET_MAX_CONNECTIONS", SimpleLazyObject(lambda: 5)),
    ("WEBSOCKET_PING_INTERVAL", SimpleLazyObject(lambda: 5)),
    ("WEBSOCKET_GROUPS_HISTORY", {"chat.*": {"size": 10, "ttl": SimpleLazyObject(lambda: 60)}}),
]

#: Values that are right, with what the property returns for them.
RIGHT: list[tuple[str, object, object]] = [
    ("WEBSOCKET_ACCEPT_ALL", True, True),
    ("WEBSOCKET_FACTORY_CLASS", conf.DEFAULT_FACTORY, conf.DEFAULT_FACTORY),
    ("WEBSOCKET_ALLOWED_ORIGINS", ["*"], ["*"]),
    ("WEBSOCKET_COMPRESSION", False, False),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", None, None),
    ("WEBSOCKET_MAX_FRAME_SIZE", 65536, 65536),
    ("WEBSOCKET_PING_INTERVAL", 5, 5.0),  # an int is fine, and read as a float
    ("WEBSOCKET_PING_TIMEOUT", None, None),
    ("WEBSOCKET_CLOSE_TIMEOUT", 0, 0.0),
    ("WEBSOCKET_SEND_QUEUE_SIZE", 1, 1),
    ("WEBSOCKET_GROUPS_URL", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("WEBSOCKET_MAX_CONNECTIONS", 0, 0),
    ("WEBSOCKET_MAX_CONNECTIONS_PER_IP", None, None),
    ("WEBSOCKET_GROUPS_HISTORY", {"a": {"size": 1, "ttl": 0.5}}, {"a": {"size": 1, "ttl": 0.5}}),
    ("WEBSOCKET_METRICS", False, False),
    ("WEBSOCKET_REVOKE_SESSIONS", False, False),
    ("WEBSOCKET_SESSION_CHECK_INTERVAL", None, None),
    ("WEBSOCKET_PRESENCE_HEARTBEAT", 1, 1.0),
    ("WEBSOCKET_ASGI_THREADS", None, None),
]


def dwebsocket_errors() -> set[str]:
    return {
        str(message.id)
        for message in checks.run_checks()
        if str(message.id).startswith("dwebsocket.E")
    }


def test_every_setting_has_a_wrong_value_here() -> None:
    assert set(WRONG) == set(SETTINGS)
    assert {name for name, _, _ in RIGHT} == set(SETTINGS)


def test_each_setting_has_its_own_check_id() -> None:
    ids = [setting.check_id for setting in SETTINGS.values()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"dwebsocket\.E0\d\d", check_id) for check_id in ids)


def test_defaults_pass_the_checks() -> None:
    assert dwebsocket_errors() == set()


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_wrong_value_fails_manage_py_check_with_its_id(name: str) -> None:
    check_id = SETTINGS[name].check_id
    with override_settings(**{name: WRONG[name]}):
        assert dwebsocket_errors() == {check_id}
        with pytest.raises(SystemCheckError, match=re.escape(check_id)):
            call_command("check")


@pytest.mark.parametrize(("name", "value"), MORE_WRONG)
def test_more_wrong_values(name: str, value: object) -> None:
    with override_settings(**{name: value}):
        assert dwebsocket_errors() == {SETTINGS[name].check_id}


@pytest.mark.parametrize(
    "name", ["WEBSOCKET_CLOSE_TIMEOUT", "WEBSOCKET_PING_INTERVAL", "WEBSOCKET_PRESENCE_HEARTBEAT"]
)
def test_a_number_of_seconds_too_large_for_a_float(name: str) -> None:
    """An int past the largest float: math.isfinite() raised OverflowError, so the check
    crashed ``manage.py check`` and each handshake that read the setting got a 500."""
    with override_settings(**{name: 2**1024}):
        assert dwebsocket_errors() == {SETTINGS[name].check_id}
        with pytest.raises(InvalidSetting):
            SETTINGS[name].read()


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret@localhost:notaport/0", "redis://u:s3cret@[::1/0", "mysql://u:s3cret@h/db"],
)
def test_a_groups_urls_password_stays_out_of_the_check(url: str) -> None:
    with override_settings(WEBSOCKET_GROUPS_URL=url):
        [error] = [m for m in checks.run_checks() if m.id == "dwebsocket.E020"]
    assert "WEBSOCKET_GROUPS_URL" in error.msg and "s3cret" not in error.msg


@pytest.mark.parametrize(
    ("url", "form"),
    [
        ("redis://localhost:notaport/0", "redis://host:port/db"),
        ("redis-sentinel://localhost:26379", "redis-sentinel://host:port[,host:port...]/"),
        ("redis-cluster://localhost", "redis-cluster://host:port[,host:port...]"),
    ],
)
def test_a_groups_url_problem_says_what_the_setting_takes(url: str, form: str) -> None:
    with override_settings(WEBSOCKET_GROUPS_URL=url):
        [error] = [m for m in checks.run_checks() if m.id == "dwebsocket.E020"]
    assert error.msg.startswith(f"WEBSOCKET_GROUPS_URL {url!r}: ") and form in error.msg


@pytest.mark.parametrize(
    "option",
    [
        "socket_timeout=-1",
        "socket_connect_timeout=nan",
        "socket_timeout=1e12",
        "timeout=-1",
        "socket_timeout=0",
        "socket_connect_timeout=0",
    ],
)
def test_a_groups_url_option_redis_py_cannot_use(redis_url: str, option: str) -> None:
    """A URL option of seconds that redis-py gives socket.settimeout() or the pool's wait
    as it is, through a real redis-server: the check passed, and every groups.send raised
    the ValueError or OverflowError of each new connection (fail_silently only covers an
    unreachable Redis), so each view that sent failed with a traceback. A socket timeout
    of 0 makes the socket non-blocking: every connection failed (EINPROGRESS), or every
    reply not there at once (EAGAIN), an outage for as long as the process ran. Now E020
    says so, and the layer is refused as for any URL it cannot read."""
    from dwebsocket import groups

    with override_settings(WEBSOCKET_GROUPS_URL=f"{redis_url}?{option}"):
        assert dwebsocket_errors() == {"dwebsocket.E020"}
        groups.reset()
        try:
            with pytest.raises(InvalidSetting, match=r"dwebsocket\.E020"):
                groups.send("room", "hello")
        finally:
            groups.reset()


def test_a_redis_url_without_redis_py_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the check passed, and a session failed at its first join (a signed-in
    user's at its accept) with ImproperlyConfigured."""
    import dwebsocket.groups

    monkeypatch.delattr(dwebsocket.groups, "topology", raising=False)
    monkeypatch.setitem(sys.modules, "dwebsocket.groups.topology", None)  # import fails
    with override_settings(WEBSOCKET_GROUPS_URL="redis://localhost:6379/0"):
        [error] = [m for m in checks.run_checks() if m.id == "dwebsocket.E020"]
    assert "redis-py is not installed" in error.msg


@pytest.mark.parametrize(("name", "value", "read"), RIGHT)
def test_right_values_pass_and_read_as_their_type(name: str, value: object, read: object) -> None:
    with override_settings(**{name: value}):
        assert dwebsocket_errors() == set()
        got = getattr(settings, name)
        assert got == read and type(got) is type(read)


@pytest.mark.parametrize("name", sorted(set(WRONG) - {"WEBSOCKET_ALLOWED_ORIGINS"}))
def test_reading_a_wrong_value_raises_invalid_setting(name: str) -> None:
    with override_settings(**{name: WRONG[name]}), pytest.raises(InvalidSetting) as raised:
        if name == "WEBSOCKET_FACTORY_CLASS":
            from dwebsocket.factory import get_factory_class

            get_factory_class()
        elif name == "WEBSOCKET_GROUPS_URL":
            from dwebsocket import groups

            groups.send("room", "x")
        else:
            getattr(settings, name)
    assert raised.value.setting == name
    assert raised.value.check_id == SETTINGS[name].check_id
    assert name in str(raised.value) and SETTINGS[name].check_id in str(raised.value)


@pytest.mark.urls("tests.urls")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBSOCKET_PING_INTERVAL", conf.MAX_SECONDS),
        ("WEBSOCKET_PING_TIMEOUT", conf.MAX_SECONDS),
        ("WEBSOCKET_CLOSE_TIMEOUT", conf.MAX_SECONDS),
        ("WEBSOCKET_MAX_MESSAGE_SIZE", conf.MAX_SIZE),
        ("WEBSOCKET_MAX_FRAME_SIZE", conf.MAX_SIZE),
        ("WEBSOCKET_SEND_QUEUE_SIZE", conf.MAX_SIZE),
    ],
)
@pytest.mark.parametrize("compression", [True, False])
def test_the_largest_values_accepted_run_a_session(
    name: str, value: object, compression: bool
) -> None:
    """What the check accepts works at runtime, on the default backend (its poll() waits,
    the protocol core's C scanner, permessage-deflate's output bound)."""
    from dwebsocket.testing import WebSocketClient

    with override_settings(**{name: value}):
        assert dwebsocket_errors() == set()
        with WebSocketClient("/echo-wait/", compression=compression, timeout=5) as ws:
            ws.send("x" * 100_000)
            assert ws.receive() == "x" * 100_000
    assert ws.close_code == 1000


def test_overrides_are_seen_at_once() -> None:
    """Nothing is cached."""
    assert settings.WEBSOCKET_MAX_MESSAGE_SIZE == 1024 * 1024
    with override_settings(WEBSOCKET_MAX_MESSAGE_SIZE=10):
        assert settings.WEBSOCKET_MAX_MESSAGE_SIZE == 10
    assert settings.WEBSOCKET_MAX_MESSAGE_SIZE == 1024 * 1024


# -- at runtime: a handshake that meets a wrong setting is refused with 503 ---------------

CALLED: list[str] = []


@require_websocket
def view(request: HttpRequest) -> None:
    CALLED.append(request.path)
    request.websocket.send("hello")


def plain(request: HttpRequest) -> None:
    CALLED.append(request.path)


urlpatterns = [path("ws/", view), path("plain/", plain)]

#: The settings a handshake reads (the others: in the middleware, or in a session).
READ_AT_HANDSHAKE = [
    "WEBSOCKET_FACTORY_CLASS",
    "WEBSOCKET_COMPRESSION",
    "WEBSOCKET_MAX_MESSAGE_SIZE",
    "WEBSOCKET_MAX_FRAME_SIZE",
    "WEBSOCKET_PING_INTERVAL",
    "WEBSOCKET_PING_TIMEOUT",
    "WEBSOCKET_CLOSE_TIMEOUT",
    "WEBSOCKET_SEND_QUEUE_SIZE",
    "WEBSOCKET_MAX_CONNECTIONS",
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP",
    # Read again at each join and send; a handshake reads them first so that a wrong one
    # refuses it rather than failing its view (500, or 1011 once accepted) with a traceback.
    "WEBSOCKET_GROUPS_URL",
    "WEBSOCKET_GROUPS_HISTORY",
]


@pytest.fixture
def fresh_log() -> Iterator[None]:
    CALLED.clear()
    handshake._invalid_settings_logged.clear()
    yield
    handshake._invalid_settings_logged.clear()


@pytest.mark.usefixtures("fresh_log")
@pytest.mark.parametrize(
    ("name", "value"),
    [(name, WRONG[name]) for name in READ_AT_HANDSHAKE]
    + [("WEBSOCKET_GROUPS_URL", "redis://:s3cret@localhost:notaport/0")],
)
def test_a_handshake_meeting_a_wrong_setting_gets_503(
    name: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    server_sock, client_sock = socket.socketpair()

    def handshake_request() -> HttpRequest:
        return RequestFactory().get(
            "/ws/",
            headers=upgrade_headers("dGhlIHNhbXBsZSBub25jZQ=="),
            **{"dwebsocket.socket": server_sock},
        )

    with (
        server_sock,
        client_sock,
        override_settings(**{name: value}),
        caplog.at_level(logging.INFO, logger="dwebsocket"),
    ):
        response = view(handshake_request())
        assert view(handshake_request()).status_code == 503  # logged at INFO only
    assert response.status_code == 503
    assert b"misconfigured" in response.content and name.encode() not in response.content
    assert CALLED == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    [error] = errors
    assert name in error and SETTINGS[name].check_id in error
    assert "s3cret" not in caplog.text  # a URL's password is no one's business in a log


@pytest.mark.usefixtures("fresh_log")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBSOCKET_GROUPS_URL", "redis://localhost:notaport/0"),
        ("WEBSOCKET_GROUPS_HISTORY", WRONG["WEBSOCKET_GROUPS_HISTORY"]),
    ],
)
def test_an_async_views_handshake_meeting_a_wrong_groups_setting_gets_503(
    name: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ASGI, for an ``async def`` view, driven in-process: it was accepted and
    failed at its first join or send."""
    from dwebsocket.asgi import get_asgi_application

    application = get_asgi_application()

    async def handshake() -> list[tuple[str, object]]:
        inbox: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        inbox.put_nowait({"type": "websocket.connect"})
        sent: list[tuple[str, object]] = []

        async def send(event: Mapping[str, object]) -> None:
            sent.append((str(event["type"]), event.get("status")))
            if event["type"] == "websocket.accept":  # (before) the client leaves at once
                inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

        scope = {
            "type": "websocket",
            "path": "/echo/",
            "raw_path": b"/echo/",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 40000),
            "asgi": {"version": "3.0"},
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }
        await asyncio.wait_for(application(scope, inbox.get, send), 5)
        return sent

    # In a thread of its own: a session's Playwright (the browser tests) keeps an event
    # loop running in this one, where asyncio.run() refuses to start another.
    with (
        override_settings(ROOT_URLCONF="tests.asgi.async_urls", **{name: value}),
        caplog.at_level(logging.ERROR, logger="dwebsocket"),
        ThreadPoolExecutor(1) as pool,
    ):
        sent = pool.submit(asyncio.run, handshake()).result(TIMEOUT)
    assert sent == [("websocket.http.response.start", 503), ("websocket.http.response.body", None)]
    [error] = [r.getMessage() for r in caplog.records if r.name == "dwebsocket"]
    assert name in error and SETTINGS[name].check_id in error


@pytest.mark.usefixtures("fresh_log")
@override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["dwebsocket.middleware.WebSocketMiddleware"],
    WEBSOCKET_ACCEPT_ALL="yes",
)
def test_the_middleware_meeting_a_wrong_accept_all_gets_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="dwebsocket"):
        response = Client().get("/plain/", headers=upgrade_headers("dGhlIHNhbXBsZSBub25jZQ=="))
    assert response.status_code == 503
    assert CALLED == []
    [error] = [r for r in caplog.records if r.name == "dwebsocket"]
    assert "WEBSOCKET_ACCEPT_ALL" in error.getMessage() and "dwebsocket.E011" in error.getMessage()


# -- documented ------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["README.rst", "docs/settings.rst"])
def test_every_setting_is_documented(doc: str) -> None:
    text = (REPO / doc).read_text()
    missing = [name for name in SETTINGS if f"``{name}``" not in text]
    assert missing == []


def test_every_check_id_is_in_the_settings_and_deployment_docs() -> None:
    settings_doc = (REPO / "docs/settings.rst").read_text()
    deployment = (REPO / "docs/deployment.rst").read_text()
    for setting in SETTINGS.values():
        assert f"``{setting.check_id}``" in settings_doc, setting.name
        row = deployment.split(f"``{setting.check_id}``", 1)
        assert len(row) == 2, setting.check_id
        assert f"``{setting.name}``" in row[1].split("* - ``dwebsocket.", 1)[0], setting.name


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0?health_check_interval=5&max_connections=3&timeout=2",
        "rediss://localhost:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false",
        "unix:///run/redis.sock?db=1&socket_timeout=1",
        "redis-sentinel://localhost:26379/mymaster?ssl=true&ssl_cert_reqs=none&db=1",
        "redis-sentinel://localhost:26379/mymaster?sentinel_password=x&socket_timeout=1",
        "redis-cluster://:pw@localhost:7000?socket_timeout=1&socket_connect_timeout=1",
    ],
)
def test_a_groups_url_with_options_the_layer_uses_passes_the_check(url: str) -> None:
    with override_settings(WEBSOCKET_GROUPS_URL=url):
        assert "dwebsocket.E020" not in dwebsocket_errors()
