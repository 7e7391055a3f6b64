"""The ASGI servers of ``tests/servers.py`` for the tests in this folder.

``server`` here is one ASGI server (uvicorn, daphne, hypercorn) running the test project
through ``dwebsocket.asgi``, with the sync views of ``tests/urls.py`` (``-sync``) or the
same URLs served by ``async def`` views (``-async``, ``tests/asgi/async_urls.py``); it
replaces the WSGI ``server`` fixture for this folder, so the shared tests imported into
``test_shared.py`` run on each. ``DWEBSOCKET_TEST_ASGI_SERVERS=uvicorn`` picks servers.

Where a server cannot do what a shared test asks, the test is marked here with the
reason, as a strict xfail (:data:`CANNOT`): a server that learned it would fail the run.
What depends on the server's release (:data:`VARIES`) is a non-strict one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import wire
from tests.servers import ASGI_SERVERS, ServerProcess, start_server

HERE = Path(__file__).resolve().parent

KINDS = {"sync": "tests.asgi.urls", "async": "tests.asgi.async_urls"}


def asgi_servers() -> list[str]:
    names = [n.strip() for n in os.environ.get("DWEBSOCKET_TEST_ASGI_SERVERS", "").split(",")]
    chosen = [name for name in names if name]
    unknown = sorted(set(chosen) - set(ASGI_SERVERS))
    if unknown:
        raise ValueError(f"DWEBSOCKET_TEST_ASGI_SERVERS names no server {unknown}")
    return chosen or list(ASGI_SERVERS)


def start_asgi(name: str, kind: str, log: Path, **settings: object) -> ServerProcess:
    """ASGI server ``name`` with the ``kind`` ("sync" or "async") views."""
    return start_server(name, log, settings={"ROOT_URLCONF": KINDS[kind], **settings})


@pytest.fixture(
    scope="session", params=[f"{name}-{kind}" for name in asgi_servers() for kind in KINDS]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    name, kind = request.param.rsplit("-", 1)
    srv = start_asgi(name, kind, tmp_path_factory.mktemp(request.param) / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
    assert_no_unexpected_traceback(srv)


def assert_no_unexpected_traceback(server: ServerProcess) -> None:
    """No traceback in the server's log but Django's log of the views that raise on
    purpose (daphne and hypercorn configure the root logger, so Django's ERROR for a view
    that raised reaches their output; under WSGI servers it goes nowhere). An exception
    group's header (Django 6.1's ``ASGIHandler`` runs a request in a ``TaskGroup``) is not
    a block of its own: each exception it holds is one, and is checked."""
    blocks = re.split(r"(?<!Exception Group )Traceback", server.log())[1:]
    unexpected = [
        block
        for block in blocks
        if "on purpose" not in block.split("\n\n")[0]
        and not _hypercorn_stopping(block)
        and not _uvicorn_pipelined(block)
    ]
    assert not unexpected, f"{server.name} printed a traceback:\n{server.log()}"


def _hypercorn_stopping(block: str) -> bool:
    """hypercorn's own CancelledError when it stops with a session it answered 400 and
    never reported to the application (:data:`HYPERCORN_PIPELINED`): one per such session,
    each followed by the next one's "Exception in callback" line."""
    block = block.split("\nException in callback")[0]
    return "hypercorn/asyncio/run.py" in block and block.rstrip().endswith("CancelledError")


def _uvicorn_pipelined(block: str) -> bool:
    """uvicorn's own error when it answers a plain request on a connection it handed to
    its WebSocket protocol meanwhile (:data:`UVICORN_PIPELINED`)."""
    return "uvicorn/protocols/http/httptools_impl.py" in block and (
        "RuntimeError: unable to perform operation on <TCPTransport closed=True" in block
    )


#: uvicorn 0.55, protocols/http/httptools_impl.py: ``data_received`` hands the connection
#: to the WebSocket protocol as soon as the parser meets the upgrade, while the request
#: before it still runs; its answer then goes to a transport uvicorn calls closed.
UVICORN_PIPELINED = (
    "uvicorn defect: an upgrade pipelined after a plain request is taken over at once, so "
    "its 101 goes out first and the plain request's answer follows it inside the WebSocket "
    "stream, or is lost (uvicorn logs 'Exception in ASGI application': RuntimeError, the "
    "handler is closed)"
)


