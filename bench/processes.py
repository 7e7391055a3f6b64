"""What the benchmark scripts share about the processes they start: a free port on
127.0.0.1, the open-files limit, and stopping a process group.

``bench/compare.py``, ``bench/fanout.py`` and ``bench/vm/run.py`` each had their own copy.
They put ``bench/`` on ``sys.path`` and ``import processes`` (which also works when
``bench/memory.py`` imports ``bench.compare``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess

__all__ = ["HOST", "free_port", "nofile_hard", "raise_nofile", "stop_group"]

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
