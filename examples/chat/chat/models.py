"""What the chat keeps: messages (history for late joiners). Who is in which room is
``dwebsocket.groups.presence``'s business."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


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
