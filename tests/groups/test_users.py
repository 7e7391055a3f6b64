"""``dwebsocket.users`` in one process (``memory://``), driven by ``dwebsocket.testing``:
a logged-in client per tab, the site's own views logging in and out.

``test_users_servers.py`` runs the same scenarios across real server processes and Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import threading
import time
import unittest
import unittest.mock
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client, TransactionTestCase, override_settings
from django.utils import timezone

from dwebsocket import groups, users
from dwebsocket.db import close_thread_connections
from dwebsocket.groups import control
from dwebsocket.testing import WebSocketClient
from tests.groups import flaky_sessions
from tests.groups.user_views import PASSWORD

SETTINGS = {
    "ROOT_URLCONF": "tests.groups.user_urls",
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "tests.groups.user_views.EndedAfterAuthentication",
    ],
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast, tests only
}
WAIT = 10.0


def logged_in(username: str) -> Client:
    """A browser with its own session of ``username`` (through the site's login view)."""
    client = Client()
    assert client.get("/login/", {"username": username}).status_code == 200
    return client


def expire(client: Client) -> None:
    """End ``client``'s session as time does: its expiry passes (``SESSION_COOKIE_AGE``),
    no signal is sent. Written between two checks: a check's read would table-lock
    SQLite's shared in-memory database (tests/settings.py)."""
    with users._checker._checking:
        Session.objects.filter(session_key=client.session.session_key).update(
            expire_date=timezone.now() - timezone.timedelta(seconds=1)
        )


@contextlib.contextmanager
def tab(client: Client | None = None, user: User | None = None) -> Iterator[WebSocketClient]:
    """A socket of this browser (``client``) or of a new session of ``user``."""
    with WebSocketClient("/ws/", client=client, user=user, timeout=WAIT) as ws:
        hello = json.loads(ws.receive())
        assert hello["user"] is not None
        yield ws


@override_settings(**SETTINGS)
class UsersTests(TransactionTestCase):
    """Committed data, as in production: the periodic check reads the sessions from its
    own thread (a ``TestCase``'s open transaction would lock their table)."""

    def setUp(self) -> None:
        self.alice = User.objects.create_user("alice", password=PASSWORD)
        self.bob = User.objects.create_user("bob", password=PASSWORD)

    def tearDown(self) -> None:
        # The periodic check reads the sessions from its own thread: the database is
        # emptied after this, and SQLite's shared in-memory database refuses that
        # ("table is locked") while another connection reads it.
        self.assertTrue(users._checker.wait_idle(WAIT))
        groups.reset()

    def test_a_read_in_another_thread_does_not_lock_out_a_session_write(self) -> None:
        """The test database's setting (tests/settings.py): a session check's read, from
        its own thread, while the test saves a session (what failed two fresh clones)."""
        browser, *_ = [logged_in("alice") for _ in range(3)]
        reading, done = threading.Event(), threading.Event()

        def read() -> None:
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT session_key FROM django_session")
                    cursor.fetchone()  # the statement stays open: its read lock with it
                    reading.set()
                    done.wait(WAIT)
            finally:
                close_thread_connections()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            self.assertTrue(reading.wait(WAIT))
            logged_in("alice").session.save()
            browser.session.save()
        finally:
            done.set()
            reader.join(WAIT)

    def test_send_reaches_every_tab_of_the_user_and_nobody_else(self) -> None:
        browser = logged_in("alice")
        with (
            tab(browser) as a1,
            tab(browser) as a2,
            tab(user=self.alice) as a3,
            tab(user=self.bob) as b,
            WebSocketClient("/ws/", timeout=WAIT) as anonymous,
        ):
            self.assertEqual(json.loads(anonymous.receive())["user"], None)
            users.send(self.alice, "for alice")
            users.send(self.alice.pk, b"\x00pk")
            for ws in (a1, a2, a3):
                self.assertEqual(ws.receive(), "for alice")
                self.assertEqual(ws.receive(), b"\x00pk")
            users.send(self.bob, "for bob")
            self.assertEqual(b.receive(), "for bob")  # bob got only his own
            for ws in (a1, a2, a3, anonymous):
                with self.assertRaises(TimeoutError):
                    ws.receive(timeout=0.2)

    def test_a_client_cannot_join_another_users_group(self) -> None:
        """A view joining a group named by its URL (docs/users.rst's ``room``) must not let
        a client name another user's (or session's) reserved group and read what
        ``users.send`` sends that user."""
        with tab(user=self.alice) as alice:
            for reserved in (users.user_group(self.alice), "dwebsocket.anything"):
                spy = WebSocketClient(f"/ws/?group={reserved}", user=self.bob, timeout=WAIT)
                with self.assertRaises(ValueError):
                    spy.connect()
            users.send(self.alice, "for alice")
            self.assertEqual(alice.receive(), "for alice")
        self.assertEqual(groups.members(users.user_group(self.alice)), [])

    def test_a_history_pattern_never_matches_dwebsocket_own_groups(self) -> None:
        """``WEBSOCKET_GROUPS_HISTORY = {"*": ...}`` (every group of the site) left out
        dwebsocket's own groups: a client speaking ``dws`` got a ``joined`` envelope
        naming its session's group -- its session key, handed to JavaScript (past the
        cookie's HttpOnly), and kept by the browser client as a position to send back in
        ``dws_since``: in the URL of every reconnection, in every access log -- and
        ``users.send`` messages came in envelopes naming the user's group, kept in the
        history for its ``ttl``."""
        browser = logged_in("alice")
        every_group = {"*": {"size": 100, "ttl": 60}}
        with (
            override_settings(WEBSOCKET_GROUPS_HISTORY=every_group),
            WebSocketClient("/ws/?dws=1", client=browser, timeout=WAIT) as ws,
        ):
            self.assertEqual(json.loads(ws.receive())["user"], "alice")
            self.assertIsNone(users.send(self.alice, "for alice"))
            self.assertEqual(ws.receive(), "for alice")
            self.assertIsNotNone(groups.send("room", "kept"))  # the site's groups: kept
            with self.assertRaises(TimeoutError):
                ws.receive(timeout=0.2)

    def test_a_socket_cannot_leave_its_users_group(self) -> None:
        """A view leaving a group the client names (a chat's ``{"leave": room}``) must
        not let a client take its socket out of its user's or session's group: a ban
        (``users.disconnect``) would no longer close it."""
        with tab(user=self.alice) as alice:
            (member,) = groups.members(users.user_group(self.alice))
            for reserved in (users.user_group(self.alice), "dwebsocket.anything"):
                with self.assertRaises(ValueError):
                    member.leave(reserved)  # type: ignore[attr-defined]
            users.disconnect(self.alice, code=4010, reason="banned")
            self.assertEqual(alice.wait_closed(WAIT), 4010)

    def test_send_as_soon_as_connected_reaches_the_socket(self) -> None:
        """docs/users.rst's test: ``users.send`` right after ``connect()``, before the view
        sent anything. connect() returns once websocket_opened's receivers, which
        register the socket as alice's, have run."""
        for path in ("/ws/quiet/", "/ws/quiet-async/"):
            with WebSocketClient(path, user=self.alice, timeout=WAIT) as ws:
                users.send(self.alice, "hi")
                self.assertEqual(ws.receive(), "hi", path)

    def test_disconnect_closes_every_tab_with_the_code(self) -> None:
        with tab(user=self.alice) as a1, tab(user=self.alice) as a2, tab(user=self.bob) as b:
            users.disconnect(self.alice)
            self.assertEqual(a1.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(a2.wait_closed(WAIT), users.REVOKED)
            users.disconnect(self.bob.pk, code=4242, reason="bye")
            self.assertEqual(b.wait_closed(WAIT), 4242)
            self.assertEqual(b.close_reason, "bye")

    def test_a_pk_given_alone_names_the_group_of_its_users_sockets(self) -> None:
        """A pk given as a string is read by the user model's pk field, as Django reads
        the session's: ``users.send("007")`` named ``dwebsocket.user.007``, which no
        socket is in (user 7's are in ``dwebsocket.user.7``), and nothing said so. A pk
        the field cannot hold is refused, rather than naming a group nobody is in."""
        pk = self.alice.pk
        with tab(user=self.alice) as ws:
            for given in (f"00{pk}", str(pk), pk):
                self.assertEqual(users.user_group(given), users.user_group(self.alice))
                users.send(given, f"for {given!r}")
                self.assertEqual(ws.receive(), f"for {given!r}")
            users.disconnect(f"0{pk}", code=4010)
            self.assertEqual(ws.wait_closed(WAIT), 4010)
        for wrong in ("alice", f"{pk}.5", ""):
            with self.assertRaisesRegex(ValueError, "primary key"):
                users.send(wrong, "x")
            with self.assertRaisesRegex(ValueError, "primary key"):
                users.disconnect(wrong)

    @override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "tests.groups.uuid_users"],
        AUTH_USER_MODEL="uuid_users.UUIDUser",
    )
    def test_a_uuid_pk_given_alone_in_any_form_names_the_group_of_its_users_sockets(
        self,
    ) -> None:
        """As above for a UUID primary key, given in capitals, without dashes, in braces
        (what ``uuid.UUID`` and Django read): its socket joined the group of its canonical
        form (``str(user.pk)``), which only that form named."""
        pk = uuid.uuid4()
        with WebSocketClient(f"/ws/model-token/?pk={pk.hex}", timeout=WAIT) as ws:
            self.assertEqual(json.loads(ws.receive())["user"], f"user {pk}")
            for given in (str(pk).upper(), pk.hex, f"{{{pk}}}", pk, str(pk)):
                users.send(given, f"for {given!r}")
                self.assertEqual(ws.receive(), f"for {given!r}")
            users.disconnect(pk.hex.upper(), code=4010)
            self.assertEqual(ws.wait_closed(WAIT), 4010)
        for wrong in ("alice", str(pk)[:-1], str(self.alice.pk)):
            with self.assertRaisesRegex(ValueError, "primary key"):
                users.send(wrong, "x")

    def test_disconnect_refuses_a_code_that_may_not_be_sent(self) -> None:
        for code in (1005, 1006, 999, 5000):
            with self.assertRaises(ValueError):
                users.disconnect(self.alice, code=code)
        with self.assertRaises(TypeError):
            users.send(None, "x")

    def test_disconnect_refuses_a_reason_that_is_not_text(self) -> None:
        for reason in (None, b"bye", 7):
            with self.assertRaisesRegex(TypeError, "close reasons are str"):
                users.disconnect(self.alice, reason=reason)  # type: ignore[arg-type]
            with self.assertRaisesRegex(TypeError, "close reasons are str"):
                users.disconnect_session("k", reason=reason)  # type: ignore[arg-type]

    def test_logout_closes_that_sessions_sockets_only(self) -> None:
        here, elsewhere = logged_in("alice"), logged_in("alice")
        with tab(here) as closing, tab(here) as closing_too, tab(elsewhere) as staying:
            here.get("/logout/")
            self.assertEqual(closing.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(closing_too.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(closing.close_reason, "logged out")
            users.send(self.alice, "still here")
            self.assertEqual(staying.receive(), "still here")

    def test_password_change_closes_every_session(self) -> None:
        one, two = logged_in("alice"), logged_in("alice")
        with tab(one) as a1, tab(two) as a2, tab(user=self.bob) as b:
            one.get("/password/", {"username": "alice", "password": "new one"})
            self.assertEqual(a1.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(a2.wait_closed(WAIT), users.REVOKED)
            users.send(self.bob, "bob stays")
            self.assertEqual(b.receive(), "bob stays")

    def test_a_deleted_user_has_every_socket_closed(self) -> None:
        """Before, nothing sent the check: a deleted user's sockets stayed open until the
        periodic check (a minute by default); the docs said at once."""
        one, two = logged_in("alice"), logged_in("alice")
        with tab(one) as a1, tab(two) as a2, tab(user=self.bob) as b:
            User.objects.get(username="alice").delete()
            self.assertEqual(a1.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(a2.wait_closed(WAIT), users.REVOKED)
            users.send(self.bob, "bob stays")
            self.assertEqual(b.receive(), "bob stays")

    @override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies")
    def test_signed_cookie_sessions_a_logout_closes_the_sockets_of_its_cookie_only(
        self,
    ) -> None:
        """What docs/users.rst says of ``signed_cookies``: the session is the cookie, a
        new one at every write (a view putting something in the session here), and a
        logout reaches the sockets opened with the cookie it came with, not those of an
        older one, which Django still takes as valid."""
        browser = logged_in("alice")
        with tab(browser) as older:
            session = browser.session
            session["cart"] = [42]
            session.save()
            browser.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
            with tab(browser) as newer:
                browser.get("/logout/")
                self.assertEqual(newer.wait_closed(WAIT), users.REVOKED)
                users.send(self.alice, "still open")
                self.assertEqual(older.receive(), "still open")

    def test_deleted_session_closes_its_sockets(self) -> None:
        browser = logged_in("alice")
        with tab(browser) as ws:
            Session.objects.get(session_key=browser.session.session_key).delete()
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)

    def test_a_session_that_ends_while_its_socket_opens_closes_it(self) -> None:
        """The session ends after the request loaded it and before the socket joined its
        session's group: the revocation's command found no socket to close."""
        browser = logged_in("alice")
        with WebSocketClient("/ws/revoked-while-opening/", client=browser, timeout=WAIT) as ws:
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)

    def test_a_session_that_ends_before_dwebsocket_sees_the_request_closes_it(self) -> None:
        """The same, with the session read and ended by a middleware, before the view
        (``user_views.EndedAfterAuthentication``): the ending came before the view's
        decorator saw the request, yet after the request began. The periodic check is off:
        only the socket's own look at what it missed can close it."""
        browser = logged_in("alice")
        path = "/ws/ended-after-authentication/"
        with WebSocketClient(path, client=browser, timeout=WAIT) as ws:
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)
            self.assertEqual(ws.close_reason, "session ended")

    def connections_of_opening_checks(self, path: str, sockets: int) -> list[str]:
        """Open ``sockets`` sockets of one browser at ``path`` one after the other; the
        database connections the checks made meanwhile (their lookups run in one thread;
        the periodic check is off)."""
        from django.db.backends.signals import connection_created

        made: list[str] = []

        def created(sender: object, connection: object, **kwargs: object) -> None:
            if threading.current_thread().name == "dwebsocket-session-lookups":
                made.append(threading.current_thread().name)

        browser = logged_in("alice")
        connection_created.connect(created)
        try:
            with unittest.mock.patch.object(users, "LINGER", WAIT):
                for _ in range(sockets):
                    with WebSocketClient(path, client=browser, timeout=WAIT) as ws:
                        self.assertEqual(json.loads(ws.receive())["user"], "alice")
                self.assertTrue(users._checker.wait_idle(WAIT))
        finally:
            connection_created.disconnect(created)
        self.assertFalse(users._checker._draining)
        return made

    def test_a_socket_that_missed_no_command_costs_no_database_query(self) -> None:
        """The check of a socket just opened reads what its groups were sent while it
        opened (the layer's record), not the database: nothing, nothing to do."""
        self.assertEqual(self.connections_of_opening_checks("/ws/", 5), [])

    def test_sockets_opening_one_after_another_share_the_checks_database_connection(
        self,
    ) -> None:
        """Each of these sockets' users is saved while it opens (a check command it
        missed): its session is checked in the background. While sockets keep opening,
        that check keeps its database connection (a connection per socket would be a new
        server process per socket on PostgreSQL); it closes it once idle."""
        self.assertEqual(len(self.connections_of_opening_checks("/ws/saved-while-opening/", 5)), 1)

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_a_drain_killed_midway_does_not_stop_the_checks_at_opening(self) -> None:
        """Something kills the background check of new sockets (SystemExit here, as a
        greenlet kill or a timeout would be): the next socket still gets its own."""
        browser = logged_in("alice")

        def killed(members: object) -> None:
            raise SystemExit  # what a kill is to the thread: not an Exception

        with unittest.mock.patch.object(users._checker, "_opening", killed), tab(browser):
            self.assertTrue(users._checker.wait_idle(WAIT))
        with WebSocketClient("/ws/revoked-while-opening/", client=browser, timeout=WAIT) as ws:
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)

    def test_a_user_disconnected_while_their_socket_opens_is_closed(self) -> None:
        """``users.disconnect`` returns after the request was authenticated and before the
        socket joined its user's group: the command found no socket of that user, and the
        session is still valid (a disconnect ends no session). A team banning a user
        expects this socket, whose request began before disconnect() returned, closed
        too: with the code and reason given."""
        browser = logged_in("alice")
        with WebSocketClient("/ws/disconnected-while-opening/", client=browser, timeout=WAIT) as ws:
            self.assertEqual(ws.wait_closed(WAIT), 4003)
        # A socket whose request began after the disconnect stays open: a ban is made
        # to last by failing authentication (docs/users.rst), not by the command.
        with tab(browser) as after:
            self.assertTrue(users._checker.wait_idle(WAIT))
            users.send(self.alice, "still open")
            self.assertEqual(after.receive(), "still open")

    def test_a_disconnect_just_after_the_request_began_is_found_by_a_slow_read(self) -> None:
        """The socket's age is taken before the commands are read, their ages as the read
        runs: a read slower than the time between the request's start and the disconnect
        (a thread switch, a Redis round trip, a loaded machine: here 0.3 s) made that
        disconnect look older than the request. Where the clocks cannot tell, a close is
        done: the socket of a user being banned must not stay open."""
        layer = users.get_layer()
        read = layer.recent_controls_many

        def slow(names: list[str], within: float) -> list[list[tuple[bytes, float]] | None]:
            time.sleep(0.3)
            return read(names, within)

        browser = logged_in("alice")
        with (
            unittest.mock.patch.object(layer, "recent_controls_many", slow),
            WebSocketClient("/ws/disconnected-while-opening/", client=browser, timeout=WAIT) as ws,
        ):
            self.assertEqual(ws.wait_closed(WAIT), 4003)

    def test_a_user_without_a_session_disconnected_while_their_socket_opens_is_closed(
        self,
    ) -> None:
        """As above for a socket whose user no session names (authenticated by a token,
        say): it joined its user's group only, and still reads what it missed there."""
        path = "/ws/token-disconnected-while-opening/?username=alice"
        with WebSocketClient(path, timeout=WAIT) as ws:
            self.assertEqual(ws.wait_closed(WAIT), 4003)
            self.assertEqual(ws.close_reason, "banned")

    def test_a_socket_of_a_user_its_session_does_not_name_outlives_that_session(
        self,
    ) -> None:
        """A socket authenticated by a token, from a browser whose session (a cart, a
        language) is anonymous or another user's: that session is not the socket's. Its
        end (a flush, bob's logout) or a check of it (which finds no alice in it) must
        not close alice's socket with 4001."""
        anonymous = Client()
        session = anonymous.session
        session["cart"] = [1, 2]
        session.save()
        bob = logged_in("bob")
        for browser in (anonymous, bob):
            with WebSocketClient("/ws/token/?username=alice", client=browser, timeout=WAIT) as ws:
                self.assertEqual(json.loads(ws.receive())["user"], "alice")
                self.assertTrue(users._checker.wait_idle(WAIT))
                users._checker.check(groups.members(users.user_group(self.alice)))
                browser.session.flush()
                with self.assertRaises(TimeoutError):
                    ws.wait_closed(0.3)
                users.send(self.alice, "still open")
                self.assertEqual(ws.receive(), "still open")

    def test_a_user_without_a_session_made_inactive_or_deleted_has_their_sockets_closed(
        self,
    ) -> None:
        """A socket authenticated by a token (no session names its user) is its user's
        only: making that user inactive (``is_active = False``, saved: docs/users.rst's
        way to keep a user out) or deleting them must close it, as for a session's
        socket. Its check found no session and left it open for good. A password change
        or any other save leaves it open (a token does not depend on the password), and
        so does every check a user that is no instance of the user model (made from a
        token's claims: not in this database)."""
        with (
            WebSocketClient("/ws/token/?username=alice", timeout=WAIT) as alice,
            WebSocketClient("/ws/token/?username=bob", timeout=WAIT) as bob,
            WebSocketClient("/ws/stateless-token/?pk=999", timeout=WAIT) as stateless,
        ):
            for ws, name in ((alice, "alice"), (bob, "bob"), (stateless, "user 999")):
                self.assertEqual(json.loads(ws.receive())["user"], name)
            self.assertTrue(users._checker.wait_idle(WAIT))
            self.bob.set_password("a new one")
            self.bob.save()
            users._checker.check(groups.members(users.user_group(self.bob)))
            users._checker.check(groups.members(users.user_group("999")))
            for ws, pk in ((bob, self.bob.pk), (stateless, "999")):
                users.send(pk, "still open")
                self.assertEqual(ws.receive(), "still open")

            self.alice.is_active = False
            self.alice.save()
            self.assertEqual(alice.wait_closed(WAIT), users.REVOKED)
            self.bob.delete()
            self.assertEqual(bob.wait_closed(WAIT), users.REVOKED)

    def test_a_save_of_fields_the_checks_do_not_read_sends_no_check(self) -> None:
        """``save(update_fields=...)`` of fields no check reads (a profile's name and
        e-mail; ``last_login``, which every ``login()`` saves) cannot end a session: it
        sent a check to every process, which read each of the user's sessions. A save of
        what the checks read -- ``is_active``, the password (the session's hash) -- or of
        every field, still does, and revokes; so does any save where the checks may read
        any field (a backend's own ``get_user``: tests.groups.user_views.DirectoryBackend)."""
        group = users.user_group(self.alice)

        def checks_sent() -> int:
            return len(users.get_layer().recent_controls(group, control.MEMORY))

        browser = logged_in("alice")  # update_last_login: update_fields=["last_login"]
        self.alice.refresh_from_db()
        with tab(browser) as ws:
            self.alice.first_name, self.alice.email = "Alice", "alice@example.com"
            self.alice.save(update_fields=["first_name", "email"])
            self.alice.save(update_fields=["last_login", "last_name", "is_staff"])
            self.assertEqual(checks_sent(), 0)
            # ModelBackend too: the session's, for the check this sends, whenever it runs.
            backends = [
                *settings.AUTHENTICATION_BACKENDS,
                "tests.groups.user_views.DirectoryBackend",
            ]
            with override_settings(AUTHENTICATION_BACKENDS=backends):
                self.alice.save(update_fields=["first_name"])
                self.assertEqual(checks_sent(), 1)
            self.alice.save(update_fields=["is_active"])  # unchanged: checked, stays open
            self.alice.save()
            self.assertEqual(checks_sent(), 3)
            self.assertTrue(users._checker.wait_idle(WAIT))
            with self.assertRaises(TimeoutError):
                ws.wait_closed(0.3)
            self.alice.is_active = False
            self.alice.save(update_fields=["is_active"])
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)
        self.alice.is_active = True
        self.alice.save(update_fields=["is_active"])
        with tab(logged_in("alice")) as ws:
            self.alice.set_password("a new one")
            self.alice.save(update_fields=["password"])
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)

    def test_a_groups_layer_that_cannot_be_built_breaks_no_logout_save_or_clearsessions(
        self,
    ) -> None:
        """The receivers that revoke sessions run inside the application's logout, save
        and deletes: a groups layer that cannot be built there (a wrong
        ``WEBSOCKET_GROUPS_URL``, a Redis URL in an image without redis-py: a cron
        container running ``clearsessions``) raised into them -- the logout a 500, the
        save an error after its commit, ``clearsessions`` rolled back, its sessions never
        cleared. They must go through, with one ERROR saying what was not revoked."""
        alice, bob = logged_in("alice"), logged_in("bob")
        keys = [alice.session.session_key, bob.session.session_key]
        Session.objects.filter(session_key=keys[1]).update(
            expire_date=timezone.now() - timezone.timedelta(seconds=1)
        )
        with (
            override_settings(WEBSOCKET_GROUPS_URL="nats://127.0.0.1:4222"),
            self.assertLogs("dwebsocket.users", "DEBUG") as logs,
        ):
            self.assertEqual(alice.get("/logout/").status_code, 200)
            self.alice.set_password("a new one")
            self.alice.save()
            with transaction.atomic():
                self.bob.is_active = False
                self.bob.save()
            call_command("clearsessions")
        self.assertFalse(Session.objects.filter(session_key__in=keys).exists())
        self.assertFalse(User.objects.get(pk=self.bob.pk).is_active)
        loud = [r for r in logs.records if r.levelno >= logging.WARNING]
        self.assertEqual(len(loud), 1, [r.getMessage() for r in loud])
        self.assertEqual(loud[0].levelname, "ERROR")
        self.assertIn("WEBSOCKET_GROUPS_URL", loud[0].getMessage())

    def test_a_user_saved_under_manual_transaction_management_is_saved(self) -> None:
        """``transaction.set_autocommit(False)`` (Django's manual transaction management):
        ``on_commit`` refuses it, and the receiver of user saves let that
        ``TransactionManagementError`` go into the application's ``save()``: no user
        could be saved. The check goes now then (there is no commit to wait for)."""
        transaction.set_autocommit(False)
        try:
            self.alice.first_name = "Alice"
            self.alice.save()
            transaction.commit()
        finally:
            transaction.rollback()
            transaction.set_autocommit(True)
        self.assertEqual(User.objects.get(pk=self.alice.pk).first_name, "Alice")

    @override_settings(SESSION_ENGINE="tests.groups.flaky_sessions")
    def test_a_session_store_that_cannot_be_read_is_logged_once_and_revokes_nothing(
        self,
    ) -> None:
        """The session database goes away while sockets open, and their user is saved
        meanwhile (a check command they missed): each one's check at opening fails. One
        WARNING for the outage (not one per socket: a flood when many reconnect), the
        sockets stay open (docs/users.rst: a store that cannot be read revokes nothing),
        and once the store reads again the next check runs and revokes."""
        browser = logged_in("alice")
        try:
            with (
                self.assertLogs("dwebsocket.users", "DEBUG") as logs,
                contextlib.ExitStack() as stack,
            ):
                sockets = []
                for _ in range(3):
                    flaky_sessions.DOWN.clear()  # the request reads its session; its view breaks it
                    ws = stack.enter_context(
                        WebSocketClient(
                            "/ws/store-down-while-opening/", client=browser, timeout=WAIT
                        )
                    )
                    self.assertEqual(json.loads(ws.receive())["user"], "alice")
                    self.assertTrue(users._checker.wait_idle(WAIT))  # its check failed
                    sockets.append(ws)
                users.send(self.alice, "still open")
                for ws in sockets:
                    self.assertEqual(ws.receive(), "still open")

                flaky_sessions.DOWN.clear()  # back: the next check reads, and revokes
                with WebSocketClient(
                    "/ws/saved-while-opening/", client=browser, timeout=WAIT
                ) as checked:
                    self.assertEqual(json.loads(checked.receive())["user"], "alice")
                    self.assertTrue(users._checker.wait_idle(WAIT))  # read: an INFO
                with WebSocketClient(
                    "/ws/revoked-while-opening/", client=logged_in("alice"), timeout=WAIT
                ) as revoked:
                    self.assertEqual(revoked.wait_closed(WAIT), users.REVOKED)
                self.assertTrue(users._checker.wait_idle(WAIT))
                users.send(self.alice, "and still open")
                for ws in sockets:
                    self.assertEqual(ws.receive(), "and still open")
        finally:
            flaky_sessions.DOWN.clear()
        loud = [r for r in logs.records if r.levelno >= logging.WARNING]
        self.assertEqual(len(loud), 1, [r.getMessage() for r in loud])
        self.assertIn("could not connect to the session database", loud[0].getMessage())
        self.assertIsNotNone(loud[0].exc_info)  # its traceback, once
        # The first failure loud, the others (the checks at opening, and those the saves
        # asked of the sockets already open) quiet, then one INFO.
        levels = [r.levelname for r in logs.records if "session store" in r.getMessage()]
        self.assertEqual(levels[0], "WARNING")
        self.assertEqual(levels[-1], "INFO")
        self.assertEqual(set(levels[1:-1]), {"DEBUG"}, levels)

    def expired_and_closed(
        self, browser: Client, expiring: WebSocketClient, staying: WebSocketClient
    ) -> None:
        """``browser``'s session expires: the periodic check closes its socket
        ``expiring``, and leaves alice's other session's socket ``staying`` open."""
        expire(browser)
        self.assertEqual(expiring.wait_closed(WAIT), users.REVOKED)
        users.send(self.alice, "other session stays")
        self.assertEqual(staying.receive(), "other session stays")

    @override_settings(WEBSOCKET_SESSION_CHECK_INTERVAL=0.2)
    def test_expired_session_is_closed_by_the_periodic_check(self) -> None:
        browser, other = logged_in("alice"), logged_in("alice")
        with tab(browser) as expiring, tab(other) as staying:
            self.expired_and_closed(browser, expiring, staying)

    @override_settings(WEBSOCKET_SESSION_CHECK_INTERVAL=0.2, WEBSOCKET_REVOKE_SESSIONS="yes")
    def test_a_wrong_revoke_sessions_revokes_as_true_with_one_error(self) -> None:
        """As docs/settings.rst says (check dwebsocket.E030 reports it): the periodic
        check read the setting unguarded, failed with a traceback every round, and
        revoked nothing."""
        users._wrong_revoke.clear()
        browser = logged_in("alice")
        with self.assertLogs("dwebsocket.users", "ERROR") as logs, tab(browser) as expiring:
            expire(browser)
            self.assertEqual(expiring.wait_closed(WAIT), users.REVOKED)
        [error] = [r.getMessage() for r in logs.records]
        self.assertIn("WEBSOCKET_REVOKE_SESSIONS", error)
        self.assertIn("dwebsocket.E030", error)

    @override_settings(
        WEBSOCKET_SESSION_CHECK_INTERVAL=0.2, SESSION_ENGINE="tests.groups.flaky_sessions"
    )
    def test_the_periodic_check_goes_on_after_a_round_raises_what_is_no_exception(
        self,
    ) -> None:
        """A round of the periodic check meets a ``BaseException`` that is no
        ``Exception`` (``SystemExit`` from code the session store calls; a gevent or
        eventlet ``Timeout``): it ended the check's thread, silently, and no session ended
        since was revoked by it for the life of the process. One ERROR now, however often
        it happens, and the next round checks."""
        browser, other = logged_in("alice"), logged_in("alice")
        try:
            with (
                self.assertLogs("dwebsocket.users", "DEBUG") as logs,
                tab(browser) as expiring,
                tab(other) as staying,
            ):
                for _ in range(2):
                    flaky_sessions.RAISED.clear()
                    flaky_sessions.RAISE[:] = [SystemExit("a library's sys.exit()")]
                    self.assertTrue(flaky_sessions.RAISED.wait(WAIT))
                    with users._checker._checking:  # that round is over
                        flaky_sessions.RAISE.clear()
                self.expired_and_closed(browser, expiring, staying)
        finally:
            flaky_sessions.RAISE.clear()
        errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("a library's sys.exit()", errors[0])

    @override_settings(WEBSOCKET_SESSION_CHECK_INTERVAL=0.2)
    def test_a_killed_periodic_check_starts_again_with_the_next_socket(self) -> None:
        """The periodic check's thread is killed (``GreenletExit``: a greenlet kill, here
        raised in the thread from outside): it ends, with one ERROR, and the next socket
        opened starts it again. It was never started again: no session ended since was
        revoked by it for the life of the process."""
        from greenlet import GreenletExit

        browser = logged_in("alice")
        with self.assertLogs("dwebsocket.users", "ERROR") as logs, tab(browser) as expiring:
            thread = users._checker._thread
            assert thread is not None and thread.ident is not None
            killed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(GreenletExit)
            )
            self.assertEqual(killed, 1)
            thread.join(WAIT)
            self.assertFalse(thread.is_alive())
            with tab(user=self.bob):
                pass  # a socket opened: the check starts again
            expire(browser)
            self.assertEqual(expiring.wait_closed(WAIT), users.REVOKED)
        [error] = [r.getMessage() for r in logs.records]
        self.assertIn("GreenletExit", error)

    @override_settings(WEBSOCKET_SESSION_CHECK_INTERVAL="60")
    def test_a_wrong_session_check_interval_is_logged(self) -> None:
        """Replaced by its default, as docs/settings.rst says, and now said at ERROR
        (it was silent, under servers that run no checks)."""
        users._wrong_interval.clear()
        with self.assertLogs("dwebsocket.users", "ERROR") as logs:
            users._checker.start()  # its loop reads the setting every second
            deadline = time.monotonic() + WAIT
            while not logs.records and time.monotonic() < deadline:
                time.sleep(0.05)
        [error] = [r.getMessage() for r in logs.records]
        self.assertIn("WEBSOCKET_SESSION_CHECK_INTERVAL", error)
        self.assertIn("dwebsocket.E031", error)

    def test_a_rotated_secret_key_revokes_only_sessions_no_key_verifies(self) -> None:
        """``SECRET_KEY`` rotated, the old one in ``SECRET_KEY_FALLBACKS``: a session's
        password hash made with the old key still verifies, for Django's ``get_user``
        and for the checks -- a socket opened before stays open. The browser's next
        request has Django give the session a new key (``cycle_key()``) with a new hash:
        its sockets close with 4001, as for any new key (docs/users.rst), the browser is
        still logged in, and a socket opened with the new cookie stays open. Once the
        old key leaves the fallbacks, a session that made no request since no longer
        verifies (Django logs it out): the checks close its sockets."""
        old = settings.SECRET_KEY
        laptop, phone = logged_in("alice"), logged_in("alice")
        with tab(laptop) as before, tab(phone) as idle:
            self.assertTrue(users._checker.wait_idle(WAIT))

            def checked() -> None:
                users._checker.check([m for m, _ in users._owners.values()])

            with override_settings(SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=[old]):
                checked()
                with self.assertRaises(TimeoutError):  # the fallback verifies it
                    before.wait_closed(0.3)
                with self.assertRaises(TimeoutError):
                    idle.wait_closed(0.3)
                key = laptop.session.session_key
                self.assertEqual(laptop.get("/whoami/").content, b"alice")  # cycle_key()
                self.assertNotEqual(laptop.session.session_key, key)
                self.assertEqual(before.wait_closed(WAIT), users.REVOKED)
                with tab(laptop) as after:
                    self.assertTrue(users._checker.wait_idle(WAIT))
                    checked()
                    users.send(self.alice, "both stay")
                    self.assertEqual(after.receive(), "both stay")
                    self.assertEqual(idle.receive(), "both stay")

                    with override_settings(SECRET_KEY_FALLBACKS=[]):  # the old key retired
                        checked()
                        self.assertEqual(idle.wait_closed(WAIT), users.REVOKED)
                        self.assertEqual(phone.get("/whoami/").content, b"")
                        users.send(self.alice, "still open")
                        self.assertEqual(after.receive(), "still open")

    @override_settings(AUTHENTICATION_BACKENDS=["tests.groups.user_views.DirectoryBackend"])
    def test_a_session_is_checked_with_the_user_key_django_gives_its_backend(self) -> None:
        """``get_user`` gets the session's user key as Django's own ``get_user`` gives it
        (``pk.to_python``), not as a str: a backend that minds the type keeps its users."""
        browser = logged_in("alice")
        key = browser.session.session_key
        self.assertTrue(users.session_is_valid(key, str(self.alice.pk)))
        self.assertFalse(users.session_is_valid(key, str(self.bob.pk)))
        naming_nobody = SessionStore()
        naming_nobody["_auth_user_id"] = "not a primary key"
        naming_nobody.create()
        self.assertFalse(users.session_is_valid(naming_nobody.session_key, "1"))
        with tab(browser) as ws:
            self.assertTrue(users._checker.wait_idle(WAIT))
            users._checker.check([m for m, _ in users._owners.values()], keep_connections=True)
            with self.assertRaises(TimeoutError):  # not closed
                ws.receive(timeout=0.3)

    @override_settings(WEBSOCKET_REVOKE_SESSIONS=False)
    def test_revocation_can_be_turned_off(self) -> None:
        browser = logged_in("alice")
        with tab(browser) as ws:
            browser.get("/logout/")
            users.send(self.alice, "still open")
            self.assertEqual(ws.receive(), "still open")
            users.disconnect(self.alice)  # explicit: still works
            self.assertEqual(ws.wait_closed(WAIT), users.REVOKED)
