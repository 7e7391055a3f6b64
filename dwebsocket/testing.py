"""Drive WebSocket views from an ordinary Django test, without starting a server.

::

    from dwebsocket.testing import WebSocketClient

    class EchoTests(TestCase):
        def test_echo(self):
            user = User.objects.create_user("alice")
            with WebSocketClient("/echo/", user=user) as ws:
                ws.send("hi")
                self.assertEqual(ws.receive(), "hi")
            self.assertEqual(ws.close_code, 1000)

Nothing is mocked. The client writes a real upgrade request into one end of a
``socket.socketpair()``. The other end goes to a small in-process server: it reads the
request, builds the WSGI environ (as ``django.test.RequestFactory`` does: ``testserver``,
``127.0.0.1``) and runs Django's handler (middleware, URL resolution, the view) in a
thread. The default backend takes that end over (``environ["dwebsocket.socket"]``) and
writes the 101, frames, compresses, pings and closes exactly as it does in production.
The client speaks the other side with the protocol core (``Connection(client=True)``).

Inside a ``TestCase`` the view's thread shares the test's database connections (as
``LiveServerTestCase`` does for SQLite), so the view sees the data the test created in
its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from http.client import responses
from http.cookies import SimpleCookie
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_to_bytes

from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.base import BaseHandler
from django.core.handlers.wsgi import WSGIRequest, get_script_name
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.urls import set_script_prefix
from django.utils.encoding import iri_to_uri

from dwebsocket.db import close_thread_connections
from dwebsocket.exceptions import ConnectionClosed, HandshakeRefused, InvalidState
from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.deflate import PerMessageDeflate
from dwebsocket.protocol.handshake import (
    HandshakeRequest,
    build_request,
    generate_key,
    parse_request,
    parse_response,
)
from dwebsocket.protocol.server import accept
from dwebsocket.signals import websocket_opened
from dwebsocket.typing import BytesLike, Message

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.http import HttpRequest, HttpResponseBase
    from django.test import Client

__all__ = ["HandshakeRefused", "WebSocketClient"]

HOST = "testserver"
_RECV_SIZE = 65536
_MAX_HEAD = 65536
# request_started/finished are sent without close_old_connections (see _quiet_signals);
# the lock keeps two clients' threads from reconnecting it under each other.
_signals_lock = threading.Lock()

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class WebSocketClient:
    """A WebSocket client for one view; see the module docstring.

    ``path`` may carry a query string. ``user`` is logged in for the request as
    ``Client.force_login`` does (a new session; needs the session and authentication
    middleware, as in production). ``client`` is a ``django.test.Client`` whose cookies
    (its session, after ``client.login(...)``) are sent. ``cookies`` are more cookies,
    ``headers`` more request headers (``Host`` and ``Origin`` included). No ``Origin`` is
    sent unless given (``origin=``), like a non-browser client. ``subprotocols`` are
    offered in order; ``compression`` offers permessage-deflate as browsers do.
    ``secure`` makes the request ``https``. ``extra`` are WSGI environ keys, as for
    ``RequestFactory`` (``REMOTE_ADDR="10.0.0.1"``).

    ``timeout`` (seconds) bounds every wait: the handshake, :meth:`receive`, the closing
    handshake and the view's return after the connection closed. With
    ``raise_request_exception`` (the default, as for ``django.test.Client``) an exception
    that escapes the view is raised again in the test, by :meth:`connect` if the view had
    not accepted the connection, else by :meth:`close`.

    Use it as a context manager (``with WebSocketClient(...) as ws:``), or call
    :meth:`connect` and :meth:`close` yourself. Several clients may be open at once; each
    runs its view in its own thread. One client is for one thread (the test's).
    """

    def __init__(
        self,
        path: str,
        *,
        user: AbstractBaseUser | None = None,
        client: Client | None = None,
        cookies: Mapping[str, str] | SimpleCookie | None = None,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        compression: bool = True,
        secure: bool = False,
        timeout: float = 10.0,
        raise_request_exception: bool = True,
        **extra: Any,
    ) -> None:
        self.path = path
        self.user = user
        self.client = client
        self.cookies = cookies
        self.headers = dict(headers or {})
        self.origin = origin
        self.subprotocols = list(subprotocols)
        self.compression = compression
        self.secure = secure
        self.timeout = timeout
        self.raise_request_exception = raise_request_exception
        self.extra = extra

        #: After :meth:`connect`: the response headers of the 101 (lower-case names).
        self.response_headers: list[tuple[str, str]] = []
        #: The subprotocol the view chose, or None.
        self.subprotocol: str | None = None
        #: The close code and reason the server sent (1006 if the connection just ended).
        self.close_code: int | None = None
        self.close_reason = ""

        self._sock: socket.socket | None = None
        self._server: _ServerSide | None = None
        self._conn: Connection | None = None
        self._messages: deque[Message] = deque()
        self._finished = False
        self._polled = 0.0  # the deadline _recv read at once past

    def __repr__(self) -> str:
        state = "new" if self._server is None else "closed" if self.closed else "open"
        return f"<WebSocketClient {state} {self.path}>"

    # -- the opening handshake ---------------------------------------------------------

    def __enter__(self) -> WebSocketClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> WebSocketClient:
        """Send the upgrade request and wait for the view to accept it; returns ``self``.

        Blocks until the view accepts (its first use of ``request.websocket``) and the
        receivers of ``websocket_opened`` have returned (the socket is then its user's:
        ``users.send`` reaches it), or until the view answers, at most ``timeout``
        seconds. Raises :class:`HandshakeRefused` for any answer but
        101, the view's own exception if it raised before accepting (with
        ``raise_request_exception``), ``TimeoutError`` if nothing came, and
        ``ImproperlyConfigured`` unless ``WEBSOCKET_FACTORY_CLASS`` is the default backend
        (the one this client drives).
        """
        if self._server is not None:
            raise InvalidState("this client is already connected; make a new one")
        asynchronous = _is_async_view(self.path)
        if not asynchronous:
            _check_backend()
        key = self._given_header("sec-websocket-key") or generate_key()
        request = self._build_request(key)
        server_sock, self._sock = socket.socketpair()
        side = _ASGIServerSide if asynchronous else _ServerSide
        server = self._server = side(server_sock, self)
        opened = threading.Event()

        def on_opened(sender: Any, request: Any = None, **kwargs: Any) -> None:
            if request is not None and request is server.request:
                opened.set()

        # Connected last, so called once the other receivers have returned.
        uid = ("dwebsocket.testing.opened", id(self))
        websocket_opened.connect(on_opened, weak=False, dispatch_uid=uid)
        try:
            self._handshake(key, request, opened)
        finally:
            websocket_opened.disconnect(dispatch_uid=uid)
        return self

    def _handshake(self, key: str, request: bytes, opened: threading.Event) -> None:
        assert self._server is not None and self._sock is not None
        self._server.start()
        deadline = time.monotonic() + self.timeout
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(request)
            status, headers, rest = self._read_head(key, deadline)
            if status != 101:
                content = self._read_to_eof(rest, deadline)
                self._finish()
                raise HandshakeRefused(status, headers, content, self._server.response)
            self._open(headers, rest)
            # The server sends websocket_opened just after the 101: until its receivers
            # have run, dwebsocket.users has not registered the socket as its user's,
            # and a users.send() the test makes next would miss it.
            opened.wait(max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            try:
                self._finish(check_returned=False)
            except BaseException as server_side:
                raise server_side from exc  # what went wrong in the view explains the rest
            raise

    def _given_header(self, name: str) -> str | None:
        """The value ``headers`` gives for ``name`` (lower-case), or None."""
        for given, value in self.headers.items():
            if given.lower() == name:
                return value
        return None

    def _build_request(self, key: str) -> bytes:
        """The upgrade request. A header of ``headers`` that the client sends itself
        (``Host``, ``Origin``, ``Upgrade``, ``Sec-WebSocket-Version``...) replaces the
        client's, as a test of the answer to another value means; a server would join
        the two (``13,8``). A ``Cookie`` header joins the client's cookies instead."""
        host, origin = HOST, self.origin
        extra_headers = []
        cookies = []
        for name, value in self.headers.items():
            if name.lower() == "host":
                host = value
            elif name.lower() == "origin":
                origin = value
            elif name.lower() == "cookie":  # one Cookie header, as browsers send (RFC 6265 5.4)
                cookies.append(value)
            elif name.lower() != "sec-websocket-key":  # ``key`` is the one given
                extra_headers.append((name, value))
        cookies.append(self._cookie_header())
        cookie = "; ".join(filter(None, cookies))
        if cookie:
            extra_headers.append(("Cookie", cookie))
        request = build_request(
            host,
            iri_to_uri(self.path),
            key=key,
            subprotocols=self.subprotocols,
            extensions=PerMessageDeflate.client_offer() if self.compression else None,
            origin=origin,
            extra_headers=extra_headers,
        )
        # The request line, the client's own headers, then extra_headers: drop the
        # client's own where extra_headers has one of that name.
        request_line, *lines = request[:-4].split(b"\r\n")
        own = len(lines) - len(extra_headers)
        given = {name.lower().encode("latin-1") for name, _ in extra_headers}
        kept = [
            line
            for i, line in enumerate(lines)
            if i >= own or line.partition(b":")[0].lower() not in given
        ]
        return b"\r\n".join([request_line, *kept]) + b"\r\n\r\n"

    def _cookie_header(self) -> str:
        jar: SimpleCookie = SimpleCookie()
        if self.client is not None:
            jar.load(self.client.cookies)
        if self.cookies is not None:
            jar.load(self.cookies)
        if self.user is not None:
            from django.test import Client

            session = Client()
            session.force_login(self.user)
            jar.load(session.cookies)
        # As django.test.Client builds HTTP_COOKIE.
        return "; ".join(sorted(f"{m.key}={m.coded_value}" for m in jar.values()))

    def _read_head(self, key: str, deadline: float) -> tuple[int, list[tuple[str, str]], bytes]:
        data = b""
        while True:
            parsed = parse_response(data, key)
            if parsed is not None:
                status, headers, consumed = parsed
                return status, headers, data[consumed:]
            chunk = self._recv(deadline)
            if chunk is None:
                raise TimeoutError(
                    f"the view for {self.path} neither accepted nor refused the WebSocket "
                    f"within {self.timeout}s"
                )
            if not chunk:
                raise ConnectionError(
                    f"the server closed the connection to {self.path} "
                    "without answering the handshake"
                )
            data += chunk

    def _read_to_eof(self, data: bytes, deadline: float) -> bytes:
        chunks = [data]
        while chunk := self._recv(deadline):
            chunks.append(chunk)
        return b"".join(chunks)

    def _open(self, headers: list[tuple[str, str]], rest: bytes) -> None:
        self.response_headers = headers
        deflate = None
        for name, value in headers:
            if name == "set-cookie" and self.client is not None:
                # As a browser keeps them (the session the handshake saved, say), and as
                # the Client keeps those of its own responses.
                self.client.cookies.load(value)
            elif name == "sec-websocket-protocol":
                self.subprotocol = value
            elif name == "sec-websocket-extensions":
                deflate = PerMessageDeflate.from_response(value)
        self._conn = Connection(client=True, deflate=deflate, max_message_size=None)
        if rest:
            self._feed(rest)

    # -- talking ---------------------------------------------------------------------------

    @property
    def request(self) -> HttpRequest | None:
        """The ``HttpRequest`` the view got (``request.websocket``, ``request.user``...),
        once the server has read the handshake."""
        return None if self._server is None else self._server.request

    @property
    def closed(self) -> bool:
        """True once the server's close frame arrived or the connection ended."""
        return self.close_code is not None

    def send(self, message: str | BytesLike) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame.

        Blocks until the frame is written (at most ``timeout`` when the view does not
        read). Raises ``ConnectionClosed`` once closed, ``TypeError`` for other types."""
        if not isinstance(message, str | BytesLike):
            raise TypeError(f"cannot send {type(message).__name__}: expected str or bytes")
        conn = self._connection()
        if self.closed or conn.close_sent:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        self._write(conn.send_message(message))

    def send_json(self, data: Any) -> None:
        """Send ``data`` encoded as JSON in a text frame."""
        self.send(json.dumps(data))

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message the view sent: ``str`` for text, ``bytes`` for binary.

        Blocks up to ``timeout`` seconds (default: the client's; 0 takes what has arrived
        already). Raises
        ``ConnectionClosed`` (with the close code and reason) once the connection is closed
        and every message before the close was received, ``TimeoutError`` if none came.
        Answers the server's pings meanwhile."""
        self._connection()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._messages:
            if self.closed:
                raise ConnectionClosed(self.close_code or 1006, self.close_reason)
            if not self._pump(deadline):
                raise TimeoutError(
                    f"no message from {self.path} within "
                    f"{self.timeout if timeout is None else timeout}s"
                )
        return self._messages.popleft()

    def receive_json(self, timeout: float | None = None) -> Any:
        """:meth:`receive` a message and decode it as JSON."""
        return json.loads(self.receive(timeout))

    def wait_closed(self, timeout: float | None = None) -> int:
        """Wait until the server closes the connection; return the close code.

        Messages that arrive meanwhile stay available to :meth:`receive`. Raises
        ``TimeoutError`` if the server does not close within ``timeout`` seconds (default:
        the client's)."""
        self._connection()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.close_code is None:
            if not self._pump(deadline):
                raise TimeoutError(
                    f"{self.path} did not close the connection within "
                    f"{self.timeout if timeout is None else timeout}s"
                )
        return self.close_code

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (if still open) and wait for the view to return.

        Runs the closing handshake: sends a close frame and waits for the server's; if
        that does not come within ``timeout`` (the view does not read), cuts the
        connection as a browser would. Then waits up to ``timeout`` for the view to
        return, and raises ``TimeoutError`` if it does not. Raises the view's exception,
        if any (with ``raise_request_exception``). Idempotent."""
        if self._server is None or self._finished:
            return
        try:
            conn = self._conn
            if conn is not None and not self.closed:
                # ConnectionClosed: the view's side is gone already; TimeoutError: the view
                # reads nothing, so it would not see our close frame anyway.
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    self._write(conn.send_close(code, reason))
                    self._drain()
        finally:
            self._finish()

    # -- I/O ---------------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            raise InvalidState("connect() first (or use the client in a with block)")
        return self._conn

    def _recv(self, deadline: float) -> bytes | None:
        """One recv; None at the deadline, b"" at EOF (or when the connection broke).
        Past the deadline, what has arrived already is still read, once per deadline (so
        that ``receive(timeout=0)`` polls, and a peer that keeps writing cannot hold a
        wait open)."""
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if self._polled == deadline:
                return None
            self._polled, remaining = deadline, 0.0  # 0: non-blocking
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            return None
        except OSError:  # pragma: no cover - ECONNRESET: the view's side closed on unread data
            return b""

    def _pump(self, deadline: float) -> bool:
        """Read once and feed the core; False at the deadline."""
        data = self._recv(deadline)
        if data is None:
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        conn = self._connection()
        events = conn.receive_data(data)
        out = conn.data_to_send()  # pongs, the reply to a close frame
        if out:
            assert self._sock is not None
            self._sock.settimeout(self.timeout)
            with contextlib.suppress(OSError):  # the view's side may be gone already
                self._sock.sendall(out)
        for event in events:
            if isinstance(event, (str, bytes)):
                self._messages.append(event)
            elif isinstance(event, Close):
                self.close_code, self.close_reason = event.code, event.reason

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.settimeout(self.timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            message = f"the view for {self.path} read nothing for {self.timeout}s"
            raise TimeoutError(message) from None
        except OSError:
            # The view's side is gone; what it sent before (its close frame, say) may
            # still be waiting in our buffer.
            self._drain()
            raise ConnectionClosed(self.close_code or 1006, self.close_reason) from None

    def _drain(self) -> None:
        """Read until the server's close frame or EOF, at most ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while not self.closed and self._pump(deadline):
            pass

    def _finish(self, *, check_returned: bool = True) -> None:
        """Close our socket, wait for the view, share no more connections, and raise
        what went wrong on the server side (with ``check_returned``, also a view that did
        not return). Once."""
        if self._finished or self._server is None:
            return
        self._finished = True
        server = self._server
        assert self._sock is not None
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._conn is not None and self.close_code is None:
            self.close_code = 1006
        server.join(self.timeout)
        returned = not server.is_alive()
        if not returned:
            server.stop()
        server.release()
        if check_returned and not returned:
            raise TimeoutError(
                f"the view for {self.path} did not return within {self.timeout}s after its "
                "connection closed"
            )
        if server.error is not None:
            raise server.error
        if server.exc_info is not None and self.raise_request_exception:
            raise server.exc_info[1].with_traceback(server.exc_info[2])


