from __future__ import annotations

from pathlib import Path

from chat import views
from django.contrib.auth import views as auth_views
from django.urls import path, re_path
from django.views.generic import RedirectView
from django.views.static import serve

import dwebsocket
from chatdemo.settings import HERE

DWEBSOCKET_STATIC = Path(dwebsocket.__file__).parent / "static"

urlpatterns = [
    path("", RedirectView.as_view(url="/r/lobby/", query_string=True)),
    path("login/", auth_views.LoginView.as_view(template_name="chat/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    re_path(r"^r/(?P<room>[-\w]{1,40})/$", views.room, name="room"),
    re_path(r"^ws/(?P<room>[-\w]{1,40})/$", views.socket, name="socket"),
    # A demo serves its static files itself: its own two and dwebsocket's browser client. A
    # real site collects them (collectstatic) behind its web server, or WhiteNoise.
    re_path(r"^static/(?P<path>dwebsocket/.*)$", serve, {"document_root": DWEBSOCKET_STATIC}),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": HERE / "chat" / "static"}),
]
