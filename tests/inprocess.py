"""Drive a view's WebSocket session in-process: the view runs in a thread on one end of
a ``socket.socketpair()`` (handed over as ``environ["dwebsocket.socket"]``), the test is
the client on the other end. No server, fast, and the bytes are real."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.test import RequestFactory

from dwebsocket.protocol.handshake import generate_key, parse_response
from tests.wire import TIMEOUT, RawClient


def upgrade_headers(key: str, **extra: str) -> dict[str, str]:
    return {
        "Host": "testserver",  # RequestFactory's SERVER_NAME; it sends no Host itself
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        **extra,
    }


class Session:
    """``Session(view)``: the view runs at once; ``client`` is a :class:`RawClient`.
    ``environ``: more WSGI environ keys (``"dwebsocket.rfile"``: the bytes a server's
    reader already buffered, such as a first frame that came with the handshake)."""

    def __init__(
        self,
        view: Callable[..., Any],
        path: str = "/ws/",
        *,
        headers: dict[str, str] | None = None,
        call: Callable[[HttpRequest], Any] | None = None,
        environ: dict[str, Any] | None = None,
    ) -> None:
        self.server_sock, client_sock = socket.socketpair()
        self.client = RawClient(client_sock)
        self.key = generate_key()
        self.request = RequestFactory().get(
            path,
            headers=upgrade_headers(self.key, **(headers or {})),
            **{"dwebsocket.socket": self.server_sock, **(environ or {})},
        )
        self.response: Any = None
        self.error: BaseException | None = None
        self._call = call or (lambda request: view(request))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.response = self._call(self.request)
        except BaseException as exc:  # handed to the test by finish()
            self.error = exc

    def expect_101(self) -> dict[str, str]:
        """Read the 101 response; return its headers."""
        data = b""
        while (parsed := parse_response(data, self.key)) is None:
            chunk = self.client.sock.recv(65536)
            assert chunk, f"EOF before the 101: {data!r}"
            data += chunk
        status, headers, consumed = parsed
        assert status == 101, data
        if data[consumed:]:
            self.client.receive(data[consumed:])
        return dict(headers)

    def finish(self) -> Any:
        """Wait for the view to return (bounded); close both sockets; its response."""
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the view did not return"
        self.close()
        return self.response

    def close(self) -> None:
        self.client.close()
        self.server_sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(TIMEOUT)
        self.close()
