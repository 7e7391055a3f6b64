"""The ASGI backend's ``deliver()``, driven in-process (``tests/asgi/test_connection.py``'s
connection over an in-memory server): what the other backends' tests check of it too."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from tests.asgi.test_connection import opened


@pytest.mark.parametrize("accept", [False, True], ids=["before-accept", "after-accept"])
def test_deliver_of_text_utf8_cannot_encode_is_refused_and_the_connection_goes_on(
    accept: bool,
) -> None:
    """deliver() of a str with a lone surrogate raises ``UnicodeEncodeError`` and queues
    nothing, before the accept as after it, as on the default and uWSGI backends (it was
    queued, then skipped without a word at the flush); the accept and what was delivered
    around it go through."""

    async def scenario() -> list[Mapping[str, Any]]:
        connection, inbox = await opened(accept=accept)
        connection.deliver("before")
        with pytest.raises(UnicodeEncodeError):
            connection.deliver("bad \ud800")
        connection.deliver("after")
        await connection.accept()
        await connection.send_message("own")
        assert not connection.is_closed()
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await connection.finish()
        return connection.sent

    texts = [e.get("text") for e in asyncio.run(scenario()) if e["type"] == "websocket.send"]
    assert texts == ["before", "after", "own"]
