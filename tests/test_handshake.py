"""The Django side of the handshake: headers from META, the Origin check, refusals."""

from __future__ import annotations

import logging

import pytest
from django.test import AsyncRequestFactory, RequestFactory, override_settings

from dwebsocket.exceptions import (
    BackendUnavailable,
    ForbiddenOrigin,
    InvalidHandshake,
    UnsupportedVersion,
)
from dwebsocket.handshake import (
    handshake_origin,
    origin_allowed,
    origin_setting_errors,
    parse_handshake,
    refuse,
    refuse_not_taken,
    request_headers,
    unavailable,
)
from tests.inprocess import upgrade_headers

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_request_headers() -> None:
    meta = {
        "HTTP_SEC_WEBSOCKET_KEY": "k",
        "HTTP_UPGRADE": "websocket",
        "CONTENT_LENGTH": "",
        "CONTENT_TYPE": "x",
        "PATH_INFO": "/",
    }
    assert request_headers(meta) == {"sec-websocket-key": "k", "upgrade": "websocket"}
    assert request_headers({"CONTENT_LENGTH": "0"}) == {"content-length": "0"}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://127.0.0.1:8000", True),
        ("https://localhost", True),
        ("HTTP://LOCALHOST:1", True),
        ("http://evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("null", False),
        ("not a url", False),
        # Django drops a trailing dot from Host before matching ALLOWED_HOSTS: a page it
        # serves at "localhost." opens its WebSockets with that origin.
        ("http://localhost.:8000", True),
        ("http://127.0.0.1.", True),
        ("http://.", False),
        ("http://evil.example.", False),
    ],
)
def test_origin_from_allowed_hosts(origin: str | None, allowed: bool) -> None:
    assert origin_allowed(origin) is allowed


@override_settings(ALLOWED_HOSTS=[".example.com", "[::1]"])
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("https://chat.example.com:8443", True),
        ("https://example.com.evil", False),
        ("http://[::1]:8000", True),
        ("https://example.com.", True),
        ("https://chat.example.com.:8443", True),
        ("https://example.com.evil.", False),
        # Not an origin (RFC 6454), whatever its tail: Django's own Host check refuses them.
        ("http://evil.com,chat.example.com", False),
        ("https://user@chat.example.com", False),
        ("https://chat.example.com/", False),
    ],
)
def test_origin_leading_dot_and_ipv6(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin) is allowed


@override_settings(ALLOWED_HOSTS=["*"])
def test_origin_star_allows_everything() -> None:
    assert origin_allowed("http://anything.example")
    assert origin_allowed("null")


@override_settings(DEBUG=True, ALLOWED_HOSTS=[])
def test_origin_debug_default_hosts() -> None:
    assert origin_allowed("http://localhost:3000")
    assert origin_allowed("http://app.localhost")
    assert not origin_allowed("http://example.com")


@override_settings(
    WEBSOCKET_ALLOWED_ORIGINS=[
        "https://app.example.com",
        "http://localhost:3000",
        "partner.example",
    ]
)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("http://localhost:3000", True),
        ("http://localhost:3001", False),
        ("http://127.0.0.1", False),  # ALLOWED_HOSTS no longer applies
        ("https://partner.example:9000", True),  # scheme-less entry: a host pattern
        (None, True),
    ],
)
def test_origin_explicit_list(origin: str | None, allowed: bool) -> None:
    assert origin_allowed(origin) is allowed


@override_settings(WEBSOCKET_ALLOWED_ORIGINS=["*"])
def test_origin_explicit_star() -> None:
    assert origin_allowed("null")


@pytest.mark.parametrize(
    "origin",
    [
        # urlsplit() removes tabs, CRs and LFs anywhere in a URL (bpo-43882): these were
        # read as http://localhost and http://127.0.0.1.
        "http://local\thost",
        "http://127.0.\r0.1",
        "http://127.0.0.1\n",
        # str.strip() took any whitespace off the ends.
        "\x0bhttp://localhost",
        "http://localhost\x0c",
        "http://localhost\x1f",
        "http://localhost\x85",
        "\xa0http://localhost",
        "http://localhost\u2028",
        "http://localhost\x00",
        "http://local host",
    ],
)
def test_an_origin_with_a_control_character_or_whitespace_is_refused(origin: str) -> None:
    assert not origin_allowed(origin)
    for star in ({"ALLOWED_HOSTS": ["*"]}, {"WEBSOCKET_ALLOWED_ORIGINS": ["*"]}):
        with override_settings(**star):  # no browser sends one: not even "*" allows it
            assert not origin_allowed(origin)
    with pytest.raises(ForbiddenOrigin):
        parse_handshake(_request(Origin=origin))


