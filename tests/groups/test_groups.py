"""``dwebsocket.groups`` in one process, with real WebSockets (``dwebsocket.testing`` runs
the views of ``tests/groups/views.py`` over a socket pair with the default backend)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from dwebsocket import groups
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.groups.memory import MemoryLayer, Registry
from dwebsocket.groups.redis import RedisLayer
from dwebsocket.signals import websocket_closed
from dwebsocket.testing import WebSocketClient
from tests.groups.redis_cluster import RedisCluster, running
from tests.groups.redis_server import RedisServer
from tests.groups.test_redis_layer import Inbox


@pytest.fixture(autouse=True)
def fresh_groups() -> Iterator[None]:
    groups.reset()
    yield
    groups.reset()


@contextlib.contextmanager
def member(group: str, query: str = "") -> Iterator[WebSocketClient]:
    """A client of ``/group/<group>/`` once its view has joined; closed on exit."""
    with WebSocketClient(f"/group/{group}/{query}", timeout=10) as ws:
        assert ws.receive() == "joined"
        yield ws


def test_send_reaches_every_member_text_and_binary() -> None:
    with member("room") as one, member("room") as two, member("other") as three:
        assert isinstance(groups.get_layer(), MemoryLayer)
        groups.send("room", "text")
        groups.send("room", b"\x00binary")
        groups.send("room", bytearray(b"ba"))
        groups.send("room", memoryview(b"mv"))
        for ws in (one, two):
            assert [ws.receive() for _ in range(4)] == ["text", b"\x00binary", b"ba", b"mv"]
        with pytest.raises(TimeoutError):
            three.receive(timeout=0.2)


@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_text_utf8_cannot_encode_is_refused_and_the_members_stay(
    url: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate (what ``json.loads`` makes of ``"\\ud800"`` in a client's JSON)
    cannot be sent as UTF-8: ``groups.send`` raises, as ``ws.send`` would, and no member
    gets it. In-process, each member's delivery used to raise instead: every member of
    the group was dropped from it, with an ERROR each, and got nothing more."""
    if url == "redis":
        url = request.getfixturevalue("redis_server").url
    with override_settings(WEBSOCKET_GROUPS_URL=url), member("room") as one, member("room") as two:
        with caplog.at_level(logging.ERROR, logger="dwebsocket"), pytest.raises(UnicodeEncodeError):
            groups.send("room", "caf\u00e9 \ud800")
        assert caplog.records == []
        groups.send("room", "caf\u00e9 after")
        assert one.receive() == two.receive() == "caf\u00e9 after"


