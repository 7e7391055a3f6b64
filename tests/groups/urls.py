from django.urls import path

from tests.groups import views

urlpatterns = [
    path("<str:name>/", views.member),
    path("<str:name>/status/", views.status),
    path("<str:name>/follow/", views.follower),
]
