"""Caps on the WebSocket sessions a process runs at once: in total, and per client address.

``WEBSOCKET_MAX_CONNECTIONS`` and ``WEBSOCKET_MAX_CONNECTIONS_PER_IP`` (both ``None``, no
cap, by default). A handshake that would go over either is refused before the view runs
with **503 Service Unavailable** and ``Retry-After`` (:data:`RETRY_AFTER` seconds), logged
at INFO like any refused handshake.

A session holds its slot from the handshake's validation until the view has returned
and the connection is closed, whichever backend runs it (``dwebsocket.session.run_view``
takes and gives back the slot). The client address is ``REMOTE_ADDR``: behind a proxy
that is the proxy's, unless something trusted rewrites it (uvicorn does, from
``X-Forwarded-For``, for a proxy on the same host; see ``docs/security.rst``).

An IPv6 client is counted by its /64 network, the block one subscriber or host usually
gets (counting each address would let it open as many sessions as it has addresses:
2**64); an IPv4-mapped IPv6 address by its IPv4 address.

The counts are per process: with N worker processes the machine holds up to N times the
cap. Settings are read at each handshake, so ``override_settings`` works.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable

from django.http import HttpRequest

from dwebsocket.conf import settings
from dwebsocket.exceptions import TooManyConnections

__all__ = ["RETRY_AFTER", "TooManyConnections", "acquire", "client_key", "open_sessions"]

#: The ``Retry-After`` of a 503, in seconds: long enough not to invite a reconnect storm,
#: short enough for a browser's reconnect loop to succeed once load drops.
RETRY_AFTER = 5


# Never held across I/O (nor anything that could switch greenlets), so a plain lock is
# right with threads, greenlets and green threads alike.
_lock = threading.Lock()
_total = 0
_per_ip: dict[str, int] = {}


def acquire(request: HttpRequest) -> Callable[[], None]:
    """Take a slot for ``request``'s session; return the function that gives it back
    (call it once, when the session is over; further calls do nothing).

    Raises :class:`TooManyConnections` if the process is at ``WEBSOCKET_MAX_CONNECTIONS``
    or the client's address at ``WEBSOCKET_MAX_CONNECTIONS_PER_IP``; raises
    :class:`~dwebsocket.exceptions.InvalidSetting` for a setting that is not ``None`` or an
    integer >= 0.
    Never blocks.
    """
    global _total
    max_total = settings.WEBSOCKET_MAX_CONNECTIONS
    max_per_ip = settings.WEBSOCKET_MAX_CONNECTIONS_PER_IP
    address = client_key(str(request.META.get("REMOTE_ADDR") or ""))
    with _lock:
        if max_total is not None and _total >= max_total:
            raise TooManyConnections(
                f"too many WebSocket connections on this server (limit {max_total}); retry later",
                RETRY_AFTER,
            )
        from_address = _per_ip.get(address, 0)
        if max_per_ip is not None and from_address >= max_per_ip:
            raise TooManyConnections(
                f"too many WebSocket connections from {address or 'this address'} "
                f"(limit {max_per_ip}); retry later",
                RETRY_AFTER,
            )
        _total += 1
        _per_ip[address] = from_address + 1
    return _Slot(address)


class _Slot:
    """A slot :func:`acquire` took: calling it gives the slot back, once. (An object of
    two slots, not a closure: it lives as long as the connection.)"""

    __slots__ = ("_address", "_released")

    def __init__(self, address: str) -> None:
        self._address = address
        self._released = False

    def __call__(self) -> None:
        global _total
        with _lock:
            if self._released:
                return
            self._released = True
            _total -= 1
            left = _per_ip[self._address] - 1
            if left:
                _per_ip[self._address] = left
            else:
                del _per_ip[self._address]  # the map holds only addresses with sessions open


def client_key(address: str) -> str:
    """What ``WEBSOCKET_MAX_CONNECTIONS_PER_IP`` counts for a ``REMOTE_ADDR``: an IPv4
    address as it is, an IPv6 one as its /64 network (``"2001:db8:1:2::/64"``), an
    IPv4-mapped one as its IPv4 address; anything else (a Unix socket's empty address)
    as it is."""
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone
    except ValueError:
        return address
    if parsed.version == 4:
        return address
    mapped = parsed.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))


def open_sessions() -> tuple[int, dict[str, int]]:
    """``(sessions open in this process, {client (see client_key): sessions})``, a
    snapshot."""
    with _lock:
        return _total, dict(_per_ip)
