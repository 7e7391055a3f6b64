from __future__ import annotations

from chat import views
from django.urls import path, re_path
from django.views.generic import RedirectView
from django.views.static import serve

from chatdemo.settings import HERE

urlpatterns = [
    path("", RedirectView.as_view(url="/r/lobby/", query_string=True)),
    re_path(r"^r/(?P<room>[-\w]{1,40})/$", views.room, name="room"),
    re_path(r"^ws/(?P<room>[-\w]{1,40})/$", views.socket, name="socket"),
    # A demo serves its two static files itself; a real site puts them behind its web
    # server (or WhiteNoise).
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": HERE / "chat" / "static"}),
]
