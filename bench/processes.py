"""What the benchmark scripts share about the processes they start: a free port on
127.0.0.1, the open-files limit, stopping a process group, waiting for a listener, the
processes a run started (:class:`Processes`) and the JSON lines they print (:class:`Lines`).

``bench/compare.py``, ``bench/fanout.py``, ``bench/scale.py`` and ``bench/vm/run.py`` each
had their own copy.
They put ``bench/`` on ``sys.path`` and ``import processes`` (which also works when
``bench/memory.py`` imports ``bench.compare``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "HOST",
    "Lines",
    "Processes",
    "free_port",
    "nofile_hard",
    "raise_nofile",
    "stop_group",
    "wait_listening",
]

#: Every benchmark server listens here, and nowhere else.
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on :data:`HOST` that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def nofile_hard() -> int:
    """This process's hard ``RLIMIT_NOFILE``: the most open files any of it may get."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (only ``CAP_SYS_RESOURCE`` could
    raise further) and return it. In a ``preexec_fn``, for a child only; in the script
    itself, for every child it starts."""
    hard = nofile_hard()
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def stop_group(process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Stop ``process`` (started with ``start_new_session=True``) and its process group:
    ``sig`` to the group, SIGKILL to it if the leader is still there after ``timeout``
    seconds, then SIGKILL to whatever is left (children that outlived the leader: uWSGI
    workers, UML's guest processes). Waits for the leader, each wait bounded by
    ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Return once something accepts connections on ``port``; fail if ``process`` exits
    first or nothing does within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s")


class Processes:
    """Every process a run started, each in its own process group, stopped on exit
    (:func:`stop_group`: SIGTERM, then SIGKILL after ``stop_timeout`` seconds)."""

    def __init__(self, cwd: Path, stop_timeout: float = 10.0) -> None:
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its stderr (and stdout, unless piped) appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as log_file:
            process = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else log_file,
                stderr=log_file,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        stop_group(process, self.stop_timeout)
        if process.stdout is not None:
            process.stdout.close()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)


class Lines:
    """JSON lines from several processes' stdout, read with a deadline."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        for process in processes:
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            self.selector.register(process.stdout, selectors.EVENT_READ, process)
            self.buffers[process.pid] = b""

    def read(self, timeout: float) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
        """Yield (process, decoded line) until the caller stops or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                process = key.data
                stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                data = os.read(stream.fileno(), 65536)
                if not data:
                    raise RuntimeError(f"process {process.args!r} ended (exit {process.wait()})")
                self.buffers[process.pid] += data
                *lines, self.buffers[process.pid] = self.buffers[process.pid].split(b"\n")
                for line in lines:
                    yield process, json.loads(line)
        raise TimeoutError(f"no complete answer within {timeout:.0f} s")

    def each(
        self, processes: list[subprocess.Popen[bytes]], event: str, timeout: float
    ) -> list[dict[str, Any]]:
        """The next line with ``"event": event`` from each of ``processes``, in their order."""
        got: dict[int, dict[str, Any]] = {}
        for process, line in self.read(timeout):
            if line.get("event") == event:
                got[process.pid] = line
                if len(got) == len(processes):
                    break
        return [got[process.pid] for process in processes]

    def close(self) -> None:
        self.selector.close()
