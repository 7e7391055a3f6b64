"""The chat (``tests/testing/views.py``) tested the way a user tests theirs: a
``TestCase``, users from the database, several ``WebSocketClient`` at once.

``test_chat_servers.py`` runs the same scenarios (same names) against real servers.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import TestCase, override_settings

from dwebsocket.testing import HandshakeRefused, WebSocketClient
from tests.testing.support import CHAT_SETTINGS, PASSWORD


@override_settings(**CHAT_SETTINGS)
class ChatTests(TestCase):
    alice: User
    bob: User
    carol: User

    @classmethod
    def setUpTestData(cls) -> None:
        cls.alice = User.objects.create_user("alice", password=PASSWORD)
        cls.bob = User.objects.create_user("bob", password=PASSWORD)
        cls.carol = User.objects.create_user("carol", password=PASSWORD)

    def test_anonymous_is_refused(self) -> None:
        with self.assertRaises(HandshakeRefused) as refused:
            WebSocketClient("/chat/lobby/").connect()
        self.assertEqual(refused.exception.status_code, 403)
        self.assertEqual(refused.exception.content, b"Log in to chat.\n")

    def test_foreign_origin_is_refused(self) -> None:
        with self.assertRaises(HandshakeRefused) as refused:
            WebSocketClient(
                "/chat/lobby/", user=self.alice, origin="https://evil.example"
            ).connect()
        self.assertEqual(refused.exception.status_code, 403)

    def test_same_origin_is_accepted(self) -> None:
        with WebSocketClient("/chat/origin/", user=self.alice, origin="http://testserver") as ws:
            self.assertEqual(ws.receive_json(), {"user": "alice", "event": "joined"})

    def test_messages_reach_everyone_in_the_room(self) -> None:
        with WebSocketClient("/chat/everyone/", user=self.alice) as alice:
            self.assertEqual(alice.receive_json(), {"user": "alice", "event": "joined"})
            with WebSocketClient("/chat/everyone/", user=self.bob) as bob:
                self.assertEqual(bob.receive_json(), {"user": "bob", "event": "joined"})
                self.assertEqual(alice.receive_json(), {"user": "bob", "event": "joined"})
                alice.send("hi bob")
                for ws in (alice, bob):
                    self.assertEqual(ws.receive_json(), {"user": "alice", "text": "hi bob"})

    def test_rooms_are_separate(self) -> None:
        with (
            WebSocketClient("/chat/separate/", user=self.alice) as alice,
            WebSocketClient("/chat/separate-kitchen/", user=self.carol) as carol,
        ):
            self.assertEqual(alice.receive_json(), {"user": "alice", "event": "joined"})
            self.assertEqual(carol.receive_json(), {"user": "carol", "event": "joined"})
            alice.send("lobby only")
            self.assertEqual(alice.receive_json(), {"user": "alice", "text": "lobby only"})
            carol.send("kitchen only")
            # Had the lobby's message reached the kitchen, it would come first.
            self.assertEqual(carol.receive_json(), {"user": "carol", "text": "kitchen only"})

    def test_leaving_is_announced(self) -> None:
        with WebSocketClient("/chat/leaving/", user=self.alice) as alice:
            self.assertEqual(alice.receive_json(), {"user": "alice", "event": "joined"})
            with WebSocketClient("/chat/leaving/", user=self.bob) as bob:
                self.assertEqual(bob.receive_json(), {"user": "bob", "event": "joined"})
            self.assertEqual(bob.close_code, 1000)
            self.assertEqual(alice.receive_json(), {"user": "bob", "event": "joined"})
            self.assertEqual(alice.receive_json(), {"user": "bob", "event": "left"})

    def test_bye_closes_with_4000(self) -> None:
        with WebSocketClient("/chat/bye/", user=self.alice) as alice:
            self.assertEqual(alice.receive_json(), {"user": "alice", "event": "joined"})
            alice.send("/bye")
            self.assertEqual(alice.wait_closed(), 4000)
        self.assertEqual(alice.close_reason, "bye")
