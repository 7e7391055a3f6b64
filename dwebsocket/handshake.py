"""The Django side of the opening handshake, shared by every backend.

``request.META`` goes to the core's ``parse_request``, then the Host (against
``ALLOWED_HOSTS``) and the Origin are checked; a refused handshake becomes an
``HttpResponse`` with the exception's status, a plain-text reason and its headers, logged
at INFO (a client's mistake is never a 500).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.http.request import host_validation_re, validate_host

from dwebsocket import metrics
from dwebsocket.conf import settings
from dwebsocket.exceptions import (
    BackendUnavailable,
    ForbiddenOrigin,
    InvalidHandshake,
    InvalidSetting,
)
from dwebsocket.log import printable
from dwebsocket.protocol.handshake import HandshakeRequest, parse_request, quoted

__all__ = [
    "OriginRule",
    "allowed_origins",
    "check_allowed_host",
    "check_host_and_origin",
    "check_origin",
    "find_middleware",
    "handshake_origin",
    "misconfigured",
    "origin_allowed",
    "origin_setting_errors",
    "parse_handshake",
    "parse_origin_rule",
    "refuse",
    "refuse_not_taken",
    "request_headers",
    "session_cookies",
    "unavailable",
]

logger = logging.getLogger("dwebsocket")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# What Django allows when DEBUG is on and ALLOWED_HOSTS is empty (HttpRequest.get_host).
_DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def request_headers(meta: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, lower-case names, from a WSGI environ / ``request.META``."""
    headers: dict[str, str] = {}
    for key, value in meta.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key == "CONTENT_LENGTH" and value not in ("", None):
            # Some servers put an empty CONTENT_LENGTH in every environ.
            headers["content-length"] = value
    return headers


def parse_handshake(request: HttpRequest) -> HandshakeRequest:
    """Validate ``request`` as an opening handshake and check its Host and Origin
    (:func:`check_host_and_origin`).

    Returns the core's ``HandshakeRequest``. Raises ``InvalidHandshake`` (400),
    ``UnsupportedVersion`` (426) or ``ForbiddenOrigin`` (403). Does not block.
    """
    meta = request.META
    headers = request_headers(meta)
    handshake = parse_request(meta.get("REQUEST_METHOD", ""), _http_version(meta), headers)
    check_host_and_origin(request, handshake.origin)
    if _asgi_http(request):
        raise _not_taken(headers.get("upgrade", ""))
    return handshake


def _asgi_http(request: HttpRequest) -> bool:
    """Whether ``request`` came from an ASGI ``http`` scope: an upgrade request the ASGI
    server did not take for a WebSocket handshake, and whose socket it keeps."""
    scope = getattr(request, "scope", None)
    return isinstance(scope, dict) and scope.get("type") == "http"


def _not_taken(upgrade: str) -> InvalidHandshake | BackendUnavailable:
    """Why an ASGI server passed an upgrade request on as plain HTTP (``upgrade``, its
    ``Upgrade`` header). uvicorn, hypercorn and daphne take a handshake only with
    ``Upgrade: websocket`` alone (any case): a list (valid, RFC 6455 4.2.1) is the
    client's to change, 400 (INFO). ``websocket`` alone means the server's WebSocket
    support is off: the deployment's to fix, 501 (ERROR once, :func:`unavailable`)."""
    if upgrade.strip(" \t").lower() == "websocket":
        return BackendUnavailable(
            "the ASGI server passed a WebSocket handshake on as plain HTTP: its WebSocket "
            "support is off or not installed (uvicorn: --ws auto, with websockets or "
            "wsproto installed)"
        )
    return InvalidHandshake(
        "this server takes a WebSocket handshake only with 'Upgrade: websocket', "
        f"got Upgrade: {quoted(upgrade)}"
    )