@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_a_message_over_the_ceiling_is_refused_at_the_sender(
    url: str, request: pytest.FixtureRequest
) -> None:
    """``groups.send`` refuses a message over ``MAX_MESSAGE_SIZE`` (UTF-8 bytes for text)
    with ``ValueError``, the same on every layer; the ceiling itself goes through, and
    the subscription with it. (Over Redis's pub/sub output-buffer limit, 32 MB, a message
    made Redis disconnect every process's subscriber: no member anywhere got it, nor
    what others sent until each reader was back, and the sender was told nothing.)"""
    server = request.getfixturevalue("redis_server") if url == "redis" else None
    with override_settings(WEBSOCKET_GROUPS_URL=server.url if server else url):
        here = Inbox()
        groups.join("room", here)
        subscribers = server.command("CLIENT", "LIST", "TYPE", "pubsub") if server else b""
        limit = groups.MAX_MESSAGE_SIZE
        with pytest.raises(ValueError, match="MAX_MESSAGE_SIZE"):
            groups.send("room", b"x" * (limit + 1))
        with pytest.raises(ValueError, match="MAX_MESSAGE_SIZE"):
            groups.send("room", "\u00e9" * (limit // 2 + 1))  # fewer characters, more bytes
        groups.send("room", memoryview(b"y" * limit))
        groups.send("room", "after")
        assert here.get() == b"y" * limit
        assert here.get() == "after"
        here.assert_empty()
        if server:  # the same subscription connection all along
            ids = [line.split()[0] for line in subscribers.splitlines()[1:] if b"id=" in line]
            now = server.command("CLIENT", "LIST", "TYPE", "pubsub")
            assert ids and all(client_id in now for client_id in ids)


def test_a_member_forwarding_to_its_group() -> None:
    with member("room") as one, member("room") as two:
        one.send("from one")
        assert one.receive() == two.receive() == "from one"


def test_members_and_leave_on_close() -> None:
    with member("room") as one, member("room") as two:
        sockets = groups.members("room")
        assert len(sockets) == 2
        assert all(ws.is_closed() is False for ws in sockets)
        assert one.request is not None
        assert sockets[0] is one.request.websocket  # type: ignore[attr-defined]
        one.close()
        assert groups.members("room") == [two.request.websocket]  # type: ignore[union-attr]
    assert groups.members("room") == []


def test_join_leave_on_the_websocket() -> None:
    with member("room") as one:
        ws = one.request.websocket  # type: ignore[union-attr]
        ws.join("extra")
        ws.join("extra")  # twice is once
        groups.send("extra", "x")
        assert one.receive() == "x"
        ws.leave("extra")
        ws.leave("extra")  # not a member: no error
        groups.send("extra", "not for you")
        groups.send("room", "but this")
        assert one.receive() == "but this"
        assert groups.members("extra") == []


def test_a_closed_member_is_dropped_even_without_the_signal() -> None:
    with member("room") as one, member("room") as two:
        websocket_closed.disconnect(dispatch_uid="dwebsocket.groups")  # the signal is missed
        try:
            one.close()
            assert len(groups.members("room")) == 2  # nobody told the registry
            groups.send("room", "after")
            assert two.receive() == "after"
            assert groups.members("room") == [two.request.websocket]  # type: ignore[union-attr]
        finally:
            websocket_closed.connect(
                groups._on_closed, weak=False, dispatch_uid="dwebsocket.groups"
            )


def test_a_closed_websocket_does_not_join() -> None:
    with member("room") as one:
        ws = one.request.websocket  # type: ignore[union-attr]
        one.close()
        assert ws.is_closed()
        ws.join("late")
        assert groups.members("late") == []


def test_argument_errors() -> None:
    with pytest.raises(TypeError):
        groups.send("room", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        groups.send(b"room", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        groups.send("", "x")
    with pytest.raises(ValueError):
        groups.members("")
    with pytest.raises(ValueError):
        groups.join("", Inbox())
    with pytest.raises(ValueError):
        groups.leave("", Inbox())


@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_a_group_name_utf8_cannot_encode_is_refused_and_the_other_groups_stay(
    url: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A group name with a lone surrogate (what ``json.loads`` makes of ``"\\ud800"`` in a
    client's JSON, which a view may make a group name of) is refused with ``ValueError``
    on every layer, as an empty one is. On Redis it was taken: its channel name could not
    be encoded, so the reader failed at each SUBSCRIBE (an ERROR and a traceback every
    ~80 ms) and every group of the process was cut off from the other processes."""
    server = request.getfixturevalue("redis_server") if url == "redis" else None
    bad = "room \ud800"
    with override_settings(WEBSOCKET_GROUPS_URL=server.url if server else url):
        here = Inbox()
        groups.join("room", here)
        with caplog.at_level(logging.ERROR, logger="dwebsocket"):
            for call in (
                lambda: groups.join(bad, Inbox()),
                lambda: groups.send(bad, "x"),
                lambda: groups.leave(bad, here),
                lambda: groups.members(bad),
                lambda: groups.presence(bad),
            ):
                with pytest.raises(ValueError, match="UTF-8"):
                    call()
            if server is None:
                groups.send("room", "after")
            else:
                other = RedisLayer(server.url, Registry())  # another process
                try:
                    other.send("room", "after")
                finally:
                    other.close()
            assert here.get() == "after"
        assert caplog.records == []


@pytest.mark.parametrize(
    "url", ["memory://", "redis", pytest.param("cluster", marks=pytest.mark.server)]
)
def test_a_group_name_beginning_with_a_closing_brace_is_refused(
    url: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A group's Redis keys and channel carry its name as a Redis Cluster hash tag,
    ``{name}``: a name that begins with ``}`` makes the tag empty, and its channel and
    keys hash to different slots. On a Cluster each send to it that keeps history failed
    ("non local key"), was logged as Redis unreachable and held back this process's
    sends to every group of that shard for the backoff; presence raised
    ``RedisClusterException`` (a view's 500). Refused on every layer, so that a name
    does not work in development and fail on the Cluster."""
    with contextlib.ExitStack() as stack:
        if url == "redis":
            url = request.getfixturevalue("redis_server").url
        elif url == "cluster":
            url = stack.enter_context(running(RedisCluster())).url
        stack.callback(groups.reset)  # before the cluster stops
        everything = {"*": {"size": 10, "ttl": 60}}
        with override_settings(WEBSOCKET_GROUPS_URL=url, WEBSOCKET_GROUPS_HISTORY=everything):
            with caplog.at_level(logging.WARNING, logger="dwebsocket"):
                for call in (
                    lambda: groups.join("}x", Inbox(), presence={}),
                    lambda: groups.send("}x", "x"),
                    lambda: groups.presence("}x"),
                ):
                    with pytest.raises(ValueError, match="begin"):
                        call()
                here = Inbox()
                groups.join("room}", here)  # a brace elsewhere is a name like any other
                assert groups.send("room}", "after") is not None
                assert here.get() == "after"
            assert caplog.records == []


@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_a_present_socket_joining_again_is_no_new_join(
    url: str, request: pytest.FixtureRequest
) -> None:
    """Joining twice is harmless, with ``presence=`` too: the socket was present already,
    so its user did not join, and the listeners get no second join event (the Redis
    layer's script says so: the entry existed). In-process, each join of a user's only
    socket was announced as the user's join."""
    server = request.getfixturevalue("redis_server") if url == "redis" else None
    with override_settings(WEBSOCKET_GROUPS_URL=server.url if server else url):
        listener, here = Inbox(), Inbox()
        groups.join("room", listener, events=True)
        groups.join("room", here, presence={"tab": 1})
        assert json.loads(listener.get())["presence"] == "join"
        groups.join("room", here, presence={"tab": 2})
        assert [p.info for p in groups.presence("room")] == [{"tab": 2}]
        groups.leave("room", here)
        assert json.loads(listener.get())["presence"] == "leave"
        listener.assert_empty()
        assert groups.presence("room") == []


@pytest.mark.parametrize("url", ["mysql://x", "memory", "http://localhost/"])
def test_unknown_layer(url: str) -> None:
    with override_settings(WEBSOCKET_GROUPS_URL=url), pytest.raises(InvalidSetting) as bad:
        groups.send("room", "x")
    assert bad.value.check_id == "dwebsocket.E020"


def test_layer_follows_the_setting_and_keeps_members(redis_server: RedisServer) -> None:
    inbox = Inbox()
    groups.join("room", inbox)
    assert isinstance(groups.get_layer(), MemoryLayer)
    with override_settings(WEBSOCKET_GROUPS_URL=redis_server.url):
        layer = groups.get_layer()
        assert isinstance(layer, RedisLayer)
        assert groups.get_layer() is layer
        other = RedisLayer(redis_server.url, Registry())  # another process
        try:
            deadline = 100
            while "room" not in layer.subscriber.subscribed and deadline:
                deadline -= 1
                inbox.assert_empty(0.05)
            other.send("room", "across")
            assert inbox.get() == "across"
        finally:
            other.close()
    assert isinstance(groups.get_layer(), MemoryLayer)
    assert layer.subscriber._stopping  # the Redis layer was closed
    groups.send("room", "local again")
    assert inbox.get() == "local again"


def test_a_forked_child_starts_empty() -> None:
    groups.join("room", Inbox())
    assert len(groups.members("room")) == 1
    groups._pid = -1  # as seen from a child process after fork()
    assert groups.members("room") == []


def test_deliver_raising_drops_only_that_member(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Inbox):
        def deliver(self, message: str | bytes) -> None:
            raise RuntimeError("broken backend")

    broken, fine = Broken(), Inbox()
    groups.join("room", broken)
    groups.join("room", fine)
    with caplog.at_level(logging.ERROR, logger="dwebsocket.groups"):
        groups.send("room", "one")
    assert fine.get() == "one"
    assert groups.members("room") == [fine]
    assert "deliver() raised" in caplog.text


def test_registry_sweeps_closed_members_of_a_quiet_group() -> None:
    """Sockets that closed without the signal never pile up, even if nobody sends."""
    registry = Registry()
    for _ in range(1000):
        gone = Inbox()
        registry.add("quiet", gone)
        gone.closed = True
    assert len(registry.members("quiet")) < 64
    assert registry.groups_of(gone) <= {"quiet"}


def test_the_sweep_drops_the_followers_of_closed_members_too() -> None:
    """In a group that keeps history each member has a follower, which holds it: the
    sweep of closed members left their followers, so every socket that closed without
    the signal stayed in memory, with its buffers, for as long as the process ran."""
    with override_settings(WEBSOCKET_GROUPS_HISTORY={"quiet": {"size": 10, "ttl": 60}}):
        for _ in range(1000):
            gone = Inbox()
            groups.join("quiet", gone)
            gone.closed = True
        assert len(groups.members("quiet")) < 64
        followers = groups._registry.followers.get("quiet")
        assert followers is not None and len(followers) < 64


def test_registry_bookkeeping() -> None:
    registry = Registry()
    a, b = Inbox(), Inbox()
    assert registry.add("g", a) is True
    assert registry.add("g", b) is False
    assert registry.add("h", a) is True
    assert registry.groups_of(a) == {"g", "h"}
    assert registry.remove("g", a) is False
    assert registry.remove("g", a) is False
    assert sorted(registry.remove_all(a)) == ["h"]
    assert registry.remove_all(a) == []
    assert registry.remove("g", b) is True
    assert registry.groups() == []


# -- manage.py websocket_send, in process ----------------------------------------------


def test_command_in_process(redis_server: RedisServer) -> None:
    with override_settings(WEBSOCKET_GROUPS_URL=redis_server.url), member("room") as ws:
        out = io.StringIO()
        call_command("websocket_send", "room", "hello", stdout=out)
        assert ws.receive() == "hello"
        assert "Sent 1 message(s) to group 'room'." in out.getvalue()


def test_command_binary_file_and_stdin(
    redis_server: RedisServer, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob"  # type: ignore[operator]
    path.write_bytes(b"\x00\x01\x02")
    with override_settings(WEBSOCKET_GROUPS_URL=redis_server.url), member("room") as ws:
        call_command("websocket_send", "room", "--binary-file", str(path), verbosity=0)
        assert ws.receive() == b"\x00\x01\x02"
        monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\r\n\nthree"))
        call_command("websocket_send", "room", "-", verbosity=0)
        assert [ws.receive() for _ in range(4)] == ["one", "two", "", "three"]


def test_command_refuses_a_file_over_the_ceiling(
    redis_server: RedisServer, tmp_path: pytest.TempPathFactory
) -> None:
    path = tmp_path / "blob"  # type: ignore[operator]
    path.write_bytes(b"x" * (groups.MAX_MESSAGE_SIZE + 1))
    with (
        override_settings(WEBSOCKET_GROUPS_URL=redis_server.url),
        pytest.raises(CommandError, match="MAX_MESSAGE_SIZE"),
    ):
        call_command("websocket_send", "room", "--binary-file", str(path), verbosity=0)


def test_command_refuses_the_memory_layer() -> None:
    with pytest.raises(CommandError, match="memory://"):
        call_command("websocket_send", "room", "hello")
