"""The Django app: registers dwebsocket's system checks."""

from __future__ import annotations

import logging

from django.apps import AppConfig, apps

_not_installed_reported = False


class DWebSocketConfig(AppConfig):
    name = "dwebsocket"
    verbose_name = "dwebsocket"

    def ready(self) -> None:
        from django.conf import settings

        from dwebsocket import (
            checks,  # noqa: F401  (registers the checks)
            users,
        )
        from dwebsocket.contrib.shutdown import install_for_runserver
        from dwebsocket.log import install_debug_handler

        install_for_runserver()
        users.connect_signals()
        install_debug_handler(getattr(settings, "LOGGING", None))


def report_if_not_installed() -> None:
    """Without ``"dwebsocket"`` in ``INSTALLED_APPS`` no system check of ours runs (they
    register in :meth:`DWebSocketConfig.ready`): say so once, at the first WebSocket
    request, with what the checks find, instead of letting them vanish silently."""
    global _not_installed_reported
    if _not_installed_reported or apps.is_installed("dwebsocket"):
        return
    _not_installed_reported = True
    from django.core import checks as django_checks

    from dwebsocket import checks

    found = [
        message
        for check in (
            checks.check_settings,
            checks.check_allowed_origins,
            checks.check_middleware,
            checks.check_atomic_requests,
        )
        for message in check()
        if message.level >= django_checks.WARNING
    ]
    logging.getLogger("dwebsocket").error(
        '"dwebsocket" is not in INSTALLED_APPS, so manage.py check does not run its '
        "system checks; add it. %s",
        "What they find now: " + "; ".join(f"{m.id}: {m.msg}" for m in found)
        if found
        else "They find nothing wrong now.",
    )
