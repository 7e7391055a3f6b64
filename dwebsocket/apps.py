"""The Django app: registers dwebsocket's system checks."""

from __future__ import annotations

from django.apps import AppConfig


class DWebSocketConfig(AppConfig):
    name = "dwebsocket"
    verbose_name = "dwebsocket"

    def ready(self) -> None:
        from dwebsocket import checks  # noqa: F401  (registers the checks)
        from dwebsocket.contrib.shutdown import install_for_runserver

        install_for_runserver()
