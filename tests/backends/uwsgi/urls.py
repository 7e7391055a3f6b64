from django.urls import include, path

from tests.backends.uwsgi import views

urlpatterns = [
    path("uwsgi/broadcast/", views.broadcast),
    path("uwsgi/kinds/", views.kinds),
    path("uwsgi/from-thread/", views.from_thread),
    path("uwsgi/wait-timeout/", views.wait_timeout),
    path("uwsgi/backlog/", views.backlog),
    path("uwsgi/finished/", views.finished),
    path("uwsgi/close-in-opened/", views.close_in_opened),
    path("uwsgi/killed-while-closing/", views.killed_while_closing),
    path("uwsgi/closed-before-accept/", views.closed_before_accept),
    path("uwsgi/signalled/", views.signalled),
    path("uwsgi/send-in-the-close/", views.send_in_the_close),
    path("uwsgi/close-then-refuse/", views.close_then_refuse),
    path("", include("tests.urls")),
]