def test_spaces_and_tabs_around_an_origin_are_not_part_of_it() -> None:
    # RFC 9110 5.5: optional whitespace around a field value, which some servers keep.
    assert origin_allowed(" \thttp://localhost \t")
    assert not origin_allowed(" \thttp://evil.example \t")


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        ({"origin": "https://a.example"}, "https://a.example"),
        (
            {"origin": "https://a.example", "sec-websocket-origin": "https://b.example"},
            "https://a.example",
        ),
        (
            {"sec-websocket-version": "8", "sec-websocket-origin": "https://b.example"},
            "https://b.example",
        ),
        ({"sec-websocket-version": "13", "sec-websocket-origin": "https://b.example"}, None),
        ({"sec-websocket-origin": "https://b.example"}, None),
        ({}, None),
    ],
)
def test_handshake_origin(headers: dict[str, str], origin: str | None) -> None:
    # The hybi drafts' name only where a draft's version says so (daphne accepts them).
    assert handshake_origin(headers) == origin


def _request(**headers: str):  # type: ignore[no-untyped-def]
    return RequestFactory().get("/ws/", headers=upgrade_headers(KEY, **headers))


def test_parse_handshake() -> None:
    handshake = parse_handshake(
        _request(**{"Sec-WebSocket-Protocol": "a, b", "Origin": "http://localhost"})
    )
    assert handshake.key == KEY
    assert handshake.subprotocols == ["a", "b"]
    assert handshake.origin == "http://localhost"


def test_parse_handshake_errors() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_handshake(_request(**{"Sec-WebSocket-Version": "8"}))
    with pytest.raises(InvalidHandshake) as info:
        parse_handshake(_request(**{"Sec-WebSocket-Key": "nope"}))
    assert info.value.status == 400
    with pytest.raises(ForbiddenOrigin):
        parse_handshake(_request(Origin="http://evil.example"))
    request = RequestFactory().post("/ws/", headers=upgrade_headers(KEY))
    with pytest.raises(InvalidHandshake):
        parse_handshake(request)


@pytest.mark.parametrize("origin", [None, "http://localhost", "http://evil.example"])
def test_a_host_outside_allowed_hosts_is_refused_before_the_origin(origin: str | None) -> None:
    """With no middleware that calls ``request.get_host()`` (CommonMiddleware, CSRF), the
    handshake took any Host: 400, as Django answers ``DisallowedHost``, before the Origin
    is read."""
    headers = {"Host": "evil.example", **({} if origin is None else {"Origin": origin})}
    for star in ({}, {"WEBSOCKET_ALLOWED_ORIGINS": ["*"]}):
        with override_settings(**star), pytest.raises(InvalidHandshake) as info:
            parse_handshake(_request(**headers))
        assert type(info.value) is InvalidHandshake and info.value.status == 400
        assert info.value.reason == "Host 'evil.example' is not allowed (ALLOWED_HOSTS)"


def test_the_host_is_checked_as_django_checks_it() -> None:
    assert parse_handshake(_request(Host="LOCALHOST.:8000"))
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert parse_handshake(_request(Host="app.localhost:8000"))
        with pytest.raises(InvalidHandshake, match=r"Host 'example\.com' is not allowed"):
            parse_handshake(_request(Host="example.com"))
    forwarded = {"Host": "localhost", "X-Forwarded-Host": "evil.example"}
    assert parse_handshake(_request(**forwarded))  # not read without USE_X_FORWARDED_HOST
    with override_settings(USE_X_FORWARDED_HOST=True):
        with pytest.raises(InvalidHandshake) as info:
            parse_handshake(_request(**forwarded))
        assert info.value.reason == "X-Forwarded-Host 'evil.example' is not allowed (ALLOWED_HOSTS)"
        assert parse_handshake(_request(**{**forwarded, "X-Forwarded-Host": "localhost"}))


def test_a_long_host_is_quoted_in_part() -> None:
    host = "h" * 65_536 + ".example"
    with pytest.raises(InvalidHandshake) as info:
        parse_handshake(_request(Host=host))
    assert info.value.reason == (
        f"Host {host[:100]!r}... ({len(host)} characters) is not allowed (ALLOWED_HOSTS)"
    )


