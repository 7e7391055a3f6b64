"""Fresh virtual environments with dwebsocket installed as a user installs it, and the
README's quick-start project served from them.

Nothing of the checkout leaks in: the venvs are made with ``venv``, filled by pip from the
built wheel or sdist (with the ordinary index for the dependencies), and their processes
run in the project's directory with an environment stripped of ``PYTHONPATH``, Django's
and dwebsocket's variables. Every wait is bounded; :func:`serving` stops what it starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from websockets.sync.client import connect

from tests.servers import end_process, free_port
from tests.testing.test_readme import PROJECT, apply_settings, quick_start

__all__ = ["PROJECT", "Venv", "echo", "make_project", "serving"]

INSTALL_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
WAIT = 20.0


class Venv:
    """A new virtual environment at ``path`` (``python -m venv``, no pip of its own: the
    test's pip installs into it with ``--python``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(path)],
            check=True,
            timeout=RUN_TIMEOUT,
        )
        self.bin = path / "bin"
        self.python = str(self.bin / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user's shell with this venv activated."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
            and not k.startswith(("DJANGO_", "DWEBSOCKET_", "PYTEST_", "COV_"))
        }
        path = os.pathsep.join([str(self.bin), keep.get("PATH", "")])
        return {**keep, "VIRTUAL_ENV": str(self.path), "PATH": path, **extra}

    def install(self, *requirements: str, env: dict[str, str] | None = None) -> str:
        """``pip install`` into this venv; returns pip's output. Raises ``AssertionError``
        with that output when pip fails."""
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--python", self.python, "install", *requirements],
            env=self.env(**(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
        return done.stdout + done.stderr

    def run(self, *args: str, cwd: Path) -> str:
        """Run ``bin/<args[0]>`` (``python``, ``django-admin``...) to its end; its output.
        Raises ``AssertionError`` with the output when it fails."""
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd,
            env=self.env(PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
        return done.stdout + done.stderr


def make_project(venv: Venv, root: Path) -> Path:
    """``django-admin startproject mysite`` with the README's quick start applied
    (settings, ``views.py``, ``urls.py``, ``serve.py`` taking host and port); returns the
    directory of ``manage.py``."""
    root.mkdir(parents=True, exist_ok=True)
    venv.run("django-admin", "startproject", PROJECT, str(root), cwd=root)
    files = quick_start()
    package = root / PROJECT
    apply_settings(package / "settings.py", files["settings.py"])
    for name in ("views.py", "urls.py"):
        (package / name).write_text(files[name])
    (root / "serve.py").write_text(
        files["serve.py"]
        .replace('("0.0.0.0", 8000)', "(sys.argv[1], int(sys.argv[2]))")
        .replace("from gevent import monkey;", "import sys; from gevent import monkey;")
    )
    return root


@contextlib.contextmanager
def serving(venv: Venv, argv: Sequence[str], cwd: Path, log: Path) -> Iterator[int]:
    """Start ``bin/<argv[0]> argv[1:]``, ``{port}`` in it replaced by a free port on
    127.0.0.1, and yield the port once it accepts connections. On leaving: SIGTERM, then
    SIGKILL to the whole process group after a bound. Raises ``AssertionError`` with the
    server's log if it exits or does not listen within ``START_TIMEOUT``."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(venv.bin / argv[0]), *(a.replace("{port}", str(port)) for a in argv[1:])],
            cwd=cwd,
            env=venv.env(PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
        yield port
    finally:
        end_process(process, STOP_TIMEOUT)


def echo(port: int, path: str = "/echo/") -> None:
    """The quick start's check: the ``websockets`` client gets text and bytes back, and
    the close handshake ends with 1000. Raises ``AssertionError`` otherwise."""
    with connect(
        f"ws://127.0.0.1:{port}{path}", proxy=None, open_timeout=WAIT, close_timeout=WAIT
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=WAIT) == "hello"
        ws.send(b"\x00\xffbytes")
        assert ws.recv(timeout=WAIT) == b"\x00\xffbytes"
    assert ws.close_code == 1000, ws.close_code