def refuse_not_taken(request: HttpRequest) -> HttpResponse | None:
    """The answer to an upgrade request that an ASGI server passed on as plain HTTP to an
    ``async def`` view (where no backend's factory runs): what :func:`parse_handshake`
    finds wrong, or why the server did not take it (:func:`_not_taken`). None for a
    request from elsewhere (a WSGI server). Does not block."""
    if not _asgi_http(request):
        return None
    try:
        parse_handshake(request)
    except InvalidHandshake as exc:
        return refuse(request, exc)
    except BackendUnavailable as exc:
        return unavailable(request, exc)
    except InvalidSetting as exc:  # as the sync session answers it
        return misconfigured(request, exc)
    raise AssertionError("parse_handshake() accepted a request from an http scope")


def _http_version(meta: Mapping[str, Any]) -> str:
    """The request line's HTTP version: ``SERVER_PROTOCOL``, except under eventlet.wsgi,
    which puts "HTTP/1.0" in every environ whatever the request line said and keeps the
    real one on its request handler (``request_version``), found on the call stack: its
    ``handle_one_response`` frame, whose handler's environ has this request's
    ``eventlet.input`` (a WSGI middleware may have copied the environ). "HTTP/1.1" if it
    is not there (a request passed to another green thread)."""
    if "eventlet.input" not in meta:
        return str(meta.get("SERVER_PROTOCOL", "HTTP/1.1"))
    wsgi = sys.modules.get("eventlet.wsgi")
    if wsgi is not None:
        code = wsgi.HttpProtocol.handle_one_response.__code__
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code is code:
                handler = frame.f_locals.get("self")
                version = getattr(handler, "request_version", None)
                environ = getattr(handler, "environ", None)
                if (
                    isinstance(environ, dict)
                    and environ.get("eventlet.input") is meta["eventlet.input"]
                    and isinstance(version, str)
                ):
                    return version
                break
            frame = frame.f_back
    return "HTTP/1.1"


def check_host_and_origin(request: HttpRequest, origin: str | None) -> None:
    """The checks of a handshake against the site's settings, for every backend (the
    ASGI one calls it too): its host (:func:`check_allowed_host`, 400), then its origin
    (:func:`check_origin`, 403; ``origin``, the value :func:`handshake_origin` reads).
    Does not block."""
    check_allowed_host(request)
    check_origin(origin)


def check_allowed_host(request: HttpRequest) -> None:
    """Raise ``InvalidHandshake`` (400) unless ``request.get_host()`` accepts the request's
    host: in ``ALLOWED_HOSTS`` (with ``DEBUG`` and none listed, the local names Django
    then allows), read from ``X-Forwarded-Host`` with ``USE_X_FORWARDED_HOST``.

    Django checks the host only when something calls ``get_host()`` (CommonMiddleware,
    the CSRF middleware, ``build_absolute_uri()``), and answers ``DisallowedHost`` with
    400: a project without such middleware took a handshake for any host, one that DNS
    rebinding pointed at the server included. Does not block."""
    try:
        request.get_host()
    except DisallowedHost:
        meta = request.META
        name, key = "Host", "HTTP_HOST"
        if django_settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in meta:
            name, key = "X-Forwarded-Host", "HTTP_X_FORWARDED_HOST"
        raise InvalidHandshake(
            f"{name} {quoted(str(meta.get(key, '')))} is not allowed (ALLOWED_HOSTS)"
        ) from None


def check_origin(origin: str | None) -> None:
    """Raise ``ForbiddenOrigin`` (403) unless :func:`origin_allowed` allows ``origin``
    (the ``Origin`` header's value, None without one). Does not block."""
    if origin is not None and not origin_allowed(origin):
        raise ForbiddenOrigin(f"Origin {quoted(origin)} is not allowed")


def handshake_origin(headers: Mapping[str, str]) -> str | None:
    """The origin a handshake's page declares (``headers`` as :func:`request_headers`
    gives them): ``Origin`` (RFC 6455 4.1), or in a handshake of the hybi drafts 8 to 12
    (``Sec-WebSocket-Version: 8``, which daphne still accepts) the name those drafts gave
    it, ``Sec-WebSocket-Origin``. None without either. Does not block."""
    origin = headers.get("origin")
    if origin is None and headers.get("sec-websocket-version", "13").strip() != "13":
        origin = headers.get("sec-websocket-origin")
    return origin