def test_refuse(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dwebsocket"):
        response = refuse(_request(), UnsupportedVersion("version 8, expected 13"))
    assert response.status_code == 426
    assert response["Sec-WebSocket-Version"] == "13"
    assert "Upgrade" not in response  # an unknown server may refuse it (below)
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"version 8, expected 13\n"
    assert response["Content-Length"] == str(len(response.content))
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "version 8, expected 13" in record.getMessage()


def test_unavailable(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dwebsocket.handshake._unavailable_logged", set())
    with caplog.at_level(logging.DEBUG, logger="dwebsocket"):
        for _ in range(3):
            response = unavailable(_request(), BackendUnavailable("no socket here"))
    assert response.status_code == 501
    assert b"no socket here" in response.content
    # The deployment's fault, said once; each refusal at INFO (any client can ask again).
    levels = [r.levelno for r in caplog.records if "no socket here" in r.getMessage()]
    assert levels == [logging.ERROR, logging.INFO, logging.INFO, logging.INFO]


# -- WEBSOCKET_ALLOWED_ORIGINS: each documented form, and mistakes that must not widen it --

EVIL = "https://evil.example"


@pytest.mark.parametrize(
    "configured",
    [
        "*.example.com",  # a string: once read as a list of characters, "*" among them
        "https://*.example.com",
        "https://example.com",
        ("https://example.com"),  # a one-element tuple without its comma is a string
        "*",
    ],
)
def test_a_string_setting_refuses_instead_of_widening(
    configured: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dwebsocket.handshake._misconfiguration_logged", set())
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=configured):
        assert not origin_allowed(EVIL)
        assert not origin_allowed("https://example.com")
        assert not origin_allowed("https://app.example.com")
        assert origin_allowed(None)  # no Origin: not a browser, as before
    assert "WEBSOCKET_ALLOWED_ORIGINS is a string" in caplog.text


@pytest.mark.parametrize(
    ("entry", "allowed", "refused"),
    [
        (
            "https://example.com",
            [
                "https://example.com",
                "https://example.com:443",
                "https://EXAMPLE.com",
                "https://example.com.",
            ],
            ["http://example.com", "https://app.example.com", "https://example.com:8443"],
        ),
        (
            "https://example.com:8443",
            ["https://example.com:8443"],
            ["https://example.com", "http://example.com:8443"],
        ),
        (
            "https://*.example.com",
            ["https://app.example.com", "https://a.b.example.com", "https://app.example.com."],
            [
                "https://example.com",
                "http://app.example.com",
                "https://app.example.com:8443",
                "https://app.example.com.evil",
                "https://evilexample.com",
            ],
        ),
        (
            "*.example.com",
            ["https://app.example.com", "http://app.example.com:8000"],
            ["https://example.com", "https://evilexample.com", "https://example.com.evil"],
        ),
        (
            ".example.com",
            ["https://example.com", "http://app.example.com:8000"],
            ["https://evilexample.com", "https://example.com.evil"],
        ),
        (
            "example.com",
            ["https://example.com", "http://example.com:8000"],
            ["https://app.example.com", "https://example.com.evil"],
        ),
        (
            "http://[::1]:8000",
            ["http://[::1]:8000"],
            ["http://[::1]:8001", "http://127.0.0.1:8000"],
        ),
        ("[::1]", ["http://[::1]:8000", "https://[::1]"], ["http://127.0.0.1"]),
        (
            "https://example.com.",
            ["https://example.com", "https://example.com."],
            ["https://app.example.com."],
        ),
    ],
)
def test_each_documented_form(entry: str, allowed: list[str], refused: list[str]) -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=[entry]):
        for origin in allowed:
            assert origin_allowed(origin), (entry, origin)
        for origin in [*refused, EVIL, "null", "garbage"]:
            assert not origin_allowed(origin), (entry, origin)


@pytest.mark.parametrize(
    "entry",
    [
        "https://ex*ample.com",
        "*example.com",
        "https://*",
        "https://example.com/path",
        "ftp://example.com",
        "example.com:8000",
        "**.example.com",
        "",
        42,
        "null",
        " NULL ",
    ],
)
def test_an_entry_that_is_no_documented_form_matches_nothing(entry: object) -> None:
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=[entry, "https://ok.example"]):
        assert not origin_allowed(EVIL)
        assert not origin_allowed("https://example.com")
        assert origin_allowed("https://ok.example")  # the valid entries still apply


