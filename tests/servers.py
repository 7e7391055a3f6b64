"""Real WSGI servers as subprocesses, for the integration tests and the compliance run.

Each entry of :data:`SERVERS` turns ``(host, port)`` into the command line serving the
test project (``tests.settings``, ``tests.urls``). To test another server, add one entry
(the ``server`` fixture in ``conftest.py`` is parametrized over this dict).

    with running_server("gevent", log_path, settings={"WEBSOCKET_COMPRESSION": False}) as srv:
        srv.url("/echo/")      # ws://127.0.0.1:PORT/echo/
        srv.log()              # everything it printed so far

Servers bind 127.0.0.1 only. Every wait is bounded; ``stop()`` sends SIGTERM, then
SIGKILL after a bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ASGI_SERVERS",
    "OTHER_SERVERS",
    "SERVERS",
    "ServerProcess",
    "free_port",
    "listens",
    "running_server",
    "shared_servers",
    "start_server",
]

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
HOST = "127.0.0.1"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: Server name -> ``(host, port) -> argv``.
SERVERS: dict[str, Callable[[str, int], list[str]]] = {
    "runserver": lambda host, port: [
        sys.executable,
        str(TESTS / "manage.py"),
        "runserver",
        f"{host}:{port}",
        "--noreload",
    ],
    "gevent": lambda host, port: [sys.executable, str(TESTS / "run_gevent.py"), f"{host}:{port}"],
    # The command lines of docs/deployment.rst, word for word.
    "gunicorn-gevent": lambda host, port: [
        _script("gunicorn"),
        "-c",
        "python:dwebsocket.contrib.gunicorn",
        "-k",
        "gevent",
        "--workers",
        "2",
        "--worker-connections",
        "1000",
        "--bind",
        f"{host}:{port}",
        "tests.wsgi",
    ],
    "gunicorn-gthread": lambda host, port: [
        _script("gunicorn"),
        "-c",
        "python:dwebsocket.contrib.gunicorn",
        "-k",
        "gthread",
        "--workers",
        "2",
        "--threads",
        "32",
        "--bind",
        f"{host}:{port}",
        "tests.wsgi",
    ],
    "eventlet": lambda host, port: [
        sys.executable,
        str(TESTS / "run_eventlet.py"),
        f"{host}:{port}",
    ],
    # uWSGI: the uwsgi backend under --gevent and --async --ugreen, and the default
    # backend taking the connection over (tests/backends/uwsgi/wsgi.py; docs/deployment.rst).
    "uwsgi-gevent": lambda host, port: _uwsgi(host, port, "uwsgi", "--gevent", "100"),
    "uwsgi-async": lambda host, port: _uwsgi(host, port, "uwsgi", "--async", "100", "--ugreen"),
    "uwsgi-takeover": lambda host, port: _uwsgi(
        host, port, "default", "--gevent", "100", "--gevent-early-monkey-patch"
    ),
}

#: Servers only the tests about them start (``start_server`` knows them too): gunicorn's
#: sync worker serves one connection per process, and the default backend refuses the
#: others (they expose no socket).
OTHER_SERVERS: dict[str, Callable[[str, int], list[str]]] = {
    "gunicorn-sync": lambda host, port: [
        _script("gunicorn"),
        "-c",
        "python:dwebsocket.contrib.gunicorn",
        "--workers",
        "1",
        "--bind",
        f"{host}:{port}",
        "tests.wsgi",
    ],
    # The same with a worker class of the project's own, derived from the sync worker.
    "gunicorn-sync-subclass": lambda host, port: [
        _script("gunicorn"),
        "-c",
        "python:dwebsocket.contrib.gunicorn",
        "-k",
        "tests.gunicorn_workers.SyncSubclass",
        "--workers",
        "1",
        "--bind",
        f"{host}:{port}",
        "tests.wsgi",
    ],
    # eventlet.wsgi with a stop callable: dwebsocket.contrib.shutdown.install(stop).
    "eventlet-stop": lambda host, port: [
        sys.executable,
        str(TESTS / "run_eventlet_stop.py"),
        f"{host}:{port}",
    ],
    "waitress": lambda host, port: [
        _script("waitress-serve"),
        f"--listen={host}:{port}",
        "tests.wsgi:application",
    ],
    # The default backend under uWSGI where its takeover refuses (501): --async cores,
    # and --gevent without monkey-patched sockets.
    "uwsgi-takeover-async": lambda host, port: _uwsgi(
        host, port, "default", "--async", "10", "--ugreen"
    ),
    "uwsgi-takeover-unpatched": lambda host, port: _uwsgi(host, port, "default", "--gevent", "10"),
    # --async cores without a suspend engine: nothing switches cores, a waiting view
    # would hold the whole worker (refused by both backends).
    "uwsgi-takeover-async-plain": lambda host, port: _uwsgi(host, port, "default", "--async", "4"),
    # The uwsgi backend behind uWSGI's HTTP router, as the 0.x README ran it ("--http :8080
    # --http-websockets --processes 1 --async 30 --ugreen --http-timeout 300").
    "uwsgi-readme": lambda host, port: (
        [
            "--http" if arg == "--http-socket" else arg
            for arg in _uwsgi(host, port, "uwsgi", "--async", "30", "--ugreen")
        ]
        + [
            "--http-websockets",
            "--http-timeout",
            "300",
        ]
    ),
    "granian": lambda host, port: [
        _script("granian"),
        "--interface",
        "wsgi",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "tests.wsgi:application",
    ],
}

#: ASGI servers serving the test project through ``dwebsocket.asgi`` (``tests/asgi/app.py``);
#: ``tests/asgi/`` runs the shared tests on them, with sync and with async views.
ASGI_SERVERS: dict[str, Callable[[str, int], list[str]]] = {
    "uvicorn": lambda host, port: [
        _script("uvicorn"),
        "--host",
        host,
        "--port",
        str(port),
        "--lifespan",
        "on",
        "--no-access-log",
        # The server's own limit: above WEBSOCKET_MAX_MESSAGE_SIZE, dwebsocket says 1009.
        "--ws-max-size",
        str(64 << 20),
        "tests.asgi.app:application",
    ],
    "daphne": lambda host, port: [
        _script("daphne"),
        "-b",
        host,
        "-p",
        str(port),
        "tests.asgi.app:application",
    ],
    # (granian's WSGI interface is OTHER_SERVERS' "granian")
    "granian-asgi": lambda host, port: [
        _script("granian"),
        "--interface",
        "asgi",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "tests.asgi.app:application",
    ],
    "hypercorn": lambda host, port: [
        _script("hypercorn"),
        "--bind",
        f"{host}:{port}",
        "--config",
        "python:tests.asgi.hypercorn_config",
        "tests.asgi.app:application",
    ],
}

#: dwebsocket's log at DEBUG on the server's stderr, so failures show what it did.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(levelname)s %(name)s] %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"dwebsocket": {"handlers": ["stderr"], "level": "DEBUG", "propagate": False}},
}


def shared_servers() -> list[str]:
    """The servers the shared suite runs on: those named in ``DWEBSOCKET_TEST_SERVERS``
    (comma-separated; the test matrix names two), else all of :data:`SERVERS`.

    Raises ``ValueError`` for a name that is not in :data:`SERVERS`.
    """
    names = [n.strip() for n in os.environ.get("DWEBSOCKET_TEST_SERVERS", "").split(",")]
    chosen = [name for name in names if name]
    unknown = sorted(set(chosen) - set(SERVERS))
    if unknown:
        raise ValueError(f"DWEBSOCKET_TEST_SERVERS names no server {unknown}: {sorted(SERVERS)}")
    return chosen or sorted(SERVERS)


def _uwsgi(host: str, port: int, backend: str, *loop: str) -> list[str]:
    """uWSGI serving tests/backends/uwsgi/wsgi.py with ``backend`` ("uwsgi" or "default")."""
    return [
        _script("uwsgi"),
        "--master",
        "--die-on-term",
        "--need-app",
        "--processes",
        "1",
        "--http-socket",
        f"{host}:{port}",
        *loop,
        "--module",
        "tests.backends.uwsgi.wsgi:application",
        "--env",
        f"DWEBSOCKET_UWSGI_BACKEND={backend}",
        "--disable-logging",
        # uWSGI drops a frame over this many KiB without a close frame; above
        # WEBSOCKET_MAX_MESSAGE_SIZE the backend answers 1009 first (64 MiB: compliance).
        "--websocket-max-size",
        "65536",
    ]


def _script(name: str) -> str:
    """The console script ``name`` of the running environment (a venv's ``bin/``)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def end_process(
    process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM, group: bool = True
) -> None:
    """Send ``sig`` to a process still running, SIGKILL after ``timeout``; with ``group``
    (one started with ``start_new_session``), then SIGKILL what is left of its process
    group (gunicorn's workers)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class ServerProcess:
    """A running server; see the module docstring."""

    def __init__(
        self,
        name: str,
        port: int,
        process: subprocess.Popen[bytes],
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self.name = name
        self.host = HOST
        self.port = port
        self.process = process
        self.log_path = log_path
        self._log_file = log_file

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} {self.host}:{self.port} pid={self.process.pid}>"

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    def log(self, since: int = 0) -> str:
        """What the server printed (stdout and stderr), from byte offset ``since``."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def mark(self) -> int:
        """The current end of the log, for :meth:`log` ``(since=...)``."""
        return self.log_path.stat().st_size

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), then SIGKILL after ``STOP_TIMEOUT``; returns the exit
        status. Whatever is left of the process group (gunicorn's workers) is killed."""
        end_process(self.process, STOP_TIMEOUT, sig)
        if not self._log_file.closed:
            self._log_file.close()
        return self.process.returncode


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP ``port`` (``/proc/net/tcp``, IPv4)."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    return inodes


def _session_socket_inodes(session: int) -> set[str]:
    """The inodes of the sockets held by the processes of ``session`` (a server started
    with ``start_new_session``: its own process, gunicorn's or uWSGI's workers...)."""
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[3]) != session:
                    continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """True once ``process`` (or a process of its session) listens on ``port``; False if it
    exited, did not within ``timeout``, or another process listens there. A port open is
    not enough: one picked at once by another test's server (two workers), or taken
    between ``free_port()`` and the bind, answered for a server that had failed to bind
    it (daphne logs that and keeps running), and the test talked to another's server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        ours = listens(process, port)
        if ours is not None:
            return ours
        time.sleep(0.05)
    return False


def listens(process: subprocess.Popen[bytes], port: int) -> bool | None:
    """Whether what listens on ``port`` is ``process``'s (or a process of its session's,
    as :func:`start_server` starts them); None when nothing listens there."""
    listening = _listening_inodes(port)
    if not listening:
        return None
    return bool(listening & _session_socket_inodes(process.pid))


def spawn(
    argv: list[str], cwd: Path, env: dict[str, str], out: IO[bytes]
) -> subprocess.Popen[bytes]:
    """A server process in a session of its own (so that :func:`listens` finds its
    workers' sockets, and :func:`end_process` its whole group), its output in ``out``."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_server(
    name: str,
    log_path: Path,
    *,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Start server ``name`` on a free port and return once it accepts connections.

    ``settings`` are extra Django settings (JSON-serializable), ``env`` extra environment
    variables. Raises ``RuntimeError`` with the server's log if it does not come up.
    """
    overrides = {"LOGGING": LOGGING, **(settings or {})}
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DWEBSOCKET_TEST_SETTINGS": json.dumps(overrides),
        **(env or {}),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # another process may grab the port between check and bind
        port = free_port()
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed by ServerProcess.stop()
        argv = {**SERVERS, **OTHER_SERVERS, **ASGI_SERVERS}[name](HOST, port)
        try:
            process = spawn(argv, REPO, child_env, log_file)
        except BaseException:
            log_file.close()  # the server's program is missing (uwsgi not installed...)
            raise
        server = ServerProcess(name, port, process, log_path, log_file)
        if _wait_until_listening(process, port, timeout):
            return server
        server.stop()
    raise RuntimeError(f"{name} did not start; its log:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def running_server(name: str, log_path: Path, **kwargs: Any) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager that always stops the server."""
    server = start_server(name, log_path, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def project_server(
    argv: Callable[[int], list[str]],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: Callable[[int], object] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``argv(port)``, a server of a project a test made in ``cwd`` on a free
    ``port``, its output in ``log``, and yield ``(its process, port)`` once it listens
    there itself (:func:`listens`, as :func:`start_server` waits) and then ``ready(port)``
    (what else the test needs of it: a page that answers) no longer raises ``OSError``.
    A port that answers is not enough: it may be another test's server's, picked too or
    taken before the bind, while this one failed to bind it. Not listening (exited, or
    the port another's): stopped and started again on another port, up to three times.
    On leaving: SIGTERM, SIGKILL after ``timeout``, then to what is left of its process
    group; its log must hold no traceback. Raises ``AssertionError`` with the log if it
    does not come up, or exits or is not ready within ``timeout``."""
    for _attempt in range(3):  # another process may grab the port between check and bind
        port = free_port()
        with open(log, "wb") as out:  # the last attempt's: the one that ran, or failed
            process = spawn(argv(port), cwd, env, out)
        if _wait_until_listening(process, port, timeout):
            break
        end_process(process, timeout)
    else:
        raise AssertionError(f"{argv(port)[0]} did not listen; its log:\n{log.read_text()}")
    try:
        deadline = time.monotonic() + timeout
        while ready is not None:
            assert process.poll() is None, log.read_text()
            try:
                ready(port)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield process, port
    finally:
        end_process(process, timeout)
    assert "Traceback" not in log.read_text(), log.read_text()


@contextlib.contextmanager
def flooding(script: str, server: ServerProcess) -> Iterator[None]:
    """Run ``script`` (Python source, given the server's host and port as arguments) in
    another process until the block ends; entered once it printed ``flooding``: a client
    sending as fast as it can, whose own process the server's event loop cannot slow."""
    flooder = subprocess.Popen(
        [sys.executable, "-c", script, server.host, str(server.port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert flooder.stdout is not None
        assert flooder.stdout.readline() == b"flooding\n"
        yield
    finally:
        flooder.kill()
        flooder.wait(30)
        if flooder.stdout is not None:
            flooder.stdout.close()
