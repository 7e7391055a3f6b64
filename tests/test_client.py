"""``dwebsocket.client.ReconnectingClient`` against real gevent servers (the test project),
through the proxy of ``tests/groups/proxy.py`` where a connection must be cut or frozen.
Recovery across processes with it is in ``tests/groups/test_history_servers.py``."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from dwebsocket.client import Event, ReconnectingClient
from dwebsocket.exceptions import ConnectionClosed
from dwebsocket.protocol.connection import Close, Connection
from dwebsocket.protocol.handshake import accept_key
from tests.groups.proxy import Proxy
from tests.requirements import executable, missing
from tests.servers import REPO, ServerProcess

pytestmark = pytest.mark.server

WAIT = 20.0
_READ = 65536


@pytest.fixture
def gevent(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server("gevent")


@pytest.fixture
def proxy(gevent: ServerProcess) -> Iterator[Proxy]:
    balancer = Proxy(gevent.port)
    yield balancer
    balancer.close()


@pytest.fixture
def history(make_server: Callable[..., ServerProcess]) -> Iterator[Proxy]:
    """A gevent server keeping group ``feed``'s history (``memory://``), behind a proxy."""
    server = make_server(
        "gevent", settings={"WEBSOCKET_GROUPS_HISTORY": {"feed": {"size": 100, "ttl": 600}}}
    )
    balancer = Proxy(server.port)
    yield balancer
    balancer.close()


def test_url_must_be_ws() -> None:
    for url in ["http://h/", "ws:///path", "nonsense"]:
        with pytest.raises(ValueError):
            ReconnectingClient(url)


@pytest.mark.parametrize("port", ["99999", "abc", "-1"])
def test_a_port_no_connection_can_use_is_refused_at_once(port: str) -> None:
    """A port out of range or not a number is the caller's mistake, raised by the
    constructor: before, reading it raised ``ValueError`` inside each attempt, which the
    client took for a failed attempt and retried for ever (``connect()`` timed out)."""
    with pytest.raises(ValueError, match="port of"):
        ReconnectingClient(f"ws://127.0.0.1:{port}/").connect(0.2)


def test_a_host_idna_cannot_encode_is_refused_at_once() -> None:
    """A host name no lookup can take (a label over 63 characters, an empty label: IDNA,
    which ``getaddrinfo`` applies, refuses them) is the caller's mistake, raised by the
    constructor: before, each attempt failed with ``UnicodeError`` and the client retried
    it for ever. A name IDNA does encode is kept as given."""
    for host in ["a" * 64 + ".example", "a..example", "é" * 60 + ".example"]:
        with pytest.raises(ValueError, match="host"):
            ReconnectingClient(f"ws://{host}/")
    for host in ["bücher.example", "example.", "[::1]", "localhost"]:
        ReconnectingClient(f"ws://{host}:9/")