@override_settings(WEBSOCKET_ALLOWED_ORIGINS="https://*.example.com")
def test_a_string_setting_gets_403_at_the_handshake() -> None:
    with pytest.raises(ForbiddenOrigin):
        parse_handshake(_request(Origin=EVIL))


def test_a_refused_origin_is_quoted_in_part(caplog: pytest.LogCaptureFixture) -> None:
    """A 64 KiB Origin is named in the 403 and its log line by its first 100 characters
    and its length, not echoed whole."""
    origin = "https://" + "e" * 65_536 + ".example"
    with pytest.raises(ForbiddenOrigin) as info:
        parse_handshake(_request(Origin=origin))
    assert (
        info.value.reason == f"Origin {origin[:100]!r}... ({len(origin)} characters) is not allowed"
    )
    with caplog.at_level(logging.INFO, logger="dwebsocket"):
        response = refuse(_request(), info.value)
    assert response.status_code == 403 and len(response.content) < 300
    assert len(caplog.records[0].getMessage()) < 400


def _asgi_request(key: str, **headers: str):  # type: ignore[no-untyped-def]
    """An upgrade request from an ASGI http scope (its factory sends a Host of its own)."""
    headers = {k: v for k, v in upgrade_headers(key, **headers).items() if k != "Host"}
    return AsyncRequestFactory().get("/ws/", headers=headers)


@pytest.mark.parametrize(
    ("upgrade", "status", "reason"),
    [
        ("websocket, foo", 400, "only with 'Upgrade: websocket', got Upgrade: 'websocket, foo'"),
        ("foo, websocket", 400, "only with 'Upgrade: websocket'"),
        # "websocket" alone is what every ASGI server takes: its WebSocket support is off.
        ("WebSocket", 501, "the ASGI server passed a WebSocket handshake on as plain HTTP"),
    ],
)
def test_an_upgrade_an_asgi_server_passed_on_as_http(
    upgrade: str, status: int, reason: str
) -> None:
    request = _asgi_request(KEY, Upgrade=upgrade)
    with pytest.raises((InvalidHandshake, BackendUnavailable), match=reason):
        parse_handshake(request)
    response = refuse_not_taken(request)
    assert response is not None
    assert response.status_code == status
    assert reason in response.content.decode()


def test_an_upgrade_passed_on_as_http_is_checked_first() -> None:
    # What is wrong with the handshake itself comes first: the client's to fix anyway.
    bad_key = _asgi_request("short", Upgrade="websocket, foo")
    response = refuse_not_taken(bad_key)
    assert response is not None and response.status_code == 400
    assert b"invalid Sec-WebSocket-Key" in response.content
    foreign = _asgi_request(KEY, Upgrade="websocket, foo", Origin="http://evil.example")
    response = refuse_not_taken(foreign)
    assert response is not None and response.status_code == 403
    assert refuse_not_taken(_request()) is None  # not from an ASGI server


@pytest.mark.parametrize(
    ("meta", "upgrade"),
    [
        ({"SERVER_SOFTWARE": "gevent/26.9 Python/3.11"}, "websocket"),
        ({"gunicorn.socket": object()}, "websocket"),
        ({"eventlet.input": object()}, "websocket"),
        ({"uwsgi.version": b"2.0.31"}, "websocket"),
        ({"SERVER_SOFTWARE": "WSGIServer/0.2 CPython/3.11"}, None),  # runserver
        ({"SERVER_SOFTWARE": "waitress"}, None),
    ],
)
def test_a_426_carries_upgrade_where_the_server_lets_it(
    meta: dict[str, object], upgrade: str | None
) -> None:
    # RFC 9110 15.5.22: a 426 MUST carry Upgrade; PEP 3333 lets a WSGI server refuse
    # hop-by-hop headers from the application, and wsgiref and waitress do (a 500).
    request = RequestFactory().get("/ws/", headers=upgrade_headers(KEY), **meta)
    response = refuse(request, UnsupportedVersion("version 8, expected 13"))
    assert response.get("Upgrade") == upgrade


def test_an_internationalized_host_in_allowed_origins_says_how_to_write_it() -> None:
    # Browsers send an IDN's origin in its ASCII form (xn--...); an entry written in
    # Unicode matches nothing, and the check said only "is not an origin".
    [problem] = origin_setting_errors(["https://bücher.example"])
    assert "xn--" in problem and "punycode" in problem, problem
    assert origin_setting_errors(["https://xn--bcher-kva.example"]) == []
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=["https://xn--bcher-kva.example"]):
        assert origin_allowed("https://xn--bcher-kva.example")