#: hypercorn 0.18, protocol/ws_stream.py, WSStream.handle: Data before the accept gets
#: ``_send_error_response(400)`` and ``closed = True`` after ``spawn_app`` and
#: ``websocket.connect``; once closed, ``handle`` returns before its StreamClosed branch
#: (the only ``websocket.disconnect``) and ``app_send`` drops every message.
HYPERCORN_PIPELINED = (
    "hypercorn defect: a frame in the same TCP segment as the upgrade request makes it "
    "answer 400 after it started the application, which is then never sent "
    "websocket.disconnect (and whose sends are dropped without an error): the view runs, "
    "a sync one holding its thread, until hypercorn stops"
)
_NO_PING = "ASGI has no ping event: ws.ping() sends nothing, the server pings on its schedule"
_PIPELINED = "{} defect: a frame in the same TCP segment as the upgrade request is lost{}"
_ECHOES_REASON = (
    "the close reply is the server's: {} echoes the client's reason with its code "
    "(RFC 6455 5.5.1 allows it; dwebsocket's own backend echoes the code only)"
)
_NO_426 = (
    "{} defect: an unsupported Sec-WebSocket-Version gets 400, not 426 with "
    "Sec-WebSocket-Version: 13 (RFC 6455 4.4)"
)
_DAPHNE_CODES = (
    "daphne defect: autobahn's sendClose() takes only 1000 and 3000-4999, so the "
    "application's 1009/1011 never leave and the connection stays open until the peer leaves"
)
_DAPHNE_EMPTY = (
    "daphne defect: an empty message the application sends is dropped "
    "(ws_protocol.handle_reply tests text/bytes for truth)"
)
_DAPHNE_REASON = "daphne defect: websocket.close's reason is dropped (serverClose sends the code)"
_HTTP_1_0 = (
    "{} defect: an HTTP/1.0 upgrade request is accepted with 101 (RFC 6455 4.1 asks for "
    "HTTP/1.1){}; the application is not told the version"
)
_NO_HTTP_RESPONSE = (
    "daphne has no websocket.http.response extension: a refusal is a bare 403 "
    "(ASGI's close before accept), without the view's status or body"
)

#: What ASGI itself cannot do, or a server does otherwise: (test, server or None for all,
#: a part of the test id or None) -> reason.
CANNOT: dict[tuple[str, str | None, str | None], str] = {
    ("test_server_ping_reaches_the_client", None, None): _NO_PING,
    # uvicorn
    ("test_handshake_and_first_frame_in_one_segment", "uvicorn", None): _PIPELINED.format(
        "uvicorn", " (httptools_impl.handle_websocket_upgrade replays the request head only)"
    ),
    ("test_nothing_after_the_close_frame_when_the_client_closes", "uvicorn", None): (
        _ECHOES_REASON.format("uvicorn")
    ),
    ("test_refused_handshakes", "uvicorn", "426"): _NO_426.format("uvicorn"),
    ("test_an_http_1_0_upgrade_is_refused_400", "uvicorn", None): _HTTP_1_0.format(
        "uvicorn", " (httptools_impl.handle_websocket_upgrade replays the head as HTTP/1.1)"
    ),
    ("test_a_request_pipelined_before_an_upgrade_is_answered_first", "uvicorn", None): (
        UVICORN_PIPELINED
    ),
    # hypercorn
    ("test_handshake_and_first_frame_in_one_segment", "hypercorn", None): HYPERCORN_PIPELINED,
    ("test_nothing_after_the_close_frame_when_the_client_closes", "hypercorn", None): (
        _ECHOES_REASON.format("hypercorn")
    ),
    ("test_protocol_error_closes_1002_and_eof", "hypercorn", None): (
        "hypercorn defect: a reserved opcode ends the TCP connection without a close frame "
        "(no 1002, RFC 6455 7.1.7); the application gets websocket.disconnect 1006"
    ),
    ("test_refused_handshakes", "hypercorn", "400"): (
        "hypercorn defect: a Sec-WebSocket-Key that is not 16 bytes of base64 is accepted "
        "(RFC 6455 4.2.1)"
    ),
    ("test_refused_handshakes", "hypercorn", "426"): _NO_426.format("hypercorn"),
    ("test_an_http_1_0_upgrade_is_refused_400", "hypercorn", None): (
        "hypercorn answers an HTTP/1.0 upgrade request itself, with an empty 400"
    ),
    ("test_client_closes_with_code_and_reason", "hypercorn", None): (
        "hypercorn defect: the client's close code and reason are not passed on: "
        "websocket.disconnect says 1006 (ws_stream: StreamClosed while CONNECTED)"
    ),
    # granian
    ("test_client_closes_with_code_and_reason", "granian-asgi", None): (
        "granian defect: websocket.disconnect carries the client's close code, not its reason"
    ),
    ("test_compression_negotiated_unless_the_client_declines", "granian-asgi", "deflate"): (
        "granian negotiates no permessage-deflate"
    ),
    ("test_nothing_after_the_close_frame_when_the_client_closes", "granian-asgi", None): (
        _ECHOES_REASON.format("granian")
    ),
    ("test_nothing_after_the_close_frame_when_the_server_closes", "granian-asgi", None): (
        "granian closes the TCP connection right after its close frame, without waiting "
        "for the client's (RFC 6455 7.1.1): the client's close frame meets a reset"
    ),
    ("test_protocol_error_closes_1002_and_eof", "granian-asgi", None): (
        "granian defect: a protocol violation is answered with a close frame without a "
        "status code, not 1002 (RFC 6455 7.4.1)"
    ),
    ("test_refused_handshakes", "granian-asgi", "400"): (
        "granian defect: a Sec-WebSocket-Key that is not 16 bytes of base64 is accepted "
        "(RFC 6455 4.2.1)"
    ),
    ("test_refused_handshakes", "granian-asgi", "426"): _NO_426.format("granian"),
    ("test_an_http_1_0_upgrade_is_refused_400", "granian-asgi", None): _HTTP_1_0.format(
        "granian", ""
    ),
    # daphne
    ("test_echo", "daphne", None): _DAPHNE_EMPTY,
    ("test_compression_negotiated_unless_the_client_declines", "daphne", "None"): (_DAPHNE_EMPTY),
    ("test_compression_negotiated_unless_the_client_declines", "daphne", "deflate"): (
        "daphne negotiates no permessage-deflate"
    ),
    ("test_client_closes_with_code_and_reason", "daphne", None): (
        "daphne defect: the client's close code is not echoed (RFC 6455 5.5.1): it gets 1000"
    ),
    ("test_handshake_and_first_frame_in_one_segment", "daphne", None): _PIPELINED.format(
        "daphne", ""
    ),
    ("test_nothing_after_the_close_frame_when_the_server_closes", "daphne", None): (_DAPHNE_REASON),
    ("test_server_closes_with_code_and_reason", "daphne", None): _DAPHNE_REASON,
    ("test_over_the_message_limit_closes_1009", "daphne", None): _DAPHNE_CODES,
    ("test_view_error_closes_1011", "daphne", None): _DAPHNE_CODES,
    ("test_sessions_end_without_noise_in_the_server_log", "daphne", None): _DAPHNE_CODES,
    ("test_protocol_error_closes_1002_and_eof", "daphne", None): (
        "daphne defect: a reserved opcode resets the TCP connection without a close frame "
        "(no 1002, RFC 6455 7.1.7)"
    ),
    ("test_an_http_1_0_upgrade_is_refused_400", "daphne", None): _HTTP_1_0.format("daphne", ""),
    ("test_an_upgrade_with_a_body_is_refused_400", "daphne", None): (
        "daphne: an upgrade request with a body (Content-Length or chunked) gets its bare "
        "403 (no websocket.http.response), and one whose body is not sent yet no answer: "
        "daphne waits for the body before it starts the application"
    ),
    ("test_refused_before_accepting", "daphne", None): _NO_HTTP_RESPONSE,
    ("test_refused_before_accepting_with_a_streamed_body", "daphne", None): _NO_HTTP_RESPONSE,
    ("test_refused_handshakes", "daphne", "403"): _NO_HTTP_RESPONSE,
    ("test_an_upgrade_without_one_host_is_refused_400", "daphne", "empty"): _NO_HTTP_RESPONSE,
    ("test_an_upgrade_without_one_host_is_refused_400", "daphne", "two"): _NO_HTTP_RESPONSE,
    ("test_refused_handshakes", "daphne", "400"): (
        "daphne answers a malformed Sec-WebSocket-Key itself, with an empty 400"
    ),
    ("test_a_client_that_sends_faster_than_the_view_reads_is_pushed_back", "daphne", None): (
        "daphne defect: it reads on whatever the application takes, queueing every message "
        "for it without bound (server.py, create_application: an asyncio.Queue() without "
        "maxsize): a client that sends faster than the view reads grows the process"
    ),
    ("test_refused_handshakes", "daphne", "426"): (
        "daphne defect: Sec-WebSocket-Version 8 is accepted with 101 (autobahn still speaks "
        "the hybi drafts)"
    ),
}


