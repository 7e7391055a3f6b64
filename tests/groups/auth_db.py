"""The router of Django's multi-database example: ``auth`` and ``contenttypes`` in a
database of their own (``auth_db``), everything else (the sessions) in ``default``."""

from __future__ import annotations

from typing import Any

AUTH_APPS = {"auth", "contenttypes"}


class AuthRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "auth_db" if model._meta.app_label in AUTH_APPS else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "auth_db" if model._meta.app_label in AUTH_APPS else None

    def allow_relation(self, a: Any, b: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return (db == "auth_db") == (app_label in AUTH_APPS)
