from __future__ import annotations

from typing import Any

from django.contrib.sessions.base_session import AbstractBaseSession


class CustomSession(AbstractBaseSession):
    @classmethod
    def get_session_store_class(cls) -> Any:
        from tests.groups.custom_sessions.backends import SessionStore

        return SessionStore
