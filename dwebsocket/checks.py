"""System checks for dwebsocket's settings (``manage.py check``).

Ids are stable; each has a test in ``tests/test_checks.py``:

- ``dwebsocket.W001``: a ``WEBSOCKET_*`` setting dwebsocket does not know (a typo?).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks
from django.core.checks import CheckMessage, Tags, register

from dwebsocket.conf import DEFAULTS

__all__ = ["check_unknown_settings"]


@register(Tags.compatibility)
def check_unknown_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``dwebsocket.W001`` for each ``WEBSOCKET_*`` setting that is not in ``conf.DEFAULTS``."""
    messages: list[CheckMessage] = []
    for name in sorted(dir(django_settings)):
        if not name.startswith("WEBSOCKET_") or name in DEFAULTS:
            continue
        close = difflib.get_close_matches(name, DEFAULTS, n=1)
        hint = f"Did you mean {close[0]}?" if close else (
            "dwebsocket reads: " + ", ".join(sorted(DEFAULTS))
        )
        messages.append(
            checks.Warning(
                f"Unknown dwebsocket setting {name}; it has no effect.",
                hint=hint,
                id="dwebsocket.W001",
            )
        )
    return messages
