"""Accepting an opening handshake, server side (RFC 6455 4.2.2): what the backends share.

:func:`accept` is the pure part of saying yes to a validated request: it negotiates
permessage-deflate (RFC 7692), writes the 101 response and makes the :class:`Connection`
the session then runs on. Taking the socket over and writing the bytes is the backend's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .connection import Connection
from .deflate import PerMessageDeflate
from .handshake import HandshakeRequest, build_response

__all__ = ["Accepted", "accept"]


@dataclass(frozen=True)
class Accepted:
    """The outcome of :func:`accept`: the 101 to write, and the connection it opens."""

    response: bytes
    connection: Connection

    @property
    def compression(self) -> bool:
        """Whether permessage-deflate was negotiated."""
        return self.connection.deflate is not None


def accept(
    request: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    compression: bool = True,
    max_message_size: int | None = 2**20,
    max_frame_size: int | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Accepted:
    """Accept ``request`` (from ``parse_request``): the 101 response and the connection.

    ``subprotocol`` must be one the client offered (else ``ValueError``). With
    ``compression``, the client's first acceptable permessage-deflate offer is taken
    (``PerMessageDeflate.negotiate``'s defaults). The limits go to the
    :class:`Connection`. ``extra_headers`` go on the 101 after its own (``Set-Cookie``,
    say). Does no I/O.
    """
    deflate = extensions = None
    if compression:
        negotiated = PerMessageDeflate.negotiate(request.extensions)
        if negotiated is not None:
            deflate, extensions = negotiated
    response = build_response(
        request, subprotocol=subprotocol, extensions=extensions, extra_headers=extra_headers
    )
    connection = Connection(
        deflate=deflate, max_message_size=max_message_size, max_frame_size=max_frame_size
    )
    return Accepted(response, connection)
