"""An ``async def`` view under ``i18n_patterns``: its path starts with a language."""

from django.conf.urls.i18n import i18n_patterns
from django.urls import path

from tests.testing import views

urlpatterns = i18n_patterns(path("inspect-async/", views.inspect_async))
