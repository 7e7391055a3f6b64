from pathlib import Path

from django.urls import path
from django.views.static import serve

import dwebsocket
from tests.groups import views

STATIC = Path(dwebsocket.__file__).parent / "static"

urlpatterns = [
    path("page/", views.page),
    path("static/<path:path>", serve, {"document_root": STATIC}),
    path("<str:name>/", views.member),
    path("<str:name>/status/", views.status),
    path("<str:name>/then-direct/", views.member, {"then_direct": True}),
    path("<str:name>/follow/", views.follower),
    path("<str:name>/joined-then-refused/", views.joined_then_refused),
]
