"""``tests/groups/user_urls.py`` with the socket and ``send`` served by the ``async def``
views of ``tests/asgi/user_views.py``."""

from django.urls import include, path

from tests.asgi import user_views

urlpatterns = [
    path("ws/", user_views.socket),
    path("send/", user_views.send),
    path("", include("tests.groups.user_urls")),
]
