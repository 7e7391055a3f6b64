"""``ASGIConnection``'s waits for messages, driven in-process on an asyncio loop.

``test_asgi.py`` checks on real servers that an async view's tasks may wait at the same
time (each gets a message, the close ends every wait). What no server can be made to do on
demand is the interleaving below: a message wakes one waiter, whose task is cancelled
before it runs. So the connection is driven here through ASGI's ``receive``/``send``
callables of an in-memory queue, and its loop-side entry point is called directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from dwebsocket.backends.asgi.connection import ASGIConnection

TIMEOUT = 5.0


async def opened() -> tuple[ASGIConnection, asyncio.Queue[Mapping[str, Any]]]:
    inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()

    async def send(event: Mapping[str, Any]) -> None:
        pass

    connection = ASGIConnection(
        {"type": "websocket", "path": "/"},
        inbox.get,
        send,
        max_message_size=None,
        close_timeout=TIMEOUT,
        queue_limit=1 << 20,
    )
    await connection.accept()
    return connection, inbox


def test_a_cancelled_waiter_passes_its_message_on() -> None:
    async def scenario() -> tuple[str | bytes | None, bool]:
        connection, inbox = await opened()
        first = asyncio.ensure_future(connection.wait_async(None))
        second = asyncio.ensure_future(connection.wait_async(None))
        await asyncio.sleep(0)  # both wait
        connection._received("one")  # wakes the oldest: first
        first.cancel()  # before its task ran
        got = await asyncio.wait_for(second, TIMEOUT)
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return got, first.cancelled()

    assert asyncio.run(scenario()) == ("one", True)


def test_waiters_are_served_oldest_first_and_all_woken_by_the_close() -> None:
    async def scenario() -> list[str | bytes | None]:
        connection, inbox = await opened()
        waiters = [asyncio.ensure_future(connection.wait_async(None)) for _ in range(3)]
        await asyncio.sleep(0)
        connection._received("one")
        assert await asyncio.wait_for(waiters[0], TIMEOUT) == "one"
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        rest = await asyncio.wait_for(asyncio.gather(*waiters[1:]), TIMEOUT)
        await connection.finish()
        return rest

    assert asyncio.run(scenario()) == [None, None]
