"""The test project's URLs (``tests/urls.py``, sync views) and what the ASGI tests read."""

from django.urls import include, path

from tests.asgi import views

urlpatterns = [
    path("counts/", views.counts),
    path("", include("tests.urls")),
]
