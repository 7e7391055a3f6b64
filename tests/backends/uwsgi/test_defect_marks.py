"""The uWSGI defect marks count a failure only where the defect shows
(``tests/backends/uwsgi/defects.py``): checked by pytest runs in a subprocess on small
test files, because what is tested is how pytest reports them.

With the old marks (a strict xfail without ``raises=``) every test below that fails
counted as the defect, wherever and however it failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends.uwsgi.defects import DefectShown, check

REPO = Path(__file__).resolve().parents[3]

OWN_TESTS = """
from tests.backends.uwsgi.defects import check, defect

@defect("empty-message")
def test_fails_where_the_defect_shows():
    check("empty-message", None, correct="", signature=None)

@defect("empty-message")
def test_fails_earlier():
    raise ConnectionRefusedError("the server did not start")

@defect("empty-message")
def test_observes_something_else():
    check("empty-message", "other", correct="", signature=None)

@defect("empty-message")
def test_fixed():
    check("empty-message", "", correct="", signature=None)
"""

# A shared test, as tests/integration/test_default_backend.py::test_echo is written,
# marked by tests/backends/uwsgi/defects.py for the uwsgi backend (empty-message: a
# TimeoutError at the echo of an empty message).
SHARED_TESTS = """
import pytest

TIMEOUT = 0.1


class Client:
    def __init__(self, lost):
        self.lost, self.sent = lost, None

    def send(self, message):
        self.sent = message

    def recv(self, timeout):
        if self.sent == self.lost:
            raise TimeoutError(f"timed out in {timeout}s")
        return self.sent


@pytest.mark.parametrize("server", ["uwsgi-gevent"])
@pytest.mark.parametrize("lost", ["", "hello", "early"])
def test_echo(server, lost):
    if lost == "early":
        raise ConnectionRefusedError("the server did not start")
    client = Client(lost)
    for message in ["hello", "", b""]:
        client.send(message)
        answer = client.recv(timeout=TIMEOUT)
        assert answer == message
"""


def run_pytest(tmp_path: Path, source: str) -> str:
    (tmp_path / "test_marked.py").write_text(source)
    # As tests/conftest.py loads the marks:
    (tmp_path / "conftest.py").write_text(
        "from tests.backends.uwsgi.defects import pytest_collection_modifyitems  # noqa: F401\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rxXf", "-p", "no:cacheprovider", "test_marked.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout.splitlines()[-1]


def test_a_defect_test_counts_only_the_defects_signature(tmp_path: Path) -> None:
    # the defect shown: xfailed; failing earlier, observing something else, or fixed
    # (strict XPASS): failed
    assert run_pytest(tmp_path, OWN_TESTS).startswith("3 failed, 1 xfailed")


def test_a_marked_shared_test_counts_only_where_the_defect_shows(tmp_path: Path) -> None:
    # lost "": the defect (xfailed); lost "hello" (not an empty message) or a failure
    # before the echo: failed
    assert run_pytest(tmp_path, SHARED_TESTS).startswith("2 failed, 1 xfailed")


def test_check() -> None:
    check("empty-message", "", correct="", signature=None)
    with pytest.raises(DefectShown):
        check("empty-message", None, correct="", signature=None)
    with pytest.raises(DefectShown):
        check("x", 3, correct=1, signature=lambda o: o > 2)
    with pytest.raises(AssertionError) as info:
        check("empty-message", "other", correct="", signature=None)
    assert not isinstance(info.value, DefectShown)
