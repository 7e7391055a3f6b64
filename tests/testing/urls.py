"""URLs of the chat the ``tests.testing`` tests drive; the plain echo views come along."""

from django.urls import include, path, re_path

from tests.groups import user_views
from tests.testing import views

urlpatterns = [
    path("chat/<slug:room>/", views.chat),
    path("login/", views.login_view),
    path("inspect/", views.inspect),
    path("inspect/<str:name>/", views.inspect),
    path("inspect-async/", views.inspect_async),
    # \w: letters beyond ASCII too (é), not the %XX of a path written percent-encoded.
    re_path(r"^inspect-async/(?P<name>\w+)/$", views.inspect_async),
    path("fail-before-accepting/", views.fail_before_accepting),
    path("stubborn/", views.stubborn),
    path("stubborn-async/", views.stubborn_async),
    path("hesitant-async/", views.hesitant_async),
    path("refuse-with-cookie/", views.refuse_with_cookie),
    path("refuse-at-length/", views.refuse_at_length),
    path("script-prefix/", views.script_prefix),
    path("script-prefix-async/", views.script_prefix_async),
    path("refuse-unregistered/", views.refuse_unregistered),
    path("refuse-unregistered-async/", views.refuse_unregistered_async),
    path("hesitant/", views.hesitant),
    path("session-written/", user_views.session_written),
    path("", include("tests.urls")),
]
