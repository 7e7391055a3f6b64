from django.urls import include, path

from tests import views

urlpatterns = [
    path("group/", include("tests.groups.urls")),
    path("lifecycle/", include("tests.lifecycle")),
    path("echo/", views.echo),
    path("echo-wait/", views.echo_wait),
    path("stacked/", views.stacked),
    path("json/", views.json_echo),
    path("refuse/", views.refuse),
    path("refuse-streaming/", views.refuse_streaming),
    path("slow/", views.slow),
    path("subprotocol/", views.subprotocol),
    path("close/", views.close_with),
    path("record/", views.record),
    path("tally/", views.tally),
    path("raise-closed/", views.raise_closed),
    path("raise-error/", views.raise_error),
    path("big/", views.big),
    path("deliver-wide/", views.deliver_wide),
    path("refuse-by-raising/", views.refuse_by_raising),
    path("close-unaccepted/", views.close_unaccepted),
    path("nothing/", views.nothing),
    path("ping/", views.ping),
    path("info/", views.info),
    path("helper-accepts/", views.helper_accepts),
    path("opened-while-gone/", views.opened_while_gone),
    path("", include("dwebsocket.metrics.urls")),  # /metrics
]
urlpatterns += [
    path("fail-accept/", views.fail_accept),
]
urlpatterns += [
    path("answered-while-a-helper-accepts/", views.answered_while_a_helper_accepts),
]
urlpatterns += [
    path("answered-then-a-helper-uses/", views.answered_then_a_helper_uses),
]
