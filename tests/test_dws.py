"""``dwebsocket.dws``: the envelope's messages from a client that announced it, on real
servers (the default backend with gevent's C fast path, and runserver's threads)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from tests.servers import ServerProcess
from tests.wire import RawClient

pytestmark = pytest.mark.server


@pytest.mark.parametrize("name", ["gevent", "runserver"])
def test_an_envelope_nested_too_deep_to_parse_goes_to_the_view(
    name: str, make_server: Callable[..., ServerProcess]
) -> None:
    """A text message that starts like an envelope but nests deeper than ``json`` can
    decode (RecursionError, not ValueError) is the application's, as any other message
    that is not valid JSON: the view gets it and the connection stays open. Before, the
    RecursionError escaped ``wait()``: a 500 in the server's log and 1011 for the client,
    from any client that sends ``?dws=1``."""
    server = make_server(name)
    depth = sys.getrecursionlimit() * 10
    deep = '{"dws":' + "[" * depth + "]" * depth + "}"
    with RawClient.connect(server.host, server.port, "/echo/?dws=1") as client:
        client.send('{"dws":"ping"}')  # the envelope's own: answered, not echoed
        assert client.recv() == '{"dws":"pong"}'
        client.send(deep)
        assert client.recv() == deep
        client.send("after")
        assert client.recv() == "after"
