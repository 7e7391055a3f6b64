"""What the chat keeps: messages (history for late joiners) and who is in which room."""

from __future__ import annotations

import datetime
from typing import Any

from django.db import models
from django.utils import timezone

#: A connection that has not refreshed its presence row for this long is gone (its
#: process was killed and could not say so).
PRESENCE_TTL = datetime.timedelta(seconds=60)


class Message(models.Model):
    room = models.CharField(max_length=40)
    user = models.CharField(max_length=24)
    text = models.TextField()
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["room", "-id"])]  # noqa: RUF012 - Django reads a plain list

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.pk,
            "user": self.user,
            "text": self.text,
            "time": self.created.isoformat(),
        }

    @classmethod
    def history(cls, room: str, limit: int = 50) -> list[dict[str, Any]]:
        """The last ``limit`` messages of ``room``, oldest first."""
        latest = cls.objects.filter(room=room).order_by("-id")[:limit]
        return [message.as_json() for message in reversed(latest)]


class Presence(models.Model):
    """One open socket in a room; every demo process sharing the database sees it."""

    room = models.CharField(max_length=40)
    user = models.CharField(max_length=24)
    seen = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["room", "seen"])]  # noqa: RUF012 - Django reads a plain list

    @classmethod
    def members(cls, room: str) -> list[str]:
        """Names connected to ``room`` now, sorted, each once (a user may have two tabs)."""
        alive = cls.objects.filter(room=room, seen__gte=timezone.now() - PRESENCE_TTL)
        return sorted(set(alive.values_list("user", flat=True)))
