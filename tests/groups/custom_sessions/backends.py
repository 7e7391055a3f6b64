"""The session engine of :class:`~tests.groups.custom_sessions.models.CustomSession`."""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore


class SessionStore(DatabaseStore):
    @classmethod
    def get_model_class(cls) -> Any:
        from tests.groups.custom_sessions.models import CustomSession

        return CustomSession
