"""The worker thread of a ``websocket`` scope (``dwebsocket/backends/asgi/threads.py``): one
call at a time on one thread while calls come, the thread given back after ``linger`` idle
seconds with its database connections closed, kept while a transaction is open; and asgiref
running a session's sync code on it. ``test_asgi.py`` checks the same on real servers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections, transaction

from dwebsocket import db
from dwebsocket.backends.asgi.threads import SessionExecutor, held, session_context
from tests.failing_db import base as failing_db
from tests.wire import TIMEOUT

LINGER = 0.05


def ended(executor: SessionExecutor) -> bool:
    """Wait up to TIMEOUT for the executor's thread to end."""
    deadline = time.monotonic() + TIMEOUT
    while executor.thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    return executor.thread is None


def run(executor: SessionExecutor, fn: Callable[[], Any]) -> Any:
    return executor.submit(fn).result(TIMEOUT)


def test_calls_run_in_order_on_one_thread_that_ends_when_idle() -> None:
    executor = SessionExecutor(linger=LINGER)
    try:
        assert executor.thread is None  # nothing runs before the first call
        seen: list[tuple[int, threading.Thread]] = []
        release = threading.Event()
        first = executor.submit(release.wait, TIMEOUT)
        worker = executor.thread  # busy until released: it cannot end meanwhile
        later = [
            executor.submit(lambda n=n: seen.append((n, threading.current_thread())))
            for n in range(5)
        ]
        release.set()
        assert first.result(TIMEOUT) is True
        for future in later:
            future.result(TIMEOUT)
        assert [n for n, _ in seen] == list(range(5))
        assert {thread for _, thread in seen} == {worker} != {threading.current_thread()}
        assert ended(executor)
        assert worker is not None
        worker.join(TIMEOUT)  # it lets go of the executor, then returns
        assert not worker.is_alive()
        # The next call gets a new thread.
        assert run(executor, threading.current_thread) not in (worker, threading.current_thread())
    finally:
        executor.shutdown()
    assert executor.thread is None


def test_running_says_whether_the_thread_is_in_a_call() -> None:
    executor = SessionExecutor(linger=LINGER)
    try:
        started, release = threading.Event(), threading.Event()

        def hold() -> bool:
            started.set()
            return release.wait(TIMEOUT)

        assert not executor.running
        call = executor.submit(hold)
        assert started.wait(TIMEOUT)
        assert executor.running
        release.set()
        assert call.result(TIMEOUT) is True
        deadline = time.monotonic() + TIMEOUT
        while executor.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not executor.running
    finally:
        executor.shutdown()


def test_held_says_whether_a_sync_frame_of_the_session_waits_for_the_loop() -> None:
    """What ``arun_view`` asks before an async view's session: a coroutine the
    session's thread waits for (``async_to_sync`` from a ``sync_to_async`` call, as
    Django runs a view behind a sync-only middleware) holds that thread."""

    async def inner() -> bool:
        return held()

    async def session() -> tuple[bool, bool, bool]:
        async with session_context():
            on_the_loop = held()
            from_the_thread = await sync_to_async(async_to_sync(inner))()
            return on_the_loop, from_the_thread, held()

    assert asyncio.run(session()) == (False, True, False)
    assert held() is False  # outside any session


@pytest.mark.django_db(transaction=True)
def test_the_thread_closes_its_database_connections_before_it_ends() -> None:
    executor = SessionExecutor(linger=LINGER)
    try:

        def query() -> Any:
            conn = connections["default"]
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            return conn

        conn = run(executor, query)
        assert ended(executor)
        assert conn.connection is None
    finally:
        executor.shutdown()


@pytest.mark.django_db(transaction=True)
def test_the_thread_stays_while_a_transaction_is_open() -> None:
    executor = SessionExecutor(linger=LINGER)
    atomic = transaction.atomic()
    try:
        run(executor, atomic.__enter__)
        thread = executor.thread
        time.sleep(LINGER * 6)
        assert executor.thread is thread and thread is not None and thread.is_alive()
        assert run(executor, threading.current_thread) is thread
        run(executor, lambda: atomic.__exit__(None, None, None))
        assert ended(executor)
    finally:
        executor.shutdown()


def test_shutdown_ends_the_thread_and_refuses_new_calls() -> None:
    executor = SessionExecutor(linger=TIMEOUT * 10)
    run(executor, lambda: None)
    thread = executor.thread
    assert thread is not None
    executor.shutdown(wait=True)
    assert not thread.is_alive() and executor.thread is None
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)


def test_shutdown_can_cancel_what_has_not_started() -> None:
    executor = SessionExecutor(linger=LINGER)
    started, release = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(TIMEOUT)

    running = executor.submit(hold)
    assert started.wait(TIMEOUT)
    waiting = executor.submit(lambda: "never")
    executor.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    thread = executor.thread
    release.set()
    assert running.result(TIMEOUT) is True
    assert thread is not None
    thread.join(TIMEOUT)
    assert not thread.is_alive() and executor.thread is None


def test_a_session_runs_its_sync_code_on_its_own_thread_and_gives_it_back() -> None:
    async def session() -> tuple[threading.Thread, threading.Thread, threading.Thread, int]:
        async with session_context():
            here = sync_to_async(threading.current_thread)
            first, again = await here(), await here()
            deadline = time.monotonic() + TIMEOUT
            while first.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the default linger is a second
            later = await here()
            async with session_context():  # nested: the outer context's executor
                inner = await here()
            return first, again, later, int(inner is later)

    first, again, later, same = asyncio.run(session())
    assert first is again  # one thread while the calls keep coming
    assert not first.is_alive()  # given back while idle
    assert later is not first and same
    assert first.name == later.name == "dwebsocket-session"


@pytest.mark.django_db(transaction=True, databases=["default", "close_fails", "after_close_fails"])
def test_a_connection_whose_close_fails_is_logged_and_the_next_call_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The thread ends after its idle linger and one of its connections fails to close
    (its server went away meanwhile): the others are closed all the same, the failure is
    logged, and the executor starts a new thread for the next call."""
    executor = SessionExecutor(linger=LINGER)
    aliases = ("default", "close_fails", "after_close_fails")

    def query() -> list[Any]:
        used = []
        for alias in aliases:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            used.append(connections[alias])
        return used

    db._close_failed.discard("close_fails")  # its first failure in this process
    failing_db.CLOSE_FAILS.set()
    try:
        with caplog.at_level(logging.DEBUG, logger="dwebsocket"):
            used = run(executor, query)
            first = executor.thread
            assert ended(executor)
            assert first is not None
            first.join(TIMEOUT)  # it lets go of the executor, then returns
            assert not first.is_alive()
            assert [conn.connection for conn in used] == [None, None, None]
            logged = [r for r in caplog.records if "close_fails" in r.getMessage()]
            assert [r.levelname for r in logged] == ["WARNING"], caplog.text
            assert "server closed the connection unexpectedly" in logged[0].getMessage()

            # The next call: a new thread, whose connections work; the same failure again
            # is not logged as loudly again.
            assert run(executor, lambda: len(query())) == 3
            assert executor.thread is not first
            assert ended(executor)
            logged = [r for r in caplog.records if "close_fails" in r.getMessage()]
            assert [r.levelname for r in logged] == ["WARNING", "DEBUG"], caplog.text
    finally:
        failing_db.CLOSE_FAILS.clear()
        executor.shutdown()
