"""The abstract factory a backend provides, and loading it from ``WEBSOCKET_FACTORY_CLASS``."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

from dwebsocket.exceptions import InvalidSetting

if TYPE_CHECKING:
    from django.http import HttpRequest

    from dwebsocket.websocket import WebSocket

__all__ = ["WebSocketFactory", "get_factory_class", "is_upgrade"]


def is_upgrade(request: HttpRequest) -> bool:
    """True if the request asks for a WebSocket (``Upgrade: websocket``); cheap. The one
    test of an upgrade: the session, the middleware and the factories all ask it."""
    upgrade = request.META.get("HTTP_UPGRADE", "")
    return "websocket" in (token.strip().lower() for token in upgrade.split(","))


class WebSocketFactory(abc.ABC):
    """Creates ``request.websocket`` for one request."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request

    def is_websocket(self) -> bool:
        """True if the request asks for a WebSocket upgrade (:func:`is_upgrade`)."""
        return is_upgrade(self.request)

    @abc.abstractmethod
    def create_websocket(self) -> WebSocket | None:
        """Validate the handshake and return an unaccepted WebSocket, or None for plain HTTP.

        Raises :class:`~dwebsocket.exceptions.InvalidHandshake` (answered with its HTTP
        status) for a malformed, unsupported or forbidden handshake, and
        :class:`~dwebsocket.exceptions.BackendUnavailable` when the server cannot hand over
        its connection."""


def get_factory_class() -> type[WebSocketFactory]:
    """The factory class named by ``WEBSOCKET_FACTORY_CLASS``, imported now.

    Raises :class:`~dwebsocket.exceptions.InvalidSetting` (check ``dwebsocket.E012``) if
    the setting is not a dotted path, cannot be imported, or names something else than a
    :class:`WebSocketFactory` subclass."""
    from dwebsocket.conf import FACTORY_CLASS

    path = FACTORY_CLASS.read()
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise InvalidSetting(
            FACTORY_CLASS.name,
            path,
            f"{FACTORY_CLASS.name} {path!r} cannot be imported: {exc}",
            FACTORY_CLASS.check_id,
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, WebSocketFactory)):
        raise InvalidSetting(
            FACTORY_CLASS.name,
            path,
            f"{FACTORY_CLASS.name} {path!r} is not a subclass of "
            "dwebsocket.factory.WebSocketFactory",
            FACTORY_CLASS.check_id,
        )
    return cls
