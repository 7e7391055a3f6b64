"""A user model whose primary key is a UUID (``AUTH_USER_MODEL =
"uuid_users.UUIDUser"``), for the tests of naming a user's group from a pk given alone.
No table: its users are made by a view, from a token's claims, as instances of it."""

from __future__ import annotations

import uuid

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models


class UUIDUser(AbstractBaseUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    username = models.CharField(max_length=150, unique=True)

    USERNAME_FIELD = "username"
