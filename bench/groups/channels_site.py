"""The Channels side of the groups benchmark: settings, the consumer, the ASGI app.

Served by daphne (``daphne channels_site:application``). ``BENCH_CHANNEL_LAYER`` picks
channels_redis' layer: ``core`` (``RedisChannelLayer``, the default users configure) or
``pubsub`` (``RedisPubSubChannelLayer``). The consumer is the async one, Channels' fastest.
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES: dict[str, object] = {}
USE_TZ = True
ASGI_APPLICATION = "channels_site.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": {
            "core": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[os.environ.get("BENCH_CHANNEL_LAYER", "core")],
        # redis-py's default pool (100) fails group_add under a burst of connections.
        "CONFIG": {"hosts": [{"address": os.environ["BENCH_REDIS_URL"], "max_connections": 2000}]},
    }
}

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_site")

import django  # noqa: E402

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class Member(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add("bench", self.channel_name)
        await self.accept()
        await self.send(text_data="joined")

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("bench", self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({"websocket": URLRouter([path("member/", Member.as_asgi())])})
