"""The Django app: registers dwebsocket's system checks."""

from __future__ import annotations

from django.apps import AppConfig


class DWebSocketConfig(AppConfig):
    name = "dwebsocket"
    verbose_name = "dwebsocket"

    def ready(self) -> None:
        from django.conf import settings

        from dwebsocket import checks  # noqa: F401  (registers the checks)
        from dwebsocket.contrib.shutdown import install_for_runserver
        from dwebsocket.log import install_debug_handler

        install_for_runserver()
        install_debug_handler(getattr(settings, "LOGGING", None))
