"""The test project's URLs (``tests/urls.py``, sync views) and what the ASGI tests read."""

from django.urls import include, path

from tests.asgi import views

urlpatterns = [
    path("counts/", views.counts),
    path("held/", views.held),
    path("joined-held/", views.joined_held),
    path("release/", views.release),
    path("stalled/", views.stalled),
    path("database-while-waiting/", views.database_while_waiting),
    path("class-echo/", views.ClassEcho.as_view()),
    path("lazy-accepts/", views.lazy_accepts_sync),
    path("close-first/", views.close_first_sync),
    path("", include("tests.urls")),
]
