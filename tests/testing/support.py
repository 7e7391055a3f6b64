"""What the chat tests share, in process and through real servers."""

from __future__ import annotations

from typing import Any

PASSWORD = "correct horse battery staple"
USERS = ("alice", "bob", "carol")

#: The chat's settings on top of ``tests.settings``: sessions in signed cookies (no table
#: to create), the middleware that turns the session cookie into ``request.user``.
CHAT_SETTINGS: dict[str, Any] = {
    "ROOT_URLCONF": "tests.testing.urls",
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast, tests only
}
