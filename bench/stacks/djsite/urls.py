from django.urls import path

from bench.stacks.djsite import views

urlpatterns = [path("echo/", views.echo), path("member/", views.member)]
