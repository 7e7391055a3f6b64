"""End-to-end tests with Django's own ``LiveServerTestCase`` (the server Selenium and
Playwright tests use) work too: its threaded server is runserver's, which the default
backend takes connections over from."""

from __future__ import annotations

from django.test import LiveServerTestCase, override_settings
from websockets.sync.client import connect


# The live server wraps the site in a static files handler, which needs STATIC_URL.
@override_settings(STATIC_URL="/static/")
class LiveServerTests(LiveServerTestCase):
    def test_echo_through_the_live_server(self) -> None:
        url = self.live_server_url.replace("http://", "ws://") + "/echo/"
        with connect(url, proxy=None, open_timeout=10, close_timeout=10) as ws:
            ws.send("live")
            self.assertEqual(ws.recv(timeout=10), "live")
        self.assertEqual(ws.close_code, 1000)