def _normalize_origin(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an ``Origin`` value (:func:`_serialized`), default
    ports dropped; None if it is not a URL origin (``"null"``, garbage). Its host is
    checked as Django checks ``Host`` before matching ``ALLOWED_HOSTS``:
    ``http://evil.com,x.example.com`` matched ``.example.com``."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not host_validation_re.match(parts.netloc.lower()) or parts[2:] != ("", "", ""):
        return None  # userinfo, a path, a query: not an origin (RFC 6454 6.1)
    # A trailing dot names the same host (Django drops it from Host before matching
    # ALLOWED_HOSTS, and a page at "example.com." sends that origin).
    host = (parts.hostname or "").lower().removesuffix(".")
    if not parts.scheme or not host:
        return None
    scheme = parts.scheme.lower()
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, host, port


# No serialized origin holds one (RFC 6454 6.2: scheme "://" host [":" port], ASCII): C0
# and C1 controls, DEL, spaces, and what else str.isspace() takes (NBSP, U+2028...).
_NOT_IN_AN_ORIGIN = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


def _serialized(origin: str) -> str | None:
    """An ``Origin`` header's value without the spaces and tabs around it (RFC 9110 5.5:
    not part of a field value, and some servers keep them); None if a control character
    or whitespace is left in it. urlsplit() removes tabs, CRs and LFs anywhere in a URL
    (bpo-43882), and ``str.strip()`` took any whitespace off its ends: the check read
    ``http://local\thost`` as ``http://localhost``, an origin the value is not."""
    value = origin.strip(" \t")
    return None if _NOT_IN_AN_ORIGIN.search(value) else value


def _host_for_django(host: str) -> str:
    """A hostname as ALLOWED_HOSTS spells it (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class OriginRule:
    """One entry of ``WEBSOCKET_ALLOWED_ORIGINS``, parsed.

    ``scheme`` and ``port`` are None for a host pattern (any scheme, any port).
    ``host`` is lower-case; ``subdomains`` means "a subdomain of ``host``, not ``host``
    itself" (``*.example.com``); ``apex_too`` means ``host`` and its subdomains
    (Django's ``.example.com``).
    """

    scheme: str | None
    host: str
    port: int | None
    subdomains: bool = False
    apex_too: bool = False

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if self.scheme is not None and (scheme != self.scheme or port != self.port):
            return False
        if self.subdomains or self.apex_too:
            if host.endswith("." + self.host):
                return True
            return self.apex_too and host == self.host
        return host == self.host


# A DNS name or an IPv4 address; an IPv6 literal (without its brackets) is checked by
# _valid_rule_host.
_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def _valid_rule_host(host: str) -> bool:
    """Whether ``host`` (lower-case, no brackets) is a DNS name, an IPv4 address or an IPv6
    address. A colon makes it an IPv6 address or nothing: "127.0.0.1:8000" and
    "face.cafe:8000" (a port without a scheme) are no host, though all their characters
    may appear in one."""
    if ":" not in host:
        return _HOST.fullmatch(host) is not None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def parse_origin_rule(entry: object) -> OriginRule | str | None:
    """Parse one ``WEBSOCKET_ALLOWED_ORIGINS`` entry: ``"*"`` (returned as is), an
    :class:`OriginRule`, or None when the entry is not one of the documented forms:

    - ``"*"``: every origin, ``null`` included;
    - ``"https://example.com"``, ``"https://example.com:8443"``: that exact origin
      (default ports may be left out);
    - ``"https://*.example.com"``: any subdomain of example.com (not example.com
      itself), with that scheme and port;
    - ``"example.com"``: that host, any scheme and port; ``".example.com"``: the host and
      its subdomains (as in ``ALLOWED_HOSTS``); ``"*.example.com"``: its subdomains only.

    A ``*`` anywhere else makes the entry invalid: it is never read as "anything".
    """
    if not isinstance(entry, str):
        return None
    value = entry.strip().lower()
    if value == "*":
        return "*"
    if value == "null":
        # Not a host pattern for a host named "null": the opaque origin browsers send, which
        # no entry but "*" allows (origin_setting_errors says why).
        return None
    scheme: str | None = None
    port: int | None = None
    host = value
    if "://" in value:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            return None
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query:
            return None
        if parts.username is not None or parts.fragment:
            return None
        if port == _DEFAULT_PORTS[scheme]:
            port = None
    subdomains = apex_too = False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif host.startswith("*."):
        host, subdomains = host[2:], True
    elif host.startswith(".") and scheme is None:
        host, apex_too = host[1:], True
    if not host or not _valid_rule_host(host):
        return None
    # As for the origin (_normalize_origin): "example.com." is example.com.
    return OriginRule(scheme, host.removesuffix("."), port, subdomains, apex_too)


def origin_setting_errors(configured: object) -> list[str]:
    """What is wrong with a ``WEBSOCKET_ALLOWED_ORIGINS`` value, one line per problem
    (empty if nothing). The system check ``dwebsocket.E010`` reports these; at runtime a
    wrong value refuses every browser handshake rather than allowing more than meant."""
    if configured is None:
        return []
    if isinstance(configured, (str, bytes)):
        return [
            f"WEBSOCKET_ALLOWED_ORIGINS is a string ({configured!r}), not a list of origins: "
            "it would be read one character at a time"
        ]
    if not isinstance(configured, (list, tuple, set, frozenset)):
        return [
            "WEBSOCKET_ALLOWED_ORIGINS must be None or a list of origins, not "
            f"{type(configured).__name__}"
        ]
    problems = []
    for entry in configured:
        if isinstance(entry, str) and entry.strip().lower() == "null":
            problems.append(
                'WEBSOCKET_ALLOWED_ORIGINS entry "null" cannot be allowed: browsers send '
                "Origin: null from sandboxed frames and file: pages, which any site can make, "
                'so it would allow every site ("*" says so openly)'
            )
        elif parse_origin_rule(entry) is None:
            problem = (
                f'WEBSOCKET_ALLOWED_ORIGINS entry {entry!r} is not an origin, a host pattern or "*"'
            )
            if isinstance(entry, str) and not entry.isascii():
                # Not computed for it: Python's idna codec (IDNA 2003) and browsers (UTS 46)
                # disagree on some names ("ß").
                problem += (
                    ": write an internationalized domain name as browsers send it, in "
                    "punycode (xn--...)"
                )
            problems.append(problem)
    return problems


def allowed_origins() -> tuple[list[str], bool]:
    """The active allow-list and whether it came from ``WEBSOCKET_ALLOWED_ORIGINS``.

    A ``WEBSOCKET_ALLOWED_ORIGINS`` that is not a list (or tuple, or set) of strings gives
    an empty list: the check fails closed (see :func:`origin_setting_errors`)."""
    configured = settings.WEBSOCKET_ALLOWED_ORIGINS
    if configured is not None:
        if isinstance(configured, (str, bytes)) or not isinstance(
            configured, (list, tuple, set, frozenset)
        ):
            return [], True
        return [entry for entry in configured if isinstance(entry, str)], True
    hosts = list(django_settings.ALLOWED_HOSTS)
    if django_settings.DEBUG and not hosts:
        hosts = list(_DEBUG_HOSTS)
    return hosts, False


_misconfiguration_logged: set[str] = set()


def _log_misconfiguration() -> None:
    """One ERROR per distinct problem: every browser handshake is refused until fixed."""
    for problem in origin_setting_errors(settings.WEBSOCKET_ALLOWED_ORIGINS):
        if problem not in _misconfiguration_logged:
            _misconfiguration_logged.add(problem)
            logger.error(
                "%s; those entries are ignored, so origins they were meant to allow get 403 "
                "(see manage.py check, dwebsocket.E010)",
                problem,
            )


def origin_allowed(origin: str | None) -> bool:
    """Whether a handshake with this ``Origin`` header may proceed.

    No Origin header (a non-browser client): allowed. One with a control character or
    whitespace in it (:func:`_serialized`), which no browser sends: refused, even where
    ``"*"`` allows everything else. By default the origin's host, any scheme and port,
    must match ``ALLOWED_HOSTS`` the way Django matches ``Host`` (``".example.com"``
    covers subdomains, ``"*"`` anything). ``WEBSOCKET_ALLOWED_ORIGINS`` replaces that list
    with the forms of :func:`parse_origin_rule`; entries that are not one of them never
    match (and are logged at ERROR once).
    """
    if origin is None:
        return True
    value = _serialized(origin)
    if value is None:
        return False
    origin = value
    patterns, explicit = allowed_origins()
    if not explicit:
        if "*" in patterns:
            return True
        parsed = _normalize_origin(origin)
        return parsed is not None and validate_host(_host_for_django(parsed[1]), patterns)
    _log_misconfiguration()
    rules = [parse_origin_rule(entry) for entry in patterns]
    if "*" in rules:
        return True
    parsed = _normalize_origin(origin)
    if parsed is None:
        return False
    scheme, host, port = parsed
    return any(isinstance(rule, OriginRule) and rule.matches(scheme, host, port) for rule in rules)


def _plain_response(
    reason: str, status: int, headers: Iterable[tuple[str, str]] = ()
) -> HttpResponse:
    response = HttpResponse(reason + "\n", status=status, content_type="text/plain; charset=utf-8")
    response["Content-Length"] = str(len(response.content))
    for name, value in headers:
        response[name] = value
    return response


def _peer(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", "?"))


def count_refused(request: HttpRequest, status: int) -> None:
    """Count an upgrade request answered with ``status`` instead of a 101. Under ASGI
    nothing: :mod:`dwebsocket.asgi` counts each refusal as it sends it, with the status
    the server answers (which may not be this one)."""
    if "dwebsocket.backends.asgi.session" in sys.modules:  # else no ASGI server here
        from dwebsocket.backends.asgi.session import connection_of

        if connection_of(request) is not None:
            return
    metrics.handshake(status)


def refuse(request: HttpRequest, exc: InvalidHandshake) -> HttpResponse:
    """The HTTP answer to a refused handshake: ``exc.status``, its reason, its headers."""
    logger.info(
        "WebSocket handshake refused with %s from %s for %s: %s",
        exc.status,
        _peer(request),
        printable(request.path),
        exc.reason,
    )
    count_refused(request, exc.status)
    headers = list(exc.headers)
    if exc.status == 426 and _passes_upgrade_header(request):
        # RFC 9110 15.5.22: a 426 MUST name the protocol to upgrade to.
        headers.append(("Upgrade", "websocket"))
    return _plain_response(exc.reason, exc.status, headers)


def _passes_upgrade_header(request: HttpRequest) -> bool:
    """Whether the server lets the application's response carry ``Upgrade``, a
    hop-by-hop header PEP 3333 lets a WSGI server refuse: the ones measured to pass it
    (gevent.pywsgi, gunicorn, eventlet.wsgi, uWSGI; uvicorn, hypercorn and daphne for an
    ASGI http scope). wsgiref (``manage.py runserver``) and waitress fail the request on
    it, a 500; an unknown server gets its 426 without it."""
    meta = request.META
    return (
        isinstance(getattr(request, "scope", None), dict)
        or "gunicorn.socket" in meta
        or "eventlet.input" in meta
        or "uwsgi.version" in meta
        or str(meta.get("SERVER_SOFTWARE", "")).startswith("gevent/")
    )


_unavailable_logged: set[str] = set()


def unavailable(request: HttpRequest, exc: BackendUnavailable) -> HttpResponse:
    """501 for a server the backend cannot take a connection over from.

    Logged at ERROR once per reason and process: the deployment is wrong, not the client,
    but any client can ask again (under an ASGI server, a handshake the server does not
    take for one, ``Upgrade: websocket, foo``, arrives as plain HTTP). Each refusal is
    logged at INFO, like any refused handshake.
    """
    reason = f"WebSockets are not available on this server: {exc}"
    if reason not in _unavailable_logged:
        _unavailable_logged.add(reason)
        logger.error("%s (%s from %s)", reason, printable(request.path), _peer(request))
    logger.info(
        "WebSocket handshake refused with 501 from %s for %s: %s",
        _peer(request),
        printable(request.path),
        reason,
    )
    count_refused(request, 501)
    return _plain_response(reason, 501)


_invalid_settings_logged: set[str] = set()


def misconfigured(request: HttpRequest, exc: InvalidSetting) -> HttpResponse:
    """503 for a handshake that met a wrong ``WEBSOCKET_*`` setting: the deployment is
    wrong, not the client, and the view never runs.

    The problem is logged at ERROR, naming the setting and its check id, once per problem
    and process (every handshake meets it until the setting is fixed); each refusal at
    INFO, like any refused handshake. The client is only told the server is
    misconfigured."""
    problem = str(exc)
    if problem not in _invalid_settings_logged:
        _invalid_settings_logged.add(problem)
        logger.error(
            "%s: WebSocket handshakes are refused with 503 until it is fixed "
            "(manage.py check reports it too)",
            problem,
        )
    logger.info(
        "WebSocket handshake refused with 503 from %s for %s: %s is invalid (%s)",
        _peer(request),
        printable(request.path),
        exc.setting,
        exc.check_id,
    )
    count_refused(request, 503)
    return _plain_response("WebSockets are not available: the server is misconfigured.", 503)


def session_cookies(request: HttpRequest) -> list[tuple[str, str]]:
    """The ``Set-Cookie`` headers Django's session middleware would put on an answer to
    ``request`` now, for its 101 (RFC 6455 4.1: the client processes them): a session
    written or given a new key during the handshake is saved and its cookie goes with
    the 101, which is the only answer the browser reads. Empty for a request whose
    session nothing changed, or with no session middleware.

    ``request.user`` is read first when dwebsocket's users app will read it once the
    socket is open: Django's ``get_user()`` may cycle the session key (a session hashed
    with a ``SECRET_KEY_FALLBACKS`` key), which must happen before the 101, not after.
    The session middleware's own ``process_response`` (the class in ``MIDDLEWARE``)
    makes the cookies, on a throwaway response, so its settings and engine apply; the
    session is then no longer counted as modified, so the same middleware at the end of
    the connection saves it again only for what the view wrote after the 101 (or for
    ``SESSION_SAVE_EVERY_REQUEST``). Raises what saving the session raises
    (``SessionInterrupted`` for a session deleted meanwhile)."""
    session = getattr(request, "session", None)
    if session is None:
        return []
    middleware = _session_middleware()
    if middleware is None:
        return []
    _read_user(request)
    response = middleware(lambda _: HttpResponse()).process_response(request, HttpResponse())
    session.modified = False
    return [("Set-Cookie", c.output(header="").strip()) for c in response.cookies.values()]


def find_middleware(paths: Sequence[Any], cls: type) -> tuple[int, type] | None:
    """The index and class of the first of ``paths`` (dotted paths, as in ``MIDDLEWARE``)
    that imports to ``cls`` or a subclass of it (a project's own, listed instead of it);
    None if none does. One that does not import is not it: Django reports it when it
    loads its middleware."""
    from django.utils.module_loading import import_string

    for index, path in enumerate(paths):
        try:
            found = import_string(path)
        except Exception:
            continue
        if isinstance(found, type) and issubclass(found, cls):
            return index, found
    return None


def _session_middleware() -> Any:
    """The ``SessionMiddleware`` (or subclass) in ``MIDDLEWARE``, None without one."""
    from django.contrib.sessions.middleware import SessionMiddleware

    found = find_middleware(getattr(django_settings, "MIDDLEWARE", None) or (), SessionMiddleware)
    return None if found is None else found[1]


def _read_user(request: HttpRequest) -> None:
    """Read ``request.user`` (see :func:`session_cookies`) when dwebsocket's users app
    will: what reading it raises is left for the users app to log once it reads it."""
    from django.apps import apps

    if not apps.is_installed("dwebsocket"):
        return
    user = getattr(request, "user", None)
    if user is not None:
        with contextlib.suppress(Exception):
            user.is_authenticated  # noqa: B018 -- loads the lazy user
