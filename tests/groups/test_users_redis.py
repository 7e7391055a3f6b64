"""``dwebsocket.users`` on the Redis layer when Redis is unreachable: the same as
``groups.send`` -- this process's sockets still get the message (and the command), one
WARNING per outage, nothing raised."""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings

from dwebsocket import groups, users
from dwebsocket.groups import control
from dwebsocket.groups.redis import RedisLayer
from tests.groups.redis_server import RedisServer
from tests.groups.test_presence_cluster import layers  # noqa: F401 - the fixture
from tests.groups.test_redis_layer import Inbox, until


class Closable(Inbox):
    """An inbox that also records ``close()`` (what ``users.disconnect`` calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes: queue.Queue[tuple[int, str]] = queue.Queue()

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.put((code, reason))
        self.closed = True


@pytest.fixture
def on_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    with override_settings(WEBSOCKET_GROUPS_URL=redis_server.url + "?socket_timeout=1"):
        yield redis_server
        groups.reset()


def test_unreachable_redis_still_reaches_this_process(
    on_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    tab = Closable()
    groups._join_own(users.user_group(7), tab)
    users.send(7, "before")
    assert tab.get() == "before"

    on_redis.stop()
    with caplog.at_level(logging.WARNING, logger="dwebsocket.groups"):
        users.send(7, "during")
        users.send("7", b"again")
        assert [tab.get(), tab.get()] == ["during", b"again"]
        users.disconnect(7, code=4003, reason="bye")
        assert tab.closes.get(timeout=10) == (4003, "bye")
        # The reader may have found the outage first (its connection closed too): it sets
        # ``outage`` first and logs after, so its WARNING may come after all the above.
        until(lambda: any(r.name == "dwebsocket.groups" for r in caplog.records))
    outage = [r for r in caplog.records if r.name == "dwebsocket.groups"]
    assert len(outage) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_commands_are_remembered_for_a_while(
    url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``users`` reads for a socket that joined its groups after a command was sent:
    the commands of the last ``control.MEMORY`` seconds (here 0.5), in order, with their
    age; none later."""
    if url == "redis":
        url = request.getfixturevalue("redis_server").url
    monkeypatch.setattr(control, "MEMORY", 0.5)
    with override_settings(WEBSOCKET_GROUPS_URL=url):
        try:
            users.disconnect(7, code=4003, reason="bye")
            users.disconnect_session("abc")
            layer = groups.get_layer()
            found = layer.recent_controls(users.user_group(7), control.MEMORY)
            assert [json.loads(payload)["code"] for payload, _ in found] == [4003]
            assert 0 <= found[0][1] < control.MEMORY
            assert layer.recent_controls(users.user_group(8), control.MEMORY) == []
            [(payload, _)] = layer.recent_controls(users.session_group("abc"), control.MEMORY)
            assert json.loads(payload)["code"] == users.REVOKED
            time.sleep(control.MEMORY + 0.1)
            assert layer.recent_controls(users.user_group(7), control.MEMORY) == []
        finally:
            groups.reset()


def test_sockets_just_opened_read_their_groups_commands_in_one_round_trip(
    on_redis: RedisServer,
) -> None:
    """The check of sockets just opened reads the commands of all their groups (each
    one's user and session) in one round trip to Redis, however many: counted by the
    redis-server itself (its read events)."""
    import redis

    opened = {pk: Closable() for pk in (7, 8, 9)}
    again: dict[int, Closable] = {}
    started = time.monotonic() - 1.0  # their requests began a second ago
    users.disconnect(8, code=4003, reason="bye")  # landed while they opened
    layer = users.get_layer()
    layer.recent_controls(users.user_group(7), 1.0)  # Redis knows the script now
    admin = redis.Redis.from_url(on_redis.url)
    try:
        for pk, tab in opened.items():
            users._owners[id(tab)] = (tab, users._Owner(str(pk), f"key{pk}", started))

        def reads() -> int:
            return int(admin.info("stats")["total_reads_processed"])

        before = reads()
        info = reads() - before  # the INFO itself
        before = reads()
        users._checker._opening([(tab, float("inf")) for tab in opened.values()])
        trips = reads() - before - info
        assert opened[8].closes.get(timeout=10) == (4003, "bye")
        assert opened[7].closes.empty() and opened[9].closes.empty()
        assert trips == 1

        admin.script_flush()  # Redis restarted, say: the script is loaded again
        again = {pk: Closable() for pk in (7, 8)}
        for pk, tab in again.items():
            users._owners[id(tab)] = (tab, users._Owner(str(pk), f"key{pk}", started))
        users._checker._opening([(tab, float("inf")) for tab in again.values()])
        assert again[8].closes.get(timeout=10) == (4003, "bye")
        assert again[7].closes.empty()
    finally:
        admin.close()
        for tab in [*opened.values(), *again.values()]:
            users._owners.pop(id(tab), None)