@pytest.fixture(autouse=True)
def _short_waits_where_a_defect_is_expected(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("xfail")
    if marker is None or marker.kwargs.get("reason") not in CANNOT.values():
        yield
        return
    with wire.defect_waits(request.function):
        yield


#: What a server's release decides, not dwebsocket: a non-strict xfail (the server's
#: newest release may do it right, an older one the tests also run on not).
VARIES: dict[tuple[str, str | None, str | None], str] = {
    ("test_an_upgrade_with_a_body_is_refused_400", "uvicorn", None): (
        "uvicorn's answer to an upgrade request with a body depends on its release: its "
        "own 400 in 0.55 (websockets 17), no answer in 0.54 (websockets 16, the newest on "
        "Python 3.10); 0.31 (the lowest session) takes it, and dwebsocket answers 400"
    ),
}


def reason_for(
    name: str, server: str, test_id: str, table: dict[tuple[str, str | None, str | None], str]
) -> str | None:
    for (test, on, part), reason in table.items():
        if test == name and on in (None, server) and (part is None or part in test_id):
            return reason
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("server") if callspec is not None else None
        if not isinstance(param, str):
            continue
        name = getattr(item, "originalname", item.name)
        server = param.rsplit("-", 1)[0]
        for table, strict in ((CANNOT, True), (VARIES, False)):
            reason = reason_for(name, server, callspec.id, table)
            if reason is not None:
                item.add_marker(pytest.mark.xfail(strict=strict, reason=reason))
