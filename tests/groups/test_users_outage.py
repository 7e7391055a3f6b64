"""``users.disconnect`` while Redis is unreachable: this process's sockets close as
always, and the caller learns that the other processes' did not -- a WARNING for each
disconnect (before: nothing but the groups layer's one warning per outage, so a revoked
user stayed connected elsewhere unseen), or with ``fail_silently=False`` the exception."""

from __future__ import annotations

import logging

import pytest

from dwebsocket import groups, users
from dwebsocket.exceptions import GroupsUnavailable
from tests.groups.redis_server import RedisServer
from tests.groups.test_users_redis import Closable, on_redis

__all__ = ["on_redis"]  # the fixture, used by name


def test_a_disconnect_that_reaches_this_process_only_says_so(
    on_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A member closed once is skipped by later commands: one for each.
    before, during, session, raised = Closable(), Closable(), Closable(), Closable()
    groups._join_own(users.user_group(7), before)
    groups._join_own(users.session_group("abc"), session)
    users.disconnect(7, code=4003, reason="before")
    assert before.closes.get(timeout=10) == (4003, "before")

    on_redis.stop()
    with caplog.at_level(logging.WARNING, logger="dwebsocket.users"):
        groups._join_own(users.user_group(7), during)
        users.disconnect(7, code=4003, reason="during")
        users.disconnect_session("abc")
        assert during.closes.get(timeout=10) == (4003, "during")
        assert session.closes.get(timeout=10) == (users.REVOKED, "")
        groups._join_own(users.user_group(7), raised)
        with pytest.raises(GroupsUnavailable):
            users.disconnect(7, fail_silently=False)
        assert raised.closes.get(timeout=10) == (users.REVOKED, "")  # here all the same
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "dwebsocket.users" and r.levelno == logging.WARNING
    ]
    assert len(said) == 2, said
    assert said[0].startswith("disconnecting user 7 closed this process's sockets only")
    assert said[1].startswith("disconnecting a session closed this process's sockets only")
