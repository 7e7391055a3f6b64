"""The URLs of ``tests/urls.py``, served by the ``async def`` views of ``tests/asgi/views.py``
(the shared tests then run against async views), and the group views (sync: groups are
shared between the two kinds of views)."""

from django.urls import include, path

from tests import views as sync_views
from tests.asgi import views

urlpatterns = [
    path("counts/", views.counts),
    path("held/", views.held_async),
    path("joined-held/", views.joined_held_async),
    path("release/", views.release),
    path("stalled/", views.stalled_async),
    path("lazy-accepts/", views.lazy_accepts),
    path("close-first/", views.close_first),
    path("room/<str:name>/", views.room),
    path("room/<str:name>/then-direct/", views.room, {"then_direct": True}),
    path("room/<str:name>/follow/", views.follower),
    path("room/<str:name>/by-function/", views.joined_by_function),
    path("json/", views.json_echo),
    path("close-from-the-loop/", views.close_from_the_loop),
    path("two-readers/", views.two_readers),
    path("stream/", views.stream),
    path("close-behind-a-send/", views.close_behind_a_send),
    path("goodbye/", views.goodbye),
    path("group/", include("tests.groups.urls")),
    path("echo/", views.echo),
    path("marked-echo/", views.marked_echo),
    path("class-echo/", views.ClassEcho.as_view()),
    path("marked-echo-sync/", views.marked_echo_sync),
    path("required-echo/", views.required_echo),
    path("echo-wait/", views.echo_wait),
    path("refuse/", views.refuse),
    path("refuse-streaming/", views.refuse_streaming),
    path("subprotocol/", views.subprotocol),
    path("close/", views.close_with),
    path("record/", views.record),
    path("raise-closed/", views.raise_closed),
    path("raise-error/", views.raise_error),
    path("big/", views.big),
    path("ticks/", views.ticks),
    path("nothing/", views.nothing),
    path("ping/", views.ping),
    path("info/", views.info),
    path("answered-then-a-helper-uses/", views.answered_then_a_task_uses),
    path("opened-while-gone/", sync_views.opened_while_gone),  # read back over HTTP
    path("slow/", sync_views.slow),  # plain HTTP only
]
