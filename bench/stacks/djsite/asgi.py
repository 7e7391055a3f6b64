"""Django Channels' echo, for daphne and uvicorn (``bench.stacks.djsite.asgi:application``).

An ``AsyncWebsocketConsumer``: the fastest consumer Channels offers (the sync one adds a
thread hop per message), and no channel layer.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stacks.djsite.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter([path("echo/", EchoConsumer.as_asgi())]),
    }
)