@pytest.mark.server  # starts a cluster or Sentinels
def test_recent_controls_of_several_groups_on_a_cluster_and_on_sentinels(
    layers: Callable[[], RedisLayer],  # noqa: F811 - the fixture imported above
) -> None:
    """``recent_controls_many``: one call per group on a Cluster (the groups' slots are
    on several nodes), a pipeline behind Sentinels; the same answers."""
    one, two = layers(), layers()
    one.control(users.user_group(7), control.encode("check"))
    one.control(users.session_group("abc"), control.encode("close", code=4001, reason=""))
    names = [users.user_group(7), users.session_group("abc"), users.user_group(8)]
    (check,), (close,), none = two.recent_controls_many(names, control.MEMORY)
    assert json.loads(check[0]) == {"op": "check"}
    assert json.loads(close[0])["code"] == users.REVOKED
    assert none == []
    # control_many (clearsessions): one call per group on a Cluster, one script call
    # behind Sentinels; remembered and delivered everywhere alike.
    tabs = {key: Closable() for key in ("s1", "s2")}
    for key, tab in tabs.items():
        two.join(users.session_group(key), tab)
    groups_ = [users.session_group(key) for key in tabs]
    one.control_many(groups_, control.encode("close", code=4002, reason="gone"))
    for tab in tabs.values():
        assert tab.closes.get(timeout=10) == (4002, "gone")
    for found in two.recent_controls_many(groups_, control.MEMORY):
        assert found is not None and json.loads(found[-1][0])["code"] == 4002


def _expired_sessions(count: int, prefix: str) -> list[str]:
    """``count`` session rows past their expiry (bulk_create: no signal), their keys."""
    from datetime import timedelta

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    past = timezone.now() - timedelta(days=1)
    keys = [f"{prefix}{n:04d}".ljust(32, "x") for n in range(count)]
    Session.objects.bulk_create(
        Session(session_key=key, session_data="", expire_date=past) for key in keys
    )
    return keys


@pytest.mark.django_db(transaction=True)  # revoked once committed
def test_clearsessions_revokes_its_sessions_in_a_few_redis_commands(on_redis: RedisServer) -> None:
    """``clearsessions`` deletes the expired rows in one ``QuerySet.delete()``: each row's
    post_delete sent its own command, two Redis commands (remember, publish) and two
    round trips per session -- 20,000 for 10,000 expired sessions. Now one script call
    per 500 sessions does both, counted by the redis-server itself (INFO commandstats);
    the sockets of those sessions still close with 4001, the others stay open."""
    import redis
    from django.contrib.sessions.models import Session
    from django.core.management import call_command

    keys = _expired_sessions(300, "old")
    tabs = {key: Closable() for key in (keys[0], keys[-1], "livexxxxxxxxxxxxxxxxxxxxxxxxxxxx")}
    for key, tab in tabs.items():
        groups._join_own(users.session_group(key), tab)
    # Redis knows the script (the first call loads it), the pool has a connection.
    users._disconnect_sessions(["warm-up-1", "warm-up-2"], users.REVOKED, "")
    admin = redis.Redis.from_url(on_redis.url)
    try:
        admin.config_resetstat()
        call_command("clearsessions")
        calls = {k: v["calls"] for k, v in admin.info("commandstats").items()}
    finally:
        admin.close()
    assert not Session.objects.filter(session_key__in=keys).exists()
    for key in (keys[0], keys[-1]):
        assert tabs[key].closes.get(timeout=10) == (users.REVOKED, "session ended")
    assert tabs["livexxxxxxxxxxxxxxxxxxxxxxxxxxxx"].closes.empty()
    # Each session's command remembered and published (ZADD, PUBLISH: 300 each) by one
    # script call (one EVALSHA, one TIME), which the client sent 300 times and then
    # 300 PUBLISHes after them.
    assert calls.get("cmdstat_zadd") == calls.get("cmdstat_publish") == 300, calls
    assert calls.get("cmdstat_evalsha") == calls.get("cmdstat_time") == 1, calls


