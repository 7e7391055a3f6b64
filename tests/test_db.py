"""``dwebsocket.db.wait_releasing``: the one rule, in Python, for when a waiting view gives
its idle database connections back (the default backend's Python path and the ASGI
backend's sync ``wait()``; the C fast path is its twin, tested against the backend in
``tests/backends/default``). The clock is the real one; ``wait`` stands for a socket or
a condition, and answers at once."""

from __future__ import annotations

import time

import pytest

from dwebsocket import db


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times ``release_idle_connections`` was called."""
    calls: list[float] = []
    monkeypatch.setattr(db, "release_idle_connections", lambda: calls.append(time.monotonic()))
    return calls


def test_a_wait_long_after_the_last_release_releases_first(releases: list[float]) -> None:
    waits: list[float | None] = []

    def wait(until: float | None) -> str | None:
        waits.append(until)
        return "message"

    before = time.monotonic()
    answer, checked = db.wait_releasing(wait, before - 2 * db.CHECK_INTERVAL, None)
    assert answer == "message"
    assert len(releases) == 1 and waits == [None]  # then blocks without a limit: no wake-ups
    assert before <= checked <= releases[0]


def test_a_wait_that_ends_before_the_next_release_does_not_release(
    releases: list[float],
) -> None:
    now = time.monotonic()
    deadline = now + db.CHECK_INTERVAL / 2
    answer, checked = db.wait_releasing(lambda until: None, now, deadline)
    assert (answer, checked, releases) == (None, now, [])


def test_a_longer_wait_is_cut_for_the_release_then_goes_on(releases: list[float]) -> None:
    waits: list[float | None] = []

    def wait(until: float | None) -> str | None:
        waits.append(until)
        return None if len(waits) == 1 else "late"

    now = time.monotonic()
    answer, checked = db.wait_releasing(wait, now, None)
    assert waits == [now + db.CHECK_INTERVAL, None]
    assert answer == "late" and len(releases) == 1 and now <= checked <= releases[0]


@pytest.mark.parametrize("message", ["", b""])
def test_an_empty_message_during_the_cut_wait_is_the_answer(
    releases: list[float], message: str | bytes
) -> None:
    """An empty text or binary message is a message: taking it for a timeout would wait
    again and lose it (the ASGI backend's ``wait_sync`` answers messages, not booleans)."""
    answers = iter([message, "next"])
    now = time.monotonic()
    answer, checked = db.wait_releasing(lambda until: next(answers), now, None)
    assert (answer, checked, releases) == (message, now, [])


def test_a_deadline_passed_during_the_cut_wait_ends_it(releases: list[float]) -> None:
    now = time.monotonic()

    def wait(until: float | None) -> None:
        time.sleep(0.02)  # woke early (the caller looks again): the deadline passed
        return None

    answer, checked = db.wait_releasing(wait, now - db.CHECK_INTERVAL + 0.01, now + 0.015)
    assert (answer, releases) == (None, [])
    assert checked == now - db.CHECK_INTERVAL + 0.01
