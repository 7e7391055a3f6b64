"""``install_for_runserver``: SIGTERM ends ``manage.py runserver`` as Ctrl-C does, in the
process that serves and nowhere else. (End to end: ``tests/testing/test_readme.py``.)"""

from __future__ import annotations

import signal
import threading

import pytest

from dwebsocket.contrib.shutdown import install_for_runserver


@pytest.fixture
def sigterm() -> object:
    saved = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, saved)


@pytest.mark.parametrize(
    ("argv", "run_main"),
    [
        (["manage.py", "migrate"], "true"),  # not the server
        (["manage.py", "runserver"], None),  # the autoreloader's parent: its child serves
        (["gunicorn", "mysite.wsgi"], None),
    ],
)
def test_only_the_serving_runserver_process(
    sigterm: None, monkeypatch: pytest.MonkeyPatch, argv: list[str], run_main: str | None
) -> None:
    if run_main is None:
        monkeypatch.delenv("RUN_MAIN", raising=False)
    else:
        monkeypatch.setenv("RUN_MAIN", run_main)
    assert install_for_runserver(argv) is False
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sigterm_handler_someone_set_is_kept(sigterm: None) -> None:
    def theirs(signum: int, frame: object) -> None: ...

    signal.signal(signal.SIGTERM, theirs)
    assert install_for_runserver(["manage.py", "runserver", "--noreload"]) is False
    assert signal.getsignal(signal.SIGTERM) is theirs


def test_not_from_another_thread(sigterm: None) -> None:
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(
            install_for_runserver(["manage.py", "runserver", "--noreload"])
        )
    )
    thread.start()
    thread.join(10)
    assert result == [False]


def test_the_serving_process_gets_the_handler(sigterm: None) -> None:
    assert install_for_runserver(["manage.py", "runserver", "--noreload"]) is True
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_a_signal_during_the_apps_import_closes_nothing_and_imports_nothing() -> None:
    # CI saw it: a gunicorn worker told to stop while it was still importing the app ran
    # the SIGTERM hook inside the import of dwebsocket.conf; importing the registry from
    # there failed on the circle (registry -> websocket -> metrics -> conf) and the
    # worker died with "Worker failed to boot". A half-imported dwebsocket.conf stands
    # in for that moment, in a fresh interpreter.
    import subprocess
    import sys

    code = (
        "import sys, types\n"
        "sys.modules['dwebsocket.conf'] = types.ModuleType('dwebsocket.conf')\n"
        "from dwebsocket.contrib import gunicorn, shutdown\n"
        "gunicorn._going_away(0)\n"
        "print(shutdown.going_away(0), 'dwebsocket.backends.default.registry' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