@pytest.mark.django_db(transaction=True)  # revoked once committed
@pytest.mark.parametrize("url", ["memory://", "redis"])
def test_a_session_deleted_alone_and_many_at_once_close_their_sockets(
    url: str, request: pytest.FixtureRequest
) -> None:
    """The same on both layers: ``session.flush()``'s delete of one row, a
    ``QuerySet.delete()`` of one row and of several."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    if url == "redis":
        url = request.getfixturevalue("redis_server").url + "?socket_timeout=1"
    with override_settings(WEBSOCKET_GROUPS_URL=url):
        try:
            store = SessionStore()
            store["x"] = 1
            store.save()
            one, many = _expired_sessions(1, "one"), _expired_sessions(3, "many")
            tabs = {key: Closable() for key in [store.session_key, *one, *many]}
            for key, tab in tabs.items():
                groups._join_own(users.session_group(key), tab)
            store.flush()
            Session.objects.filter(session_key__in=one).delete()
            Session.objects.filter(session_key__in=many).delete()
            for tab in tabs.values():
                assert tab.closes.get(timeout=10) == (users.REVOKED, "session ended")
        finally:
            groups.reset()


@pytest.mark.django_db(transaction=True)  # revoked once committed
def test_clearsessions_while_redis_is_away_closes_this_process_sockets_warning_once(
    on_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING for the whole delete, not one per session (10,000 lines for 10,000
    expired sessions); this process's sockets of those sessions close all the same."""
    from django.core.management import call_command

    keys = _expired_sessions(50, "away")
    tabs = [Closable() for _ in range(2)]
    for key, tab in zip((keys[0], keys[-1]), tabs, strict=True):
        groups._join_own(users.session_group(key), tab)
    on_redis.stop()
    with caplog.at_level(logging.WARNING, logger="dwebsocket.users"):
        call_command("clearsessions")
        for tab in tabs:
            assert tab.closes.get(timeout=10) == (users.REVOKED, "session ended")
    warnings = [r.getMessage() for r in caplog.records if r.name == "dwebsocket.users"]
    assert len(warnings) == 1, warnings
    assert "50 sessions" in warnings[0]


def test_a_command_sent_while_the_subscription_was_lost_is_carried_out(
    on_redis: RedisServer,
) -> None:
    """This process's subscription is lost (Redis closed it: a network blip, its pub/sub
    output buffer limit) while Redis stays up for the others: a ``users.disconnect`` in
    another process meanwhile was published to no one here. Once subscribed again, the
    socket is closed with the code given, as a socket that opened meanwhile would be
    (it left the socket open for good: a disconnect ends no session, so no check closes
    it). One opened after the command is left open."""
    import threading

    from dwebsocket.groups.memory import Registry

    here = groups.get_layer()
    assert isinstance(here, RedisLayer)
    other = RedisLayer(on_redis.url + "?socket_timeout=1", Registry())
    before, after = Closable(), Closable()
    release = threading.Event()
    connect = here.make_connection

    def held(address: str | None = None):  # type: ignore[no-untyped-def]
        assert release.wait(10)
        return connect(address)

    try:
        # Opened well before the command (a socket open when the blip came), and the
        # later one well after it: users closes a socket whose request began within the
        # read's time of a close (the clocks cannot tell those apart), and a read on a
        # loaded machine can take tens of milliseconds.
        opened = time.monotonic() - 1.0
        users._owners[id(before)] = (before, users._Owner("7", None, opened))
        groups._join_own(users.user_group(7), before)
        here.make_connection = held  # type: ignore[method-assign]
        on_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        deadline = time.monotonic() + 10
        while here.subscriber.connected:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        other.control(users.user_group(7), control.encode("close", code=4003, reason="bye"))
        time.sleep(0.5)  # the later socket opens after the command, surely
        users._owners[id(after)] = (after, users._Owner("7", None, time.monotonic()))
        # Its group is subscribed already (before): a join would wait for the reader.
        here.registry.add(users.user_group(7), after)
        release.set()
        assert before.closes.get(timeout=10) == (4003, "bye")
        assert users._checker.wait_idle(10)
        users.send(7, "still open")
        assert after.get() == "still open"
        assert after.closes.empty()
    finally:
        release.set()
        for tab in (before, after):
            users._owners.pop(id(tab), None)
        other.close()