@pytest.mark.parametrize(
    "options",
    [
        {"headers": [("Authorization", "Bearer token-read-from-a-file\n")]},
        {"headers": [("X Token", "1")]},
        {"headers": [("X-Name", "Zoë 🙂")]},
        {"origin": "https://日本.example"},
        {"subprotocols": ["chat\r\n"]},
    ],
)
def test_a_handshake_no_attempt_can_send_is_refused_at_once(options: dict[str, Any]) -> None:
    """A header the request cannot carry (a newline: a token read from a file with its
    line end; a name that is no token; a character latin-1 has not) is the caller's
    mistake, raised by the constructor: before, each attempt (to a listening socket: the
    kernel accepts the connection) raised ``ValueError`` making the request, which the
    client took for a failed attempt and retried for ever (``connect()`` without a
    timeout never returned; nothing but "close" events said why)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, pytest.raises(ValueError):
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/"
        ReconnectingClient(url, **options).connect(0.5)


def test_a_host_name_goes_in_the_host_header_as_dns_knows_it() -> None:
    """A host name with characters beyond ASCII goes in ``Host`` in its IDNA form, as a
    browser sends it, as DNS looked it up, as ``ALLOWED_HOSTS`` lists it: it went as
    given, in latin-1 (``bücher``: a host Django refuses with 400, every attempt) or not
    at all (``日本``: ``ValueError``, every attempt, retried for ever)."""
    for url, host in [
        ("ws://bücher.example:9/x/", b"xn--bcher-kva.example:9"),
        ("ws://user@日本.example/", b"xn--wgv71a.example"),
        ("ws://Example.COM:9/", b"Example.COM:9"),
        ("ws://[::1]:9/", b"[::1]:9"),
    ]:
        request = ReconnectingClient(url)._request("dGhlIHNhbXBsZSBub25jZQ==")
        assert re.search(rb"\r\nHost: (\S+)\r\n", request)[1] == host  # type: ignore[index]


def test_credentials_in_the_url_go_as_basic_auth_and_never_into_repr() -> None:
    """``ws://user:pass@host/`` sends the credentials as HTTP Basic auth, as the
    ``websockets`` client does (percent-escapes decoded, UTF-8), unless ``headers`` has an
    ``Authorization`` of its own; the password never shows in ``repr()`` or an error
    message. They were dropped without a word, and the password was in both."""
    client = ReconnectingClient("ws://al%40ice:p%3Ass%C3%A9@127.0.0.1:9/x/")
    request = client._request("dGhlIHNhbXBsZSBub25jZQ==")
    token = base64.b64encode("al@ice:p:ssé".encode()).decode()
    assert f"\r\nAuthorization: Basic {token}\r\n".encode() in request
    assert b"p%3A" not in request and "p%3A" not in repr(client)
    assert "ws://al%40ice:***@127.0.0.1:9/x/" in repr(client)
    with pytest.raises(TimeoutError) as raised:
        client.connect(0.2)
    assert "p%3A" not in str(raised.value) and "***" in str(raised.value)
    own = ReconnectingClient("ws://u:secret@127.0.0.1:9/", headers=[("authorization", "Bearer t")])
    request = own._request("dGhlIHNhbXBsZSBub25jZQ==")
    assert b"Bearer t" in request and b"Basic" not in request
    with pytest.raises(ValueError) as refused:
        ReconnectingClient("http://u:secret@127.0.0.1:9/")
    assert "secret" not in str(refused.value)


def test_the_urls_blank_query_parameters_are_kept() -> None:
    """The client adds ``dws`` and ``dws_since`` to the URL's query; the application's own
    parameters go as they were, blank ones (``?debug``, ``?a=``) included: they were
    dropped."""
    client = ReconnectingClient("ws://127.0.0.1:9/x/?debug&a=&b=1&dws=7", positions={"g": "e:1"})
    query = parse_qsl(urlsplit(client._address()).query, keep_blank_values=True)
    assert query == [
        ("debug", ""),
        ("a", ""),
        ("b", "1"),
        ("dws", "1"),
        ("dws_since", '{"g":"e:1"}'),
    ]


@pytest.mark.parametrize("name", ["gevent", "runserver", "uwsgi-gevent"])
def test_echo_binary_and_the_envelope_query(
    name: str, make_server: Callable[..., ServerProcess]
) -> None:
    """On the default backend (with and without gevent's C fast path) and on the uwsgi
    backend, a dws client's ping is answered by the library, never seen by the view."""
    server = make_server(name)
    events: list[Event] = []
    with ReconnectingClient(
        server.url("/echo/?keep=1"), positions={"g": "e:1"}, on_event=events.append
    ) as client:
        assert client.connected and events[0].type == "open" and not events[0].reconnect
        client.send("hello")
        assert client.recv(WAIT).data == "hello"
        client.send(b"\x00\xff")
        received = client.recv(WAIT)
        assert received == (b"\x00\xff", None, None)
        # The client speaks the envelope: its ping is answered, never echoed by the view.
        client.send('{"dws":"ping"}')
        client.send("after")
        assert client.recv(WAIT).data == "after"  # the pong is not a message; no echo
        assert "dws=1" in client._address() and "keep=1" in client._address()
        assert "dws_since" in client._address()
    with pytest.raises(ConnectionClosed):
        client.recv(0.1)
    with pytest.raises(ConnectionClosed):
        client.send("closed")


def _metrics(server: ServerProcess) -> dict[str, float]:
    """The server's byte counters (``/metrics``), once both moved (the connections closed)."""
    deadline = time.monotonic() + WAIT
    while True:
        with urllib.request.urlopen(server.url("/metrics", "http"), timeout=WAIT) as response:
            text = response.read().decode()
        found = dict(
            (name.removeprefix("django_websocket_"), float(count))
            for name, _, count in (line.partition(" ") for line in text.splitlines())
            if name.endswith("_bytes_total")
        )
        if found.get("sent_bytes_total") and found.get("received_bytes_total"):
            return found
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


@pytest.mark.parametrize("compression", [True, False])
def test_compression_is_negotiated_as_a_browser_does(
    make_server: Callable[..., ServerProcess], compression: bool
) -> None:
    """The client offers permessage-deflate, as browsers (and ``dwebsocket.testing``) do,
    and the server (``WEBSOCKET_COMPRESSION``, on by default) takes it: 200,000 bytes of
    JSON-like text each way cross the wire in a few KB. Before, the client offered none,
    and a service following a group got every byte as it was, where a browser got them
    compressed. ``compression=False`` offers none."""
    server = make_server("gevent")
    message = '{"price": 1.5, "item": "apple"}' * 6500
    with ReconnectingClient(server.url("/echo/"), compression=compression) as client:
        client.send(message)
        assert client.recv(WAIT).data == message
        client.send(message.encode())
        assert client.recv(WAIT).data == message.encode()
    counted = _metrics(server)
    if compression:
        assert counted["received_bytes_total"] < 20_000 > counted["sent_bytes_total"], counted
    else:
        assert counted["received_bytes_total"] > 2 * len(message) < counted["sent_bytes_total"]


def test_the_subprotocol_the_server_chose_is_known(gevent: ServerProcess) -> None:
    """A service offering two versions of its protocol (``["v2", "chat"]``, the newer
    first, while servers are upgraded) learns which one the server chose: ``subprotocol``
    (None while not connected, or when the server chose none). Before, nothing said it."""
    client = ReconnectingClient(gevent.url("/subprotocol/"), subprotocols=["v2", "chat"])
    assert client.subprotocol is None
    with client:
        assert json.loads(client.recv(WAIT).data)["chosen"] == "chat"
        assert client.subprotocol == "chat"
    with ReconnectingClient(gevent.url("/subprotocol/"), subprotocols=["v2"]) as client:
        assert json.loads(client.recv(WAIT).data)["chosen"] is None
        assert client.subprotocol is None


@pytest.mark.parametrize(
    "answer",
    [
        b"Sec-WebSocket-Protocol: chat\r\n",
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
    ],
)
def test_what_the_server_answers_unoffered_fails_the_attempt(answer: bytes) -> None:
    """A subprotocol the client did not offer, or an extension with ``compression=False``
    (which offers none): the server would speak what the client does not (frames with
    RSV1 it cannot read), so the attempt fails (RFC 6455 4.1) and is retried, instead of
    a connection that breaks at the first message, or speaks another protocol."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        events: list[Event] = []
        client = ReconnectingClient(
            f"ws://127.0.0.1:{port}/", compression=False, min_delay=30, on_event=events.append
        )
        thread = threading.Thread(target=lambda: _answer_handshake(listener, answer).close())
        thread.start()
        with pytest.raises(TimeoutError):
            client.connect(1.0)
        thread.join(WAIT)
        client.close()
    assert [(e.type, e.will_retry) for e in events] == [("close", True)], events
    assert "not offered" in events[0].reason


def test_a_message_nested_too_deep_to_parse_is_the_applications(gevent: ServerProcess) -> None:
    """A message that starts like an envelope but nests deeper than ``json`` decodes (a
    chat relaying what a user typed; the server hands it to the view as the
    application's, ``test_dws.py``) comes back as a message, and the connection goes on.
    Before, the RecursionError escaped ``recv()``, losing the rest of that read: one user
    could end every Python client in the room."""
    depth = sys.getrecursionlimit() * 10
    deep = '{"dws":' + "[" * depth + "]" * depth + "}"
    events: list[Event] = []
    with ReconnectingClient(gevent.url("/echo/"), on_event=events.append).connect(WAIT) as client:
        client.send(deep)
        client.send("after")
        assert client.recv(WAIT).data == deep
        assert client.recv(WAIT).data == "after"
    assert [e.type for e in events] == ["open"], events


@pytest.mark.parametrize("code", [1008, 4001])
def test_no_retry_after_policy_and_revoked_session(gevent: ServerProcess, code: int) -> None:
    events: list[Event] = []
    client = ReconnectingClient(gevent.url(f"/close/?code={code}"), on_event=events.append)
    client.connect(WAIT)
    client.send("close, please")
    with pytest.raises(ConnectionClosed) as raised:
        client.recv(WAIT)
    assert raised.value.code == code
    assert [e.type for e in events] == ["open", "close"]
    assert events[1].code == code and not events[1].will_retry
    client.close()


@pytest.mark.parametrize("name", ["gevent", "runserver"])
@pytest.mark.parametrize("code", [1008, 4001])
def test_a_close_that_cuts_a_large_write_short_still_says_why(
    make_server: Callable[..., ServerProcess], name: str, code: int
) -> None:
    """The server closes with 4001 (the session revoked) or 1008 while the client writes
    a message larger than what the systems buffer (4 MiB): the server's socket is closed,
    the rest of the message draws a reset and the write fails (EPIPE). The close frame
    came before and is still there to read: ``send()`` raises ``ConnectionClosed`` with
    its code and reason, and the client stops for good, as after any 4001. Before, the
    failed write was all the client knew of (1006): it announced a retry and reconnected,
    its session revoked."""
    server = make_server(name)
    events: list[Event] = []
    client = ReconnectingClient(
        server.url(f"/close/?code={code}&reason=go"), min_delay=0.01, on_event=events.append
    )
    client.connect(WAIT)
    client.send("close, please")
    assert client._sock is not None and select.select([client._sock], [], [], WAIT)[0]
    time.sleep(0.2)  # the server's close frame came: its socket is closed (or about to be)
    with pytest.raises(ConnectionClosed) as raised:
        client.send(random.randbytes(2**22))  # incompressible: 4 MiB on the wire
    assert (raised.value.code, raised.value.reason) == (code, "go")
    with pytest.raises(ConnectionClosed):
        client.recv(WAIT)
    assert [(e.type, e.code, e.will_retry) for e in events] == [
        ("open", None, False),
        ("close", code, False),
    ]
    assert client._sock is None


def test_a_message_over_the_servers_limit_is_told_apart_from_a_broken_link(
    gevent: ServerProcess,
) -> None:
    """A message over the server's ``WEBSOCKET_MAX_MESSAGE_SIZE`` (1 MiB): the server
    closes with 1009 as soon as the frame's header says its size, and the rest of the
    write draws a reset. ``send()`` raises ``ConnectionClosed`` with the server's 1009
    and its reason, and the ``close`` event says so (then the client reconnects, as after
    any 1009). Before, both said 1006, ``[Errno 32] Broken pipe``: a link that broke."""
    events: list[Event] = []
    with ReconnectingClient(gevent.url("/echo/"), min_delay=0.01, on_event=events.append) as client:
        with pytest.raises(ConnectionClosed) as raised:
            client.send(random.randbytes(2**22))  # incompressible: 4 MiB on the wire
        assert raised.value.code == 1009 and "1048576" in raised.value.reason
        client.connect(WAIT)
        client.send("back")
        assert client.recv(WAIT).data == "back"
    closes = [e for e in events if e.type == "close"]
    assert [(e.code, e.will_retry) for e in closes] == [(1009, True)], closes


@pytest.mark.parametrize("name", ["café", "日本", "a b"])
def test_a_path_is_sent_percent_encoded(gevent: ServerProcess, name: str) -> None:
    """A path with characters a request line cannot carry as they are (a room's name:
    ``/group/日本/follow/``) goes percent-encoded in UTF-8, as the browser sends it, and
    the view joins that group. It went raw: ``é`` as one latin-1 byte (Django read
    another name), and ``日本`` or a space made every attempt fail building the request
    (``ValueError``), which the client retried for ever."""
    events: list[Event] = []
    client = ReconnectingClient(gevent.url(f"/group/{name}/follow/"), on_event=events.append)
    try:
        client.connect(WAIT)
        client.recv(WAIT)  # the view's first message: it has joined
        url = gevent.url(f"/group/{quote(name)}/status/", scheme="http")
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert json.load(response)["members"] == 1
    finally:
        client.close()
    assert [e.type for e in events] == ["open"], events


def test_a_refused_handshake_is_final(gevent: ServerProcess) -> None:
    client = ReconnectingClient(gevent.url("/refuse/"))
    with pytest.raises(ConnectionClosed) as raised:
        client.connect(WAIT)
    assert "HTTP 403" in raised.value.reason


def test_a_redirect_is_final_and_says_where(make_server: Callable[..., ServerProcess]) -> None:
    """A handshake answered with a redirect (Django's ``APPEND_SLASH`` for a URL without
    its slash; ``SECURE_SSL_REDIRECT`` the same for ``ws://``) gets the same answer on
    every attempt: the client stops at once, saying where it was sent. Before, it
    retried for ever with the backoff, each "close" saying only "HTTP 301"."""
    middleware = ["django.middleware.common.CommonMiddleware"]
    server = make_server("gevent", settings={"MIDDLEWARE": middleware})
    events: list[Event] = []
    client = ReconnectingClient(server.url("/echo"), min_delay=0.01, on_event=events.append)
    with pytest.raises(ConnectionClosed) as raised:
        client.connect(2)
    assert "HTTP 301" in raised.value.reason and "/echo/" in raised.value.reason
    assert [(e.type, e.will_retry) for e in events] == [("close", False)]


def test_a_server_over_its_limits_is_retried_after_what_it_asked(
    make_server: Callable[..., ServerProcess],
) -> None:
    """Refused with 503 and ``Retry-After: 5`` (one connection at most): the next attempt
    waits 5 s (``max_delay`` 8) and then its jitter; before, the header was ignored (a
    delay up to ``min_delay`` 0.05)."""
    server = make_server("gevent", settings={"WEBSOCKET_MAX_CONNECTIONS": 1})
    events: list[Event] = []
    with ReconnectingClient(server.url("/echo/")) as holder:
        holder.send("one")
        assert holder.recv(WAIT).data == "one"
        client = ReconnectingClient(
            server.url("/echo/"), min_delay=0.05, max_delay=8.0, on_event=events.append
        )
        with pytest.raises(TimeoutError):
            client.connect(1.0)
        client.close()
    [refused] = [e for e in events if e.type == "close"][:1]
    assert "HTTP 503" in refused.reason and refused.will_retry
    assert 5.0 <= (refused.delay or 0) <= 5.05


def test_reconnects_after_a_drop_with_backoff(proxy: Proxy) -> None:
    events: list[Event] = []
    client = ReconnectingClient(
        proxy.url("/echo/"), min_delay=0.05, max_delay=0.2, on_event=events.append
    )
    with client:
        proxy.cut()
        with pytest.raises(TimeoutError):
            client.recv(0.5)  # reconnecting meanwhile: refused, retried with backoff
        closes = [e for e in events if e.type == "close"]
        assert len(closes) >= 2 and all(e.will_retry for e in closes)
        assert all(0 <= (e.delay or 0) <= 0.2 for e in closes)
        proxy.restore()
        client.connect(WAIT)
        client.send("back")
        assert client.recv(WAIT).data == "back"
        assert [e for e in events if e.type == "open"][-1].reconnect


def test_a_large_message_over_a_slow_link_is_sent_while_bytes_move(
    make_server: Callable[..., ServerProcess],
) -> None:
    """``timeout`` bounds a write that stops moving, not one that takes long: 8 MiB
    through a link forwarding 64 KiB every 20 ms (over 2.5 s; the socket takes more
    every 0.2 s at most) with a ``timeout`` of 1 s arrives, and the connection goes on.
    Before, ``sendall`` gave the whole write 1 s: the send raised ``ConnectionClosed``
    and the client reconnected, for any message the link carries more slowly than
    ``timeout`` (over ``wss://``, ``ssl`` gave each part of the write the timeout: the
    two disagreed). (With 5 ms and 0.35 s, a loaded machine stalled the proxy's thread
    longer than that once: a write that stopped moving, rightly given up.)"""
    server = make_server("gevent", settings={"WEBSOCKET_MAX_MESSAGE_SIZE": 2**24})
    link = Proxy(server.port)
    events: list[Event] = []
    try:
        link.throttle(65536, 0.02)
        with ReconnectingClient(link.url("/echo/"), timeout=1.0, on_event=events.append) as client:
            message = random.Random(0).randbytes(2**23)  # incompressible: 8 MiB to go
            client.send(message)
            assert client.recv(WAIT).data == message
    finally:
        link.close()
    assert [e.type for e in events] == ["open"], events


def test_a_server_down_for_hours_is_still_retried() -> None:
    """Over a thousand failed attempts in a row (a server down for a weekend: two hours
    at the default delays) the backoff stays at ``max_delay``: ``min_delay * 2**1024``
    raised ``OverflowError`` (an int too large for a float) out of ``connect()`` and
    ``recv()``, ending the client. Here the delays are tiny and nothing listens on the
    port (a socket bound but not listening): each attempt is refused at once."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = ReconnectingClient(f"ws://127.0.0.1:{port}/", min_delay=1e-9, max_delay=1e-9)
        deadline = time.monotonic() + WAIT
        while client.attempts <= 1100:
            assert time.monotonic() < deadline, client.attempts
            with pytest.raises(TimeoutError):
                client.connect(0.05)
        client.close()


def test_the_heartbeat_finds_a_silent_connection(proxy: Proxy) -> None:
    # ping_timeout leaves the pong (through the proxy's threads and the server) a second:
    # a loaded machine took longer than 0.3 s, and the answered connection was given up.
    events: list[Event] = []
    client = ReconnectingClient(
        proxy.url("/echo/"),
        ping_interval=0.2,
        ping_timeout=1.0,
        min_delay=0.05,
        on_event=events.append,
    )
    with client:
        with pytest.raises(TimeoutError):
            client.recv(1.5)  # pinged and answered: still the first connection
        assert [e.type for e in events] == ["open"]
        proxy.freeze()
        deadline = time.monotonic() + WAIT
        while not (events[-1].type == "open" and events[-1].reconnect):  # given up, then back
            assert time.monotonic() < deadline, events
            with pytest.raises(TimeoutError):
                client.recv(0.2)
        closes = [e for e in events if e.type == "close"]
        assert closes and closes[0].code == 4002


def test_the_heartbeat_says_why_it_gives_a_connection_up(
    gevent: ServerProcess, proxy: Proxy
) -> None:
    """The server's answers stop coming (the proxy reads nothing more from it), what the
    client sends still goes: the client gives the connection up (4002) and says so with a
    close frame, as ``dwebsocket.js`` does (docs/protocol.rst: 4002 is "sent by a client
    that gave up on a silent connection"); the view sees 4002 (its metrics and logs say
    why the client went). Before, the client dropped the socket without a word: the view
    saw 1006."""
    events: list[Event] = []
    client = ReconnectingClient(
        proxy.url("/record/?id=heartbeat"),
        ping_interval=0.2,
        ping_timeout=0.3,
        min_delay=30,
        on_event=events.append,
    )
    with client:
        proxy.pause()
        deadline = time.monotonic() + WAIT
        while len(events) < 2:  # a pong the proxy was reading as it paused may still come
            assert time.monotonic() < deadline
            with pytest.raises(TimeoutError):
                client.recv(0.2)
        assert [(e.type, e.code) for e in events] == [("open", None), ("close", 4002)]
    assert _recorded(gevent.url("/record/?id=heartbeat", "http"))["code"] == 4002


def _recorded(record: str) -> Any:
    """What the ``record`` view at ``record`` recorded of its close, once it has."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(record, timeout=WAIT) as response:
                return json.load(response)
        except urllib.error.HTTPError:  # 404: not closed yet
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_heartbeat_interval_of_infinity_reads_without_a_timeout(gevent: ServerProcess) -> None:
    """``ping_interval=inf`` (no heartbeat, as ``pingInterval: Infinity`` in the browser):
    ``recv()`` reads with no time limit. It gave the socket a timeout of inf, which
    ``settimeout()`` refuses: ``OverflowError`` out of every ``recv()`` without a timeout
    (and the same for any interval past what it counts, about 292 years)."""
    with ReconnectingClient(gevent.url("/echo/"), ping_interval=float("inf")) as client:
        client.send("hello")
        sock = client._sock
        assert sock is not None
        assert select.select([sock], [], [], WAIT)[0], "no echo"
        assert client.recv().data == "hello"  # ready: no wait


def test_an_answer_waiting_unread_is_not_taken_for_a_dead_connection(gevent: ServerProcess) -> None:
    """The application calls ``recv()`` now and then (a poll with a short timeout): a
    ping went out in one call, and the next comes after ``ping_timeout``, the pong and an
    echo waiting in the socket. They are read, not the connection given up (4002) with
    the echo in it."""
    events: list[Event] = []
    with ReconnectingClient(
        gevent.url("/echo/"), ping_interval=0.2, ping_timeout=0.3, on_event=events.append
    ) as client:
        time.sleep(0.25)  # the ping is due
        with pytest.raises(TimeoutError):
            client.recv(0)  # sends it, reads nothing
        assert client._ping_sent is not None
        client.send("still here")
        time.sleep(0.5)  # the application is busy for longer than ping_timeout
        # and the answers came meanwhile (a loaded server may take longer than that: the
        # socket then holds nothing, which is silence, rightly a dead connection)
        assert client._sock is not None and select.select([client._sock], [], [], WAIT)[0]
        assert client.recv(WAIT).data == "still here"
    assert [e.type for e in events] == ["open"], events


def test_an_event_handler_that_raises_loses_nothing(
    history: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The application's handler raises on ``joined`` while the message after it came in
    the same read (the proxy hands over the 101, ``joined`` and the view's first message
    at once): the error is logged to the ``dwebsocket`` logger, and the message still
    comes."""

    def on_event(event: Event) -> None:
        if event.type == "joined":
            raise RuntimeError("a bug in the application")

    history.hold(until=b'"recovery"')
    with (
        caplog.at_level(logging.ERROR, logger="dwebsocket"),
        # Plain frames: the proxy looks for the view's message on the wire.
        ReconnectingClient(
            history.url("/group/feed/follow/"), on_event=on_event, compression=False
        ) as client,
    ):
        assert "recovery" in json.loads(client.recv(WAIT).data)
    (logged,) = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert isinstance(logged, RuntimeError)


def test_close_from_the_open_handler(history: Proxy) -> None:
    """The application closes the client from its ``open`` handler while the server's
    first frames came in the same read as the 101 (the proxy hands them over at once):
    the client is closed, and ``connect()`` says so."""
    client: ReconnectingClient

    def on_event(event: Event) -> None:
        if event.type == "open":
            client.close()

    history.hold(until=b'"recovery"')
    client = ReconnectingClient(
        history.url("/group/feed/follow/"), on_event=on_event, compression=False
    )  # plain frames: the proxy looks for the view's message on the wire
    with pytest.raises(ConnectionClosed) as raised:
        client.connect(WAIT)
    assert raised.value.code == 1000 and not client.connected


def test_connect_and_recv_keep_to_the_callers_timeout() -> None:
    """A backend that accepts TCP but never answers the handshake (a listening socket
    nobody accepts from): ``connect(0.5)`` and ``recv(0.5)`` raise ``TimeoutError`` though
    the client's own ``timeout`` (per attempt) is far longer. Not a speed test: the calls
    run in a thread the test waits for up to ``WAIT``, a fraction of ``timeout``; closing
    the listener ends an attempt still waiting (its connection is reset)."""
    outcomes: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as wedged:
        client = ReconnectingClient(f"ws://127.0.0.1:{wedged.getsockname()[1]}/", timeout=600)

        def calls() -> None:
            for call in (client.connect, client.recv):
                try:
                    call(0.5)
                except BaseException as exc:  # the test looks at it
                    outcomes.append(exc)

        thread = threading.Thread(target=calls, daemon=True)
        thread.start()
        thread.join(WAIT)
        done = not thread.is_alive()
    thread.join(WAIT)
    client.close()
    assert done and len(outcomes) == 2, outcomes
    assert all(isinstance(exc, TimeoutError) for exc in outcomes), outcomes
    assert client.attempts == 0  # the caller's time ran out, not the server's


def test_a_handshake_slower_than_the_callers_timeout_still_connects(proxy: Proxy) -> None:
    """A service calls ``recv(0.3)`` in a loop (it has other work) and the server's 101
    takes longer than that to arrive (a slow downlink: 32 bytes every 0.15 s). Each call
    goes on with the attempt the one before left, and the client connects. Each call
    abandoned its attempt when its own time ran out and the next started another, so
    the client never connected, and said nothing (no ``close``: no attempt failed)."""
    proxy.throttle(32, 0.15, to_clients=True)
    events: list[Event] = []
    client = ReconnectingClient(proxy.url("/echo/"), on_event=events.append)
    try:
        deadline = time.monotonic() + WAIT
        while not client.connected:
            assert time.monotonic() < deadline, events
            with contextlib.suppress(TimeoutError):
                client.recv(0.3)
        assert [e.type for e in events] == ["open"], events
        proxy.throttle(_READ, 0.001, to_clients=True)
        client.send("through")
        assert client.recv(WAIT).data == "through"
    finally:
        client.close()


def test_a_server_that_never_answers_fails_attempts_under_short_calls() -> None:
    """The same service against a server that accepts connections and never answers
    (a listening socket nobody accepts from): each attempt lasts its ``timeout`` (0.5 s)
    across the calls (``recv(0.2)``), then fails with a ``close`` and the backoff, as with
    ``recv()`` without a timeout. The attempts the calls cut short were no failure: a new
    connection every call for ever, no backoff, no ``close`` saying why."""
    events: list[Event] = []
    with socket.create_server(("127.0.0.1", 0)) as wedged:
        client = ReconnectingClient(
            f"ws://127.0.0.1:{wedged.getsockname()[1]}/",
            timeout=0.5,
            min_delay=0.01,
            max_delay=0.05,
            on_event=events.append,
        )
        try:
            deadline = time.monotonic() + WAIT
            while not [e for e in events if e.type == "close"]:
                assert time.monotonic() < deadline, client.attempts
                with pytest.raises(TimeoutError):
                    client.recv(0.2)
        finally:
            client.close()
    [failed] = [e for e in events if e.type == "close"][:1]
    assert failed.will_retry and failed.code == 1006 and client.attempts >= 1


def test_recv_with_no_time_to_wait_returns_a_message_ready(gevent: ServerProcess) -> None:
    """``recv(0)``, a poll from a loop that has other work: the echo is waiting in the
    socket, and is returned. It raised ``TimeoutError`` without reading, so a poller never
    got a message (the server would drop it as a slow reader)."""
    with ReconnectingClient(gevent.url("/echo/")).connect(WAIT) as client:
        client.send("hello")
        sock = client._sock
        assert sock is not None
        assert select.select([sock], [], [], WAIT)[0], "no echo"
        assert client.recv(0).data == "hello"
        with pytest.raises(TimeoutError):
            client.recv(0)  # nothing more: no wait either


def test_a_dns_server_that_never_answers_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    """The host name's lookup never gets an answer: each attempt gives up within the
    client's ``timeout`` (a retryable failure naming the lookup), ``connect(2.0)`` raises
    ``TimeoutError``, and the attempts share one lookup thread (no pile-up). Before,
    ``getaddrinfo`` held the caller until the resolver itself gave up (here, minutes:
    ``RES_OPTIONS`` asks 30 s per try, 5 tries).

    Real: ``tests/silent_dns.py`` runs in private user, mount and network namespaces with
    its own ``resolv.conf`` (glibc reads no environment variable naming a nameserver)
    pointing at a DNS server on its 127.0.0.1:53 that never answers; nothing of the
    machine changes. Bounded: the process gets ``WAIT`` seconds."""
    unshare = executable("unshare", "util-linux")
    executable("mount", "util-linux")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RES_OPTIONS": "timeout:30 attempts:5",
    }
    command = [unshare, "--user", "--map-root-user", "--mount", "--net", "--"]
    probe = subprocess.run([*command, "true"], capture_output=True, timeout=WAIT)
    if probe.returncode:
        missing(f"unprivileged user namespaces ({probe.stderr.decode(errors='replace')})")
    try:
        run = subprocess.run(
            [*command, sys.executable, "-m", "tests.silent_dns", str(resolv)],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=WAIT,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"connect(2.0) still blocked after {WAIT} s: {exc.stderr!r}") from None
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    outcome = json.loads(run.stdout)
    assert outcome["queries"] >= 1  # the resolver asked the silent server
    assert [r.split(":")[0] for r in outcome["raised"]] == ["TimeoutError", "TimeoutError"]
    closes = outcome["closes"]
    assert len(closes) >= 4 and all(c["code"] == 1006 and c["retry"] for c in closes)
    assert all("dws-never-answers.test" in c["reason"] for c in closes), closes
    assert outcome["most_lookups"] == 1  # every attempt waited for the same lookup
    assert outcome["tcp_sockets"] == 1  # the DNS server's listener: no client socket left
    assert outcome["close_ended"], "close() from another thread did not end the lookup's wait"


def test_a_host_name_is_looked_up_and_connected(gevent: ServerProcess) -> None:
    """``localhost`` (from ``/etc/hosts``): the lookup thread's answer is used, and the
    thread is gone once it answered (nothing kept, nothing cached)."""
    with ReconnectingClient(f"ws://localhost:{gevent.port}/echo/") as client:
        client.send("by name")
        assert client.recv(WAIT).data == "by name"
    lookups = [t for t in threading.enumerate() if t.name == "dwebsocket-resolve"]
    for thread in lookups:
        thread.join(WAIT)  # it answered: it ends right after
    assert not [t for t in lookups if t.is_alive()]


def test_a_host_whose_first_address_drops_connections_is_reached_on_the_next(
    make_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose first address takes no connections and refuses none (an IPv6 route
    a firewall drops, on a dual-stack host: here 127.0.0.2, a listener whose queue is
    full, so the kernel drops the SYNs) and whose next one has the server: the client
    gets there, as ``socket.create_connection`` and browsers do. Before, the first
    address's connect took all of the attempt's ``timeout``, the next was never tried,
    and every attempt ended so: the client never connected."""
    # The handshake's Host is checked against ALLOWED_HOSTS.
    gevent = make_server("gevent", settings={"ALLOWED_HOSTS": ["dual-stack.test"]})
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "dual-stack.test":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with socket.create_server(("127.0.0.2", gevent.port), backlog=0):
        queued = []
        try:
            for _ in range(4):  # more than the queue takes: the next SYN gets no answer
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.2", gevent.port))
                queued.append(filler)
            client = ReconnectingClient(
                f"ws://dual-stack.test:{gevent.port}/echo/", timeout=1.0, max_delay=0.5
            )
            try:
                client.connect(6)
                client.send("through the second address")
                assert client.recv(WAIT).data == "through the second address"
            finally:
                client.close()
        finally:
            for filler in queued:
                filler.close()


def _answer_handshake(backend: socket.socket, extra: bytes = b"") -> socket.socket:
    """Accept one connection on ``backend``, read its request and answer 101 (``extra``:
    more header lines)."""
    conn, _ = backend.accept()
    conn.settimeout(WAIT)
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(_READ)
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request, re.I)
    assert key is not None
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept_key(key.group(1).decode()).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
    )
    return conn


def _connected_to_a_bare_backend(
    receive_buffer: int | None = None, **options: Any
) -> tuple[ReconnectingClient, socket.socket]:
    """A client connected to a listening socket of the test's, and the test's end of that
    connection (after the 101, nothing is read or sent unless the test does), with
    ``receive_buffer`` its ``SO_RCVBUF``."""
    with socket.create_server(("127.0.0.1", 0)) as backend:
        if receive_buffer is not None:
            backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client = ReconnectingClient(f"ws://127.0.0.1:{backend.getsockname()[1]}/", **options)
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(_answer_handshake(backend)))
        thread.start()
        client.connect(WAIT)
        thread.join(WAIT)
    [conn] = accepted
    return client, conn


class Interrupted(BaseException):
    """Stands for a ``gevent.Timeout`` or a ``KeyboardInterrupt`` in the caller's thread."""


def test_an_attempt_interrupted_midway_leaves_no_socket_open() -> None:
    """A ``BaseException`` (here from a signal handler, as ``KeyboardInterrupt`` comes)
    while an attempt waits for the 101: the attempt is abandoned and its socket closed
    (the backend, a listening socket that never answers, sees its end); before, the socket
    stayed with the client, and the next attempt replaced it without closing it."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with socket.create_server(("127.0.0.1", 0)) as wedged:
        client = ReconnectingClient(f"ws://127.0.0.1:{wedged.getsockname()[1]}/", timeout=600)
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                client.connect()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        attempt, _ = wedged.accept()
        with attempt:
            attempt.settimeout(WAIT)
            while attempt.recv(_READ):  # the request, then the end of the connection
                pass
    client.close()


def test_a_write_interrupted_midway_gives_the_connection_up() -> None:
    """A ``BaseException`` while ``send()`` waits to write a large message (the backend
    accepted, then reads nothing): part of the frame may be on the wire, so the
    connection cannot carry another frame; it is given up (a reconnection scheduled), not
    kept to send the next message into the middle of this one."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with socket.create_server(("127.0.0.1", 0)) as backend:
        client = ReconnectingClient(f"ws://127.0.0.1:{backend.getsockname()[1]}/", timeout=600)
        accepted: list[socket.socket] = []

        def answer() -> None:  # a 101, then nothing is ever read
            accepted.append(_answer_handshake(backend))

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        client.connect(WAIT)
        thread.join(WAIT)
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            # Well after the frame is made (a tenth of that), while the write waits.
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            with pytest.raises(Interrupted):
                client.send(b"x" * 2**25)  # more than the buffers take
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert not client.connected
        with pytest.raises(ConnectionClosed):
            client.send("into the middle of the last frame")
        client.close()
        for conn in accepted:
            conn.close()


def test_the_heartbeat_gives_up_a_link_that_takes_nothing_within_ping_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server stopped reading while the client sent (a backend that never reads;
    the socket's buffers full of whole frames): at the next ping the link takes nothing
    at all, and after ``ping_timeout`` in which none of what waits went out the
    connection counts as dead (4002), as documented, and ``recv(timeout)`` keeps to its
    timeout. Before, the ping's write waited for room up to ``timeout`` (600 s here)
    inside ``recv(3)``."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # no retry meanwhile
    events: list[Event] = []
    client, conn = _connected_to_a_bare_backend(
        receive_buffer=4096,
        timeout=600,
        ping_interval=0.2,
        ping_timeout=0.5,
        min_delay=600,
        max_delay=600,
        on_event=events.append,
    )
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            client.recv(3)
        except BaseException as exc:
            outcome.append(exc)

    try:
        sock, protocol = client._sock, client._conn
        assert sock is not None and protocol is not None
        sock.setblocking(False)
        frame = protocol.send_message(b"\0" * 1000)
        with contextlib.suppress(BlockingIOError):
            while sock.send(frame) == len(frame):  # whole frames until nothing more fits
                frame = protocol.send_message(b"\0" * 1000)
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "recv(3) was still writing the ping"
        assert isinstance(outcome[0], TimeoutError)
        assert [(e.type, e.code) for e in events] == [("open", None), ("close", 4002)]
    finally:
        conn.close()
        client.close()


def test_a_large_message_sent_over_a_slow_link_is_not_taken_for_a_dead_connection() -> None:
    """``send()`` returns once the system took the message: 1.5 MB waits in the send
    queue while the server reads it in about 2 s (a slow uplink), and the ping
    (after 0.2 s of silence) waits behind it, so no answer can come within
    ``ping_timeout`` (0.5 s). The queue draining shows the connection alive: the server's
    answer to the message comes on the same connection. Before, the connection was given
    up (4002) while the message was still arriving, and every send of it again went the
    same way: no backoff of the heartbeat here, unlike the browser client's."""
    events: list[Event] = []
    client, conn = _connected_to_a_bare_backend(
        4096, on_event=events.append, ping_interval=0.2, ping_timeout=0.5
    )
    message = os.urandom(1_500_000)

    def serve() -> None:  # a read (4 KiB: SO_RCVBUF) every 5 ms; "got" once it came whole
        server = Connection(client=False, max_message_size=None)
        while chunk := conn.recv(16384):
            if message in server.receive_data(chunk):
                conn.sendall(server.send_message("got"))
            conn.sendall(server.data_to_send())  # the answer to the close frame, at the end
            time.sleep(0.005)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with client:
        client.send(message)
        assert client.recv(WAIT).data == "got"
        assert [e.type for e in events] == ["open"], events
    thread.join(WAIT)
    conn.close()


def test_an_envelope_of_a_later_version_is_an_event() -> None:
    """An envelope type the client does not know (a later server's) is no message: it
    comes to ``on_event`` as a ``"dws"`` event, the whole envelope in ``extra``."""
    events: list[Event] = []
    client, conn = _connected_to_a_bare_backend(on_event=events.append)
    with client, conn:
        later, plain = b'{"dws":"later","x":1}', b"plain"
        conn.sendall(bytes([0x81, len(later)]) + later + bytes([0x81, len(plain)]) + plain)
        assert client.recv(WAIT).data == "plain"
        assert [(e.type, e.extra) for e in events] == [
            ("open", {}),
            ("dws", {"dws": "later", "x": 1}),
        ]


def test_close_during_a_write_lets_the_frame_end_first() -> None:
    """A service closes its client from a SIGTERM handler while the main thread's
    ``send()`` writes a large message (the backend reads it, slowly): the close frame must
    follow the message, not land inside it. Before, ``close()`` wrote its frame at once,
    into the middle of the one being written, then closed the socket under it: the
    server got a corrupt stream (here: a message cut short, no close frame)."""
    message = b"x" * 2**25  # more than the buffers take: the write waits for the reader
    fired = threading.Event()

    def stop(signum: int, frame: object) -> None:
        fired.set()
        client.close(1001, "stopping")

    client, conn = _connected_to_a_bare_backend()
    received = bytearray()

    def read() -> None:  # from the signal on, everything until the client's end
        fired.wait(WAIT)
        while chunk := conn.recv(_READ):
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    previous = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)  # after the frame is made (0.2 s)
        client.send(message)
    except ConnectionClosed:
        pass  # before: the socket closed under the write
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    reader.join(WAIT)
    conn.close()
    assert fired.is_set() and not reader.is_alive()
    server = Connection(client=False, max_message_size=None)
    events = server.receive_data(bytes(received))
    assert events[:1] == [message], "the message did not arrive whole"
    assert events[1:] == [Close(1001, "stopping")]
    assert not client.connected


def test_a_close_frame_whose_answer_cannot_be_written_is_one_final_close() -> None:
    """The server closes with 4001 and resets the connection before the client answers
    (its close timeout ran out while the client was not reading, say): the answer's
    write fails. The close frame says how the connection ended: one "close", 4001, no
    retry. Before, the failed write announced a 1006 with a retry first, then the 4001
    ended the client: two "close" events, the first promising what never came."""
    events: list[Event] = []
    client, conn = _connected_to_a_bare_backend(on_event=events.append)
    conn.sendall(b"\x88\x09\x0f\xa1revoked")  # close 4001 "revoked"
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset: the client's answer finds no connection to go to
    _wait_for_the_reset(client)
    with pytest.raises(ConnectionClosed) as raised:
        client.recv(WAIT)
    assert (raised.value.code, raised.value.reason) == (4001, "revoked")
    assert [(e.type, e.code, e.will_retry) for e in events] == [
        ("open", None, False),
        ("close", 4001, False),
    ]


def _reading(client: ReconnectingClient) -> tuple[threading.Thread, list[BaseException]]:
    """A thread reading ``client`` until it ends; what ended it goes in the list."""
    ended: list[BaseException] = []

    def read() -> None:
        try:
            for _ in client:
                pass
        except BaseException as exc:
            ended.append(exc)
        else:
            ended.append(ConnectionClosed(client.close_code or 1006, "iteration ended"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, ended


def test_close_from_another_thread_ends_a_read_waiting_for_messages(proxy: Proxy) -> None:
    """A service reads in one thread and stops from another (a signal handler, its main
    thread): ``close()`` ends the read at once, even on a connection where nothing
    comes (here frozen: the server's answer to the close frame never comes either).
    Before, ``close()`` waited for that answer, closed the socket under the reading
    thread and returned; the read went on waiting on a closed descriptor until the next
    ping was due (``ping_interval``, 30 s here: days with ``inf``)."""
    # The reading thread sends the close frame: the view sees the client's 1000.
    recording = ReconnectingClient(proxy.url("/record/?id=threads"), ping_interval=30)
    recording.connect(WAIT)
    thread, ended = _reading(recording)
    time.sleep(0.1)  # the read is waiting
    recording.close(1000, "bye")
    thread.join(3)
    assert not thread.is_alive(), "the read did not end"
    assert isinstance(ended[0], ConnectionClosed) and recording._sock is None
    record = _recorded(proxy.url("/record/?id=threads", "http"))
    assert record == {"code": 1000, "reason": "bye", "closed": True}

    client = ReconnectingClient(proxy.url("/echo/"), ping_interval=30)
    client.connect(WAIT)
    # Short only now: each attempt of connect() has its handshake within ``timeout``,
    # which 0.3 s on a loaded machine may not be.
    client.timeout = 0.3
    proxy.freeze()
    thread, ended = _reading(client)
    time.sleep(0.1)
    client.close()
    thread.join(3)
    assert not thread.is_alive(), "the read did not end"
    assert isinstance(ended[0], ConnectionClosed) and client.close_code == 1000
    assert client._sock is None


def test_close_from_another_thread_ends_a_read_on_a_link_that_takes_nothing() -> None:
    """The same when the socket's send buffer is full (the server stopped reading while
    the client was sending: here a backend that never reads, and bytes of the test's
    own filling the buffers): the reading thread ends at once, without its close frame,
    which nothing would take. Before, it waited up to ``timeout`` (600 s here) for room
    to write the frame, and a service stopping waited as long for its reader."""
    client, conn = _connected_to_a_bare_backend(receive_buffer=4096, timeout=600)
    try:
        sock = client._sock
        assert sock is not None
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the payload of a binary frame no one reads: nothing more fits
                sock.send(b"\0" * 65536)
        thread, ended = _reading(client)
        time.sleep(0.1)  # the read is waiting
        client.close()
        thread.join(3)
        assert not thread.is_alive(), "the read did not end"
        assert isinstance(ended[0], ConnectionClosed) and client._sock is None
    finally:
        conn.close()
        client.close()


def test_close_from_another_thread_ends_a_wait_to_reconnect() -> None:
    """The same while the reading thread waits for its next attempt (the server is down,
    the backoff long): ``close()`` ends the wait. Before, the reading thread slept out
    the delay (up to ``max_delay``), then found the client closed."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: each attempt refused at once
        client = ReconnectingClient(
            f"ws://127.0.0.1:{closed.getsockname()[1]}/", min_delay=30, max_delay=30
        )
        with pytest.raises(TimeoutError):
            client.connect(0.1)  # refused once: the next attempt is up to 30 s away
        thread, ended = _reading(client)
        time.sleep(0.1)
        client.close()
        thread.join(3)
    assert not thread.is_alive(), "the wait did not end"
    assert isinstance(ended[0], ConnectionClosed)


def test_close_from_a_signal_handler_ends_a_wait_to_reconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service stops from a ``SIGTERM`` handler that calls ``close()`` while its main
    thread, the reading one, waits for the next attempt (the server is down): the wait
    ends and ``recv()`` raises ``ConnectionClosed``. Before, ``close()`` woke only a
    reader in another thread: the handler returned into the wait, which slept out the
    delay (up to ``max_delay``; more after a ``Retry-After``) before the service could
    stop. Here a second alarm, 3 s later, interrupts a wait that did not end."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the whole delay
    alarms: list[float] = []

    def handler(signum: int, frame: object) -> None:
        alarms.append(time.monotonic())
        if len(alarms) == 1:
            client.close()
        else:
            raise Interrupted

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: each attempt refused at once
        client = ReconnectingClient(
            f"ws://127.0.0.1:{closed.getsockname()[1]}/", min_delay=600, max_delay=600
        )
        with pytest.raises(TimeoutError):
            client.connect(0.1)  # refused once: the next attempt is 600 s away
        previous = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2, 3.0)
            with pytest.raises(ConnectionClosed):
                client.recv()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert len(alarms) == 1 and client.close_code == 1000


def test_close_from_another_thread_ends_an_attempt_under_way() -> None:
    """The same while the reading thread's attempt waits for the TCP connection (the
    server's host is gone: nothing answers, here a listener whose queue is full, so the
    kernel drops the client's SYNs): ``close()`` ends the attempt. Before, the reading
    thread waited out the attempt's ``timeout`` (10 s), then found the client closed."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        queued = []
        for _ in range(4):  # more than the queue takes: the next SYN gets no answer
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            queued.append(filler)
        client = ReconnectingClient(f"ws://127.0.0.1:{port}/")
        try:
            thread, ended = _reading(client)
            time.sleep(0.2)  # the attempt is under way
            client.close()
            thread.join(3)
            assert not thread.is_alive(), "the attempt did not end"
            assert isinstance(ended[0], ConnectionClosed) and client._sock is None
        finally:
            for filler in queued:
                filler.close()


def test_close_from_another_thread_ends_a_tls_handshake_under_way() -> None:
    """The same while the attempt's TLS handshake waits (``wss://``: the server accepted
    the TCP connection and answers nothing, a stopped process behind it): ``close()``
    ends it. Before, ``close()`` shut down the plain socket, whose descriptor the TLS
    socket had taken over (-1 then: nothing was shut down), and the reading thread
    waited out the attempt's ``timeout`` (10 s here), then found the client closed."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = ReconnectingClient(f"wss://127.0.0.1:{silent.getsockname()[1]}/")
        thread, ended = _reading(client)
        accepted, _ = silent.accept()  # the ClientHello comes; no answer goes
        try:
            accepted.settimeout(WAIT)
            assert accepted.recv(1)  # the handshake is under way
            client.close()
            thread.join(3)
            assert not thread.is_alive(), "the TLS handshake did not end"
            assert isinstance(ended[0], ConnectionClosed) and client._sock is None
        finally:
            accepted.close()
            client.close()
            thread.join(WAIT)


def test_close_from_another_thread_as_the_handshake_ends_announces_no_open(
    gevent: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` from another thread lands after the server's 101 was read, before the
    connection is set up (here: made to land exactly then). The application closed the
    client: an ``open`` event after that announced a connection it had ended. None is
    emitted, ``connect()`` raises ``ConnectionClosed`` and the socket is let go."""
    import dwebsocket.client as client_module

    events: list[Event] = []
    client = ReconnectingClient(gevent.url("/echo/"), on_event=events.append)

    def closed_meanwhile(*args: Any, **kwargs: Any) -> Connection:
        closing = threading.Thread(target=client.close)
        closing.start()
        closing.join(WAIT)
        return Connection(*args, **kwargs)

    monkeypatch.setattr(client_module, "Connection", closed_meanwhile)
    with pytest.raises(ConnectionClosed):
        client.connect(WAIT)
    assert [e.type for e in events] == []
    assert client._sock is None and client.close_code == 1000


def test_send_while_another_thread_closes_raises_connection_closed(proxy: Proxy) -> None:
    """A service's worker thread sends a reply while its main thread is in ``close()``
    (waiting for the server's answer to the close frame, which never comes here: the
    connection is frozen). ``send()`` raises ``ConnectionClosed``, what it documents and
    what the worker catches; it raised the protocol core's ``InvalidState`` ("cannot send:
    the connection is CLOSING"), which ended the worker with a traceback."""
    client = ReconnectingClient(proxy.url("/echo/")).connect(WAIT)
    proxy.freeze()
    closing = threading.Thread(target=client.close)
    closing.start()
    try:
        # close() has sent its close frame (a thread started a moment ago may not have
        # run yet on a loaded machine: a send before it goes out is a send like any other)
        deadline = time.monotonic() + WAIT
        while not (client._conn is not None and client._conn.close_sent):
            assert time.monotonic() < deadline, "close() sent no close frame"
            time.sleep(0.01)
        assert closing.is_alive()  # and waits for the answer
        with pytest.raises(ConnectionClosed):
            client.send("a reply")
    finally:
        closing.join(WAIT)


def test_sends_from_several_threads_reach_the_server_whole_and_in_order(
    gevent: ServerProcess,
) -> None:
    """A service's worker threads send at once, compression on (the server's default):
    every message is echoed, whole, and the connection stays up. Each frame was written
    whole, but compressed outside the write lock: one thread's frame could go out before
    the one compressed just before it, and the server's inflater (RFC 7692 context
    takeover: each message may refer to the ones before) read garbage and closed with
    1002 ("invalid compressed data"). Threads switch as often as the interpreter lets
    them, so that the order slips every run."""
    events: list[Event] = []
    client = ReconnectingClient(gevent.url("/echo/"), on_event=events.append).connect(WAIT)
    sent: set[str] = set()
    failures: list[BaseException] = []

    def sender(number: int) -> None:
        rnd = random.Random(number)
        for index in range(50):
            message = f"{number}:{index}:" + " ".join(
                str(rnd.random()) for _ in range(rnd.randrange(1, 2000))
            )
            sent.add(message)
            try:
                client.send(message)
            except BaseException as exc:  # the test looks at it
                failures.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        senders = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(4)]
        for thread in senders:
            thread.start()
        echoed = []
        with contextlib.suppress(TimeoutError):
            while len(echoed) < 200:
                echoed.append(client.recv(WAIT).data)
        for thread in senders:
            thread.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
        client.close()
    assert not failures, failures
    assert [e.type for e in events] == ["open"], events
    assert len(echoed) == 200 and set(echoed) == sent


def test_a_send_that_outlived_its_connection_never_reaches_the_next(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker thread's ``send()`` has made its frame when the connection drops and the
    reading thread reconnects (made to happen exactly then, before the frame is written).
    The frame belongs to the connection it was made for (its compression context, the
    server's view of that session): ``send()`` raises ``ConnectionClosed``, as it
    documents for a connection that ends during the write, and the new connection never
    sees it. It went out on whatever
    socket the client held by then: the new connection's (the server echoed a message
    the worker was told nothing about), or the next attempt's before its handshake."""
    import dwebsocket.client as client_module

    making, made = threading.Event(), threading.Event()

    class Slow(Connection):
        def send_message(self, message: Any) -> bytes:
            frame = super().send_message(message)
            if message == "made for the first connection":
                making.set()  # made: the connection drops before it is written
                made.wait(WAIT)
            return frame

    monkeypatch.setattr(client_module, "Connection", Slow)
    events: list[Event] = []
    client = ReconnectingClient(
        proxy.url("/echo/"), min_delay=0.01, max_delay=0.05, on_event=events.append
    ).connect(WAIT)
    outcome: list[BaseException | None] = []

    def worker() -> None:
        try:
            client.send("made for the first connection")
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        assert making.wait(WAIT)
        proxy.cut()
        proxy.restore()
        deadline = time.monotonic() + WAIT
        while client.opened < 2:  # the reading thread reconnects meanwhile
            assert time.monotonic() < deadline, events
            with contextlib.suppress(TimeoutError):
                client.recv(0.1)
        made.set()
        thread.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosed), outcome
        client.send("made for the second")
        assert client.recv(WAIT).data == "made for the second"
    finally:
        made.set()
        client.close()
        thread.join(WAIT)


def test_close_on_a_broken_connection_announces_no_retry(proxy: Proxy) -> None:
    """The connection was reset under the client (the proxy went away; the client's next
    write drew the reset) and the application closes the client: the failed close frame
    must not announce a reconnection that will never come."""
    events: list[Event] = []
    client = ReconnectingClient(proxy.url("/echo/"), on_event=events.append)
    client.connect(WAIT)
    proxy.cut()
    client.send("into a closed socket: answered with a reset")
    _wait_for_the_reset(client)
    client.close()
    assert [e.type for e in events] == ["open"], events
    assert client.close_code == 1000


@pytest.mark.parametrize(("code", "reason"), [(1006, ""), (1000, "x" * 124)])
def test_close_with_a_code_or_reason_that_may_not_be_sent_still_closes(
    gevent: ServerProcess, code: int, reason: str
) -> None:
    """``close()`` with a code no endpoint may send (1006) or a reason over 123 bytes: the
    mistake is raised (``ValueError``), and the client is closed all the same; before, it
    counted as closed for good (a second ``close()`` did nothing) but its socket stayed
    open, the server never told."""
    client = ReconnectingClient(gevent.url("/echo/")).connect(WAIT)
    sock = client._sock
    assert sock is not None
    with pytest.raises(ValueError):
        client.close(code, reason)
    assert not client.connected and sock.fileno() == -1
    with pytest.raises(ConnectionClosed):
        client.recv(0.1)


def test_positions_and_events_follow_what_the_application_received(history: Proxy) -> None:
    """A recovery replay reaches the client in one read (the proxy hands the 101, three
    missed messages, ``joined`` and the view's first message over at once). The
    application sees ``positions`` move with each message it receives, and ``joined`` and
    ``recovered`` after the three messages they follow; a position it saves after the
    first message resumes from there (the other two come again), while the client itself
    resumes after all it read (no duplicates)."""
    url = history.url("/group/feed/follow/")
    with ReconnectingClient(url) as before:
        before.recv(WAIT)  # the view's first message: the client has joined
        start = before.positions["feed"]
    with ReconnectingClient(url) as sender:
        sender.recv(WAIT)
        for text in ("m1", "m2", "m3"):
            sender.send(text)
        sent = [sender.recv(WAIT) for _ in range(3)]
    assert [r.data for r in sent] == ["m1", "m2", "m3"]

    seen: list[object] = []
    history.hold(until=b'"recovery"')
    client = ReconnectingClient(
        url,
        positions={"feed": start},
        on_event=lambda e: seen.append(e.type),
        compression=False,  # plain frames: the proxy looks for the view's message on the wire
    )
    with client:
        for _ in range(4):
            received = client.recv(WAIT)
            seen.append((received.data, client.positions["feed"]))
            if received.data == "m1":
                saved = dict(client.positions)
                query = dict(parse_qsl(urlsplit(client._address()).query))
                resume = json.loads(query["dws_since"])
    p1, p2, p3 = (r.position for r in sent)
    assert seen[:6] == ["open", ("m1", p1), ("m2", p2), ("m3", p3), "joined", "recovered"]
    assert resume == {"feed": p3}
    with ReconnectingClient(url, positions=saved) as later:
        assert [later.recv(WAIT).data for _ in range(2)] == ["m2", "m3"]


def test_a_client_that_followed_many_groups_still_reconnects(history: Proxy) -> None:
    """Positions of 300 groups make a ``dws_since`` of ~19 KB, past every server's
    request-line limit (gevent answers 414): the client took the refusal as final and
    never reconnected. It now sends those that fit in ``since_limit``, the most recent
    first; a group left out and joined again gets ``recovery_failed`` with its ``since``,
    one kept is recovered."""
    url = history.url("/group/feed/follow/")
    with ReconnectingClient(url) as first:
        first.recv(WAIT)
        start = first.positions["feed"]
        first.send("missed")
        first.recv(WAIT)
    others = {f"room-{i}": f"1733312345678901:{i}" for i in range(300)}
    for positions, outcome in (
        ({"feed": start, **others}, "recovery_failed"),  # feed's position is the oldest
        ({**others, "feed": start}, "recovered"),
    ):
        events: list[Event] = []
        with ReconnectingClient(url, positions=positions, on_event=events.append) as client:
            got = [client.recv(WAIT).data for _ in range(2 if outcome == "recovered" else 1)]
            assert len(client._address()) < 2100
        (ended,) = [e for e in events if e.type in ("recovered", "recovery_failed")]
        assert ended.type == outcome and ended.group == "feed" and ended.since == start
        report = json.loads(got[-1])["recovery"]
        assert report["since"] == (start if outcome == "recovered" else None)
        assert got[:-1] == (["missed"] if outcome == "recovered" else [])


def test_a_kept_message_over_max_message_size_ends_the_resume_not_the_client(
    history: Proxy,
) -> None:
    """A message larger than the client's ``max_message_size`` closes the connection with
    1009. From a group's history it came again with every resume: the client reconnected
    with backoff for ever, and the messages after it never came. Whose message it was is
    not known (it was not read), so no group resumes then: the groups joined again say
    ``recovery_failed`` (the application reloads its state), and the client goes on."""
    url = history.url("/group/feed/follow/")
    with ReconnectingClient(url) as sender:
        sender.recv(WAIT)
        start = sender.positions["feed"]
        sender.send("x" * 2000)
        sender.send("after")
        assert [len(sender.recv(WAIT).data) for _ in range(2)] == [2000, 5]
    events: list[Event] = []
    client = ReconnectingClient(
        url,
        positions={"feed": start},
        max_message_size=1000,
        min_delay=0.05,
        max_delay=0.1,
        on_event=events.append,
    )
    with client:
        report = json.loads(client.recv(WAIT).data)["recovery"]
        assert report["since"] is None
        client.send("live")
        assert client.recv(WAIT).data == "live"
    closes = [e for e in events if e.type == "close"]
    assert [(e.code, e.will_retry) for e in closes] == [(1009, True)]
    (failed,) = [e for e in events if e.type == "recovery_failed"]
    assert failed.group == "feed" and failed.since == start


def _wait_for_the_reset(client: ReconnectingClient) -> None:
    """Until the kernel has the peer's reset for the client's socket (bounded)."""
    sock = client._sock
    assert sock is not None
    deadline = time.monotonic() + WAIT
    while not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        assert time.monotonic() < deadline, "no reset"
        time.sleep(0.01)


def test_the_client_imports_where_the_system_has_no_fcntl() -> None:
    """Windows has no ``fcntl``/``termios``: the client (a service's, a test's) must still
    import there, its heartbeat without the send queue's count (as before it had one)."""
    code = (
        "import sys, socket; sys.modules['fcntl'] = sys.modules['termios'] = None\n"
        "from dwebsocket.client import _unsent\n"
        "a, b = socket.socketpair(); print(_unsent(a))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert (done.returncode, done.stdout.strip()) == (0, "None"), done.stderr
