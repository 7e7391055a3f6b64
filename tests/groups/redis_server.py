"""A private ``redis-server`` for tests: its own free port, no persistence, stopped by the test.

The shared Redis on 6379 is never touched, so the tests can stop and restart theirs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from tests.servers import end_process

#: On ``PATH`` only: tests that need it call ``tests.requirements.executable("redis-server")``
#: first (a skip locally, a failure on CI without it).
REDIS_SERVER = shutil.which("redis-server") or "redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``start()``, ``stop()``, ``restart()`` a redis-server on 127.0.0.1:``port``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="dwebsocket-redis-")

    def start(self, timeout: float = 10.0, options: tuple[str, ...] = ()) -> None:
        """Start it (``options``: more command-line options, for this run only)."""
        assert self.process is None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--protected-mode",
                "no",
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    # Ours, not another's that held the port first (it answers while ours,
                    # unable to bind, has yet to exit).
                    sock.sendall(b"INFO server\r\n")
                    answer = b""
                    while b"\r\n\r\n" not in answer and len(answer) < 65536:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    if f"\r\nprocess_id:{self.process.pid}\r\n".encode() in answer:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        end_process(process, timeout, group=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str) -> bytes:
        """Run one command with a fresh connection; the raw RESP reply (small replies)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
