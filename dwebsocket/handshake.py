"""The Django side of the opening handshake, shared by every backend.

``request.META`` goes to the core's ``parse_request``, then the Origin is checked; a refused
handshake becomes an ``HttpResponse`` with the exception's status, a plain-text reason and
its headers, logged at INFO (a client's mistake is never a 500).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.http.request import validate_host

from dwebsocket.conf import settings
from dwebsocket.exceptions import BackendUnavailable, ForbiddenOrigin, InvalidHandshake
from dwebsocket.protocol.handshake import HandshakeRequest, parse_request

__all__ = [
    "allowed_origins",
    "origin_allowed",
    "parse_handshake",
    "refuse",
    "request_headers",
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
    """Validate ``request`` as an opening handshake and check its Origin.

    Returns the core's ``HandshakeRequest``. Raises ``InvalidHandshake`` (400),
    ``UnsupportedVersion`` (426) or ``ForbiddenOrigin`` (403). Does not block.
    """
    meta = request.META
    protocol = meta.get("SERVER_PROTOCOL", "HTTP/1.1")
    if "eventlet.input" in meta:
        # eventlet.wsgi puts "HTTP/1.0" in every environ, whatever the request line said
        # (and keeps the real version to itself): there is nothing to check.
        protocol = "HTTP/1.1"
    handshake = parse_request(meta.get("REQUEST_METHOD", ""), protocol, request_headers(meta))
    if not origin_allowed(handshake.origin):
        raise ForbiddenOrigin(f"Origin {handshake.origin!r} is not allowed")
    return handshake


def _normalize_origin(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an ``Origin`` value, default ports dropped; None if it
    is not a URL origin (``"null"``, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, parts.hostname.lower(), port


def _host_for_django(host: str) -> str:
    """A hostname as ALLOWED_HOSTS spells it (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


def allowed_origins() -> tuple[list[str], bool]:
    """The active allow-list and whether it came from ``WEBSOCKET_ALLOWED_ORIGINS``."""
    configured = settings.WEBSOCKET_ALLOWED_ORIGINS
    if configured is not None:
        return list(configured), True
    hosts = list(django_settings.ALLOWED_HOSTS)
    if django_settings.DEBUG and not hosts:
        hosts = list(_DEBUG_HOSTS)
    return hosts, False


def origin_allowed(origin: str | None) -> bool:
    """Whether a handshake with this ``Origin`` header may proceed.

    No Origin header (a non-browser client): allowed. By default the origin's host, any
    scheme and port, must match ``ALLOWED_HOSTS`` the way Django matches ``Host``
    (``".example.com"`` covers subdomains, ``"*"`` anything). ``WEBSOCKET_ALLOWED_ORIGINS``
    replaces that list: an entry with a scheme (``"https://example.com:8443"``) must
    match scheme, host and port exactly (default ports may be left out); an entry
    without one is a host pattern as above; ``"*"`` allows every origin, even ``null``.
    """
    if origin is None:
        return True
    patterns, explicit = allowed_origins()
    if "*" in patterns:
        return True
    parsed = _normalize_origin(origin)
    if parsed is None:
        return False
    host = _host_for_django(parsed[1])
    host_patterns = [p for p in patterns if "://" not in p]
    if host_patterns and validate_host(host, host_patterns):
        return True
    if explicit:
        return any(parsed == _normalize_origin(p) for p in patterns if "://" in p)
    return False


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


def refuse(request: HttpRequest, exc: InvalidHandshake) -> HttpResponse:
    """The HTTP answer to a refused handshake: ``exc.status``, its reason, its headers."""
    logger.info(
        "WebSocket handshake refused with %s from %s for %s: %s",
        exc.status,
        _peer(request),
        request.path,
        exc.reason,
    )
    return _plain_response(exc.reason, exc.status, exc.headers)


def unavailable(request: HttpRequest, exc: BackendUnavailable) -> HttpResponse:
    """501 for a server the backend cannot take a connection over from.

    Logged at ERROR: the deployment is wrong, not the client.
    """
    reason = f"WebSockets are not available on this server: {exc}"
    logger.error("%s (%s from %s)", reason, request.path, _peer(request))
    return _plain_response(reason, 501)