def _check_backend() -> None:
    from dwebsocket.backends.default.factory import WebSocketFactory
    from dwebsocket.factory import get_factory_class

    factory = get_factory_class()
    if not issubclass(factory, WebSocketFactory):
        raise ImproperlyConfigured(
            "dwebsocket.testing drives the default backend, but WEBSOCKET_FACTORY_CLASS is "
            f"{factory.__module__}.{factory.__qualname__}; in tests, use "
            "@override_settings(WEBSOCKET_FACTORY_CLASS="
            "'dwebsocket.backends.default.factory.WebSocketFactory')"
        )


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """Send request_started/finished without ``close_old_connections``, as
    ``django.test.Client`` does: it would close the connections the view shares with a
    test that holds them in a transaction."""
    with _signals_lock:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            yield
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


class _Handler(BaseHandler):
    """Django's request handling as ``django.test.Client`` runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware()


class _ServerSide(threading.Thread):
    """The server end of one client: reads the request, runs Django, answers a refusal."""

    def __init__(self, sock: socket.socket, client: WebSocketClient) -> None:
        super().__init__(name=f"dwebsocket.testing {client.path}", daemon=True)
        self.sock = sock
        self.client = client
        self.request: HttpRequest | None = None
        self.response: HttpResponseBase | None = None
        #: The exception that escaped the view (Django answered it with a 500).
        self.exc_info: _ExcInfo | None = None
        #: Anything else that went wrong here.
        self.error: BaseException | None = None
        # The connections a TestCase holds in a transaction, lent to the view so that it
        # sees the test's data (released by the client). The view opens any other itself.
        self.shared: dict[str, BaseDatabaseWrapper] = {
            conn.alias: conn
            for conn in connections.all(initialized_only=True)
            if conn.in_atomic_block
        }
        for conn in self.shared.values():
            conn.inc_thread_sharing()

    def release(self) -> None:
        for conn in self.shared.values():
            conn.dec_thread_sharing()
        self.shared = {}

    def stop(self) -> None:
        """The view did not return: a sync view cannot be stopped from outside, so its
        thread (a daemon) is left to it."""

    def run(self) -> None:
        try:
            self.sock.settimeout(self.client.timeout)
            self.serve(*self.read_head())
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def serve(self, head: bytes, rest: bytes) -> None:
        """Run Django for the request whose head (and first bytes after it) were read."""
        environ = self.environ(head, rest)
        for alias, conn in self.shared.items():
            connections[alias] = conn
        try:
            self.handle(environ)
        finally:
            close_thread_connections(keep=frozenset(self.shared))

    def read_head(self) -> tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > _MAX_HEAD:
                raise ValueError(
                    f"request head over {_MAX_HEAD} bytes: servers refuse those (400, 431)"
                )
            chunk = self.sock.recv(_RECV_SIZE)
            if not chunk:  # pragma: no cover - the client writes its request in one go
                raise ConnectionError("the client went away before its request was complete")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def environ(self, head: bytes, rest: bytes) -> dict[str, Any]:
        """The WSGI environ a server would build, with RequestFactory's defaults."""
        client = self.client
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, protocol = request_line.split(" ")
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),  # PEP 3333
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": protocol,
            "SERVER_NAME": HOST,
            "SERVER_PORT": "443" if client.secure else "80",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if client.secure else "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for line in lines:
            name, _, value = line.partition(":")
            if "_" in name:
                # As runserver and gunicorn do: X_Forwarded_For must not pose as
                # X-Forwarded-For.
                continue
            key = name.strip().upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            value = value.strip(" \t")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        environ.update(client.extra)
        # The default backend's takeover for a server that hands it the socket.
        environ["dwebsocket.socket"] = self.sock
        environ["dwebsocket.rfile"] = io.BytesIO(rest)
        return environ

    def handle(self, environ: dict[str, Any]) -> None:
        handler = _Handler()
        # As WSGIHandler does for each request, in this thread (reverse() in the view).
        set_script_prefix(get_script_name(environ))
        with _quiet_signals():
            request_started.send(sender=_Handler, environ=environ)
        request = self.request = WSGIRequest(environ)

        def store_exc_info(sender: Any, request: WSGIRequest | None = None, **kwargs: Any) -> None:
            if request is self.request:
                self.exc_info = sys.exc_info()  # type: ignore[assignment]

        got_request_exception.connect(store_exc_info, weak=False, dispatch_uid=id(self))
        try:
            response = handler.get_response(request)
        finally:
            got_request_exception.disconnect(dispatch_uid=id(self))
        response.wsgi_request = request  # type: ignore[attr-defined]
        self.response = response
        websocket = getattr(request, "websocket", None)
        try:
            if websocket is None or not websocket.accepted:
                self.write_response(response)
            # else the backend has the connection, and has shut it down: nothing more to write.
        finally:
            with _quiet_signals():
                response.close()  # sends request_finished

    def write_response(self, response: HttpResponseBase) -> None:
        """Answer over the wire as a WSGI server would (the handshake was refused)."""
        lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
        lines += [f"{name}: {value}" for name, value in response.items()]
        lines += [f"Set-Cookie: {c.output(header='').strip()}" for c in response.cookies.values()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        body = b"".join(response)
        with contextlib.suppress(OSError):  # the client gave up waiting
            self.sock.sendall(head + body)


def _is_async_view(path: str) -> bool:
    """Whether ``path`` resolves to an ``async def`` view (decorated or not)."""
    from asgiref.sync import iscoroutinefunction
    from django.urls import Resolver404, resolve
    from django.utils import translation

    # Decoded as the server and Django decode what the client sends (the path may be
    # written percent-encoded, as for django.test.Client).
    path = unquote(iri_to_uri(path).partition("?")[0])
    # In the language the path names (i18n_patterns), as LocaleMiddleware resolves it.
    language = translation.get_language_from_path(path) or translation.get_language()
    try:
        with translation.override(language):
            match = resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


class _ASGIServerSide(_ServerSide):
    """The server end for an ``async def`` view: the request goes through
    :class:`dwebsocket.asgi.ASGIHandler` as under an ASGI server, and this thread plays
    that server: an event loop, the framing done by the protocol core, the ASGI events
    mapped to and from the socket. Its sync code (middleware, ``sync_to_async``) runs in
    asgiref's threads, with database connections of their own: a ``TestCase``'s
    transaction is not lent to them (use ``TransactionTestCase`` for data the view must
    see)."""

    def __init__(self, sock: socket.socket, client: WebSocketClient) -> None:
        super().__init__(sock, client)
        self.release()  # nothing lent: the view's threads are asgiref's
        self.connection: Connection | None = None
        self.handshake: HandshakeRequest | None = None
        self.refusal: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def serve(self, head: bytes, rest: bytes) -> None:
        asyncio.run(self.aserve(head, rest))

    def stop(self) -> None:
        """Unlike a sync view, a coroutine can be stopped: it is cancelled, so that its
        thread ends instead of waiting for ever (up to the client's ``timeout`` for the
        view to unwind)."""
        task = self._task
        if task is None:
            return
        self._stopped = True
        with contextlib.suppress(RuntimeError):  # its loop has just ended
            task.get_loop().call_soon_threadsafe(task.cancel)
        self.join(self.client.timeout)

    def scope(self, head: bytes) -> dict[str, Any]:
        """The ``websocket`` scope an ASGI server would build (RequestFactory's host)."""
        client = self.client
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, protocol = request_line.split(" ")
        path, _, query = target.partition("?")
        headers: list[tuple[bytes, bytes]] = []
        joined: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip(" \t")
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        remote = "127.0.0.1"
        for key, value in client.extra.items():
            if key.startswith("HTTP_"):
                # Replaces the request's header of that name, as it does in the environ
                # (Django would join two, and refuse two Host headers).
                name = key[5:].replace("_", "-").lower()
                raw = name.encode("latin-1")
                headers = [header for header in headers if header[0] != raw]
                headers.append((raw, str(value).encode("latin-1")))
                joined[name] = str(value)
            elif key == "REMOTE_ADDR":
                remote = str(value)
        self.handshake = parse_request(method, protocol, joined)
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if client.secure else "ws",
            "path": unquote_to_bytes(path).decode("utf-8", "replace"),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": (remote, 50000),
            "server": (HOST, 443 if client.secure else 80),
            "subprotocols": self.handshake.subprotocols,
            "extensions": {"websocket.http.response": {}},
        }

    async def aserve(self, head: bytes, rest: bytes) -> None:
        from dwebsocket.asgi import ASGIHandler

        side = self

        class Handler(ASGIHandler):
            async def run_get_response(self, request: Any) -> HttpResponseBase:
                side.request = request
                response = await super().run_get_response(request)
                side.response = response
                return response

        scope = self.scope(head)
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        pending: deque[dict[str, Any]] = deque([{"type": "websocket.connect"}])
        unread = [rest] if rest else []
        accepted = asyncio.Event()

        async def receive() -> dict[str, Any]:
            while not pending:
                await accepted.wait()  # the client sends nothing before the 101
                conn = self.connection
                assert conn is not None
                data = unread.pop() if unread else await loop.sock_recv(self.sock, _RECV_SIZE)
                if not data:
                    return {"type": "websocket.disconnect", "code": 1006}
                events = conn.receive_data(data)
                out = conn.data_to_send()  # pongs, the reply to a close frame
                if out:
                    with contextlib.suppress(OSError):
                        await loop.sock_sendall(self.sock, out)
                for event in events:
                    if isinstance(event, str):
                        pending.append({"type": "websocket.receive", "text": event})
                    elif isinstance(event, bytes):
                        pending.append({"type": "websocket.receive", "bytes": event})
                    elif isinstance(event, Close):
                        code, reason = event.code, event.reason
                        pending.append(
                            {"type": "websocket.disconnect", "code": code, "reason": reason}
                        )
            return pending.popleft()

        async def send(event: dict[str, Any]) -> None:
            kind = event["type"]
            out = b""
            if kind == "websocket.accept":
                assert self.handshake is not None
                opened = accept(
                    self.handshake,
                    subprotocol=event.get("subprotocol"),
                    compression=True,
                    max_message_size=None,
                )
                self.connection = opened.connection
                out = opened.response
                accepted.set()
            elif kind == "websocket.send" and self.connection is not None:
                text = event.get("text")
                out = (
                    self.connection.send_text(text)
                    if text is not None
                    else self.connection.send_binary(event.get("bytes") or b"")
                )
            elif kind == "websocket.close":
                if self.connection is None:  # before the accept: a 403, as servers do
                    out = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
                else:
                    code = event.get("code", 1000)
                    out = self.connection.send_close(code, event.get("reason") or "")
            elif kind == "websocket.http.response.start":
                self.refusal = (event["status"], list(event.get("headers", [])))
                return
            elif kind == "websocket.http.response.body" and self.refusal is not None:
                status, headers = self.refusal
                body = event.get("body", b"")
                # Any status, as write_response sends it (HTTPStatus raises for 499),
                # with Django's phrase for one it does not know.
                phrase = responses.get(status, "Unknown Status Code")
                lines = [f"HTTP/1.1 {status} {phrase}"]
                lines += [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in headers]
                if not any(n.lower() == b"content-length" for n, _ in headers):
                    lines.append(f"Content-Length: {len(body)}")
                out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            if out:
                with contextlib.suppress(OSError):  # the client is gone
                    await loop.sock_sendall(self.sock, out)

        def store_exc_info(sender: Any, request: Any = None, **kwargs: Any) -> None:
            if request is not None and request is self.request:
                self.exc_info = sys.exc_info()  # type: ignore[assignment]

        got_request_exception.connect(store_exc_info, weak=False, dispatch_uid=id(self))
        self._task = asyncio.current_task()
        try:
            await Handler()(scope, receive, send)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            if not self._stopped:
                raise
        finally:
            got_request_exception.disconnect(dispatch_uid=id(self))
