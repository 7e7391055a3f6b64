"""The README's quick start, copied into a brand-new ``django-admin startproject mysite``.

The literal blocks between ``.. quick-start-begin`` and ``.. quick-start-end`` are split
on their ``# <file>.py`` lines and applied as a reader would: ``NAME = [..., items]``
appends to that setting; ``views.py``, ``urls.py`` and ``tests.py`` go next to the
project's ``urls.py`` (``from . import views``), ``serve.py`` next to ``manage.py``. Then
the project's own tests run (``manage.py test``), and the echo view answers a real
client under ``manage.py runserver``, the README's gevent ``serve.py`` and its gunicorn
command, each run as written (bound to a free port on 127.0.0.1 instead of 8000); and
stopping each as one does (Ctrl-C for runserver, SIGTERM for the others) gives an open
WebSocket its 1001 close frame.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.servers import REPO, project_server

pytestmark = pytest.mark.server

README = REPO / "README.rst"
PROJECT = "mysite"
WAIT = 30.0


def quick_start() -> dict[str, str]:
    """``{file name: code}`` from the README's quick start."""
    text = README.read_text()
    begin, end = text.index(".. quick-start-begin"), text.index(".. quick-start-end")
    files: dict[str, str] = {}
    for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", text[begin:end]):
        code = "\n".join(line[4:] for line in block.splitlines())
        for name, body in re.findall(r"^# (\w+\.py)\n(.*?)(?=^# \w+\.py\n|\Z)", code, re.M | re.S):
            files[name] = files.get(name, "") + body
    return files


def commands() -> dict[str, list[str]]:
    """The quick start's shell commands: ``{first word: argv}``."""
    text = README.read_text()
    text = text[text.index(".. quick-start-begin") : text.index(".. quick-start-end")]
    found = {}
    for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", text):
        for line in block.splitlines():
            words = shlex.split(line.strip())
            if words and words[0] in ("python", "gunicorn"):
                found[words[0]] = words
    return found


def test_the_quick_start_has_what_the_test_applies() -> None:
    assert sorted(quick_start()) == ["serve.py", "settings.py", "tests.py", "urls.py", "views.py"]
    assert commands()["python"] == ["python", "manage.py", "runserver"]
    assert commands()["gunicorn"][-1] == f"{PROJECT}.wsgi"


def apply_settings(settings: Path, snippet: str) -> None:
    """``NAME = [..., items]`` means: add items to the list the project already has."""
    lines = []
    for line in snippet.splitlines():
        match = re.fullmatch(r"(\w+) = \[\.\.\., (.*)\]", line)
        lines.append(f"{match[1]} = [*{match[1]}, {match[2]}]" if match else line)
    settings.write_text(settings.read_text() + "\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quickstart")
    run(root, "-m", "django", "startproject", PROJECT, str(root))
    files = quick_start()
    package = root / PROJECT
    apply_settings(package / "settings.py", files["settings.py"])
    for name in ("views.py", "urls.py", "tests.py"):
        (package / name).write_text(files[name])
    (root / "serve.py").write_text(
        files["serve.py"]
        .replace('("0.0.0.0", 8000)', "(sys.argv[1], int(sys.argv[2]))")
        .replace("from gevent import monkey;", "import sys; from gevent import monkey;")
    )
    return root


def env(**extra: str) -> dict[str, str]:
    """The environment of the project's processes: this checkout, no DJANGO_* of ours."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def run(cwd: Path, *args: str, **extra: str) -> str:
    """``python *args`` in ``cwd`` (``extra``: more environment); its output. Fails the
    test if it fails."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env(**extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_its_checks_pass(project: Path) -> None:
    assert "no issues" in run(project, "manage.py", "check")


def test_its_own_test_passes(project: Path) -> None:
    output = run(project, "manage.py", "test", "--noinput")
    assert re.search(r"Ran 1 test\b.*\nOK\b", output, re.S), output


def gunicorn() -> str:
    script = Path(sys.executable).with_name("gunicorn")
    return str(script) if script.exists() else "gunicorn"


def _bind(argv: list[str], port: int) -> list[str]:
    """The README's command as written, on 127.0.0.1:port instead of 0.0.0.0:8000."""
    return [arg.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for arg in argv]


SERVE = {
    "runserver": lambda port: [
        sys.executable,
        *commands()["python"][1:],
        f"127.0.0.1:{port}",
        "--noreload",
    ],
    "serve.py": lambda port: [sys.executable, "serve.py", "127.0.0.1", str(port)],
    "gunicorn": lambda port: [gunicorn(), *_bind(commands()["gunicorn"], port)[1:]],
}
#: Ctrl-C for the development server; SIGTERM (a deploy) for all three.
STOPS = [("runserver", signal.SIGINT), *((name, signal.SIGTERM) for name in sorted(SERVE))]


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.fixture(params=sorted(SERVE))
def served(
    request: pytest.FixtureRequest, project: Path, tmp_path: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes], str]]:
    def ready(port: int) -> None:
        assert get(port, "/echo/") == b"connect with a WebSocket client"

    argv = SERVE[request.param]
    log = tmp_path / "server.log"
    with project_server(argv, project, env(), log, ready, WAIT) as (process, port):
        yield port, process, request.param


def test_the_echo_view_answers_a_browser(
    served: tuple[int, subprocess.Popen[bytes], str],
) -> None:
    # What the README's browser-console snippet does, from a page on the same server.
    port = served[0]
    origin = Origin(f"http://127.0.0.1:{port}")
    with connect(
        f"ws://127.0.0.1:{port}/echo/", origin=origin, proxy=None, open_timeout=WAIT
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT) == "hello"
        ws.send(b"\x00bytes")
        assert ws.recv(timeout=WAIT) == b"\x00bytes"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_stopping_the_server_says_goodbye(
    served: tuple[int, subprocess.Popen[bytes], str], stop: signal.Signals
) -> None:
    port, process, _ = served
    with connect(f"ws://127.0.0.1:{port}/echo/", proxy=None, open_timeout=WAIT) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT) == "hello"
        process.send_signal(stop)  # to gunicorn: its master, as a deploy does
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None, "no close frame: the connection was just cut"
    assert closed.value.rcvd.code == 1001
    process.wait(WAIT)
