"""Helpers of the hardening tests: a server's resource usage, and its log checked for
tracebacks that are not the WSGI server's own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django

import dwebsocket
from tests.servers import ServerProcess

#: Extra settings of every server the hardening tests start.
SETTINGS: dict[str, Any] = {
    "ROOT_URLCONF": "tests.hardening.urls",
    # dwebsocket at INFO: protocol errors are logged, per-connection debug lines are not.
    "LOGGING": {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"dwebsocket": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    },
}

#: The server the hostile clients attack: small limits, so that each attack reaches
#: them quickly, and a short keepalive, so that silent peers are found quickly.
HOSTILE_SETTINGS: dict[str, Any] = {
    **SETTINGS,
    "WEBSOCKET_MAX_MESSAGE_SIZE": 64 * 1024,
    "WEBSOCKET_PING_INTERVAL": 2.0,
    "WEBSOCKET_PING_TIMEOUT": 2.0,  # also bounds a blocked send (the I/O timeout)
    "WEBSOCKET_CLOSE_TIMEOUT": 2.0,
}

#: How far an attack may push the server's peak RSS (VmHWM) above its RSS before the
#: attack. The limits above bound what one connection may hold to ~100 KiB; an attack
#: that beat them would cost megabytes per connection.
MEMORY_BUDGET = 32 << 20

Stats = dict[str, int]


def stats(server: ServerProcess) -> Stats:
    """``/_stats/`` of the server (see tests/hardening/urls.py)."""
    with urllib.request.urlopen(server.url("/_stats/", "http"), timeout=30) as response:
        result: Stats = json.load(response)
    return result


def rss(server: ServerProcess) -> int:
    """The server's resident set size in bytes, read from outside (``/proc``)."""
    with open(f"/proc/{server.process.pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss(server: ServerProcess) -> None:
    """Reset the server's ``VmHWM`` to its current RSS (Linux: ``clear_refs`` 5)."""
    with open(f"/proc/{server.process.pid}/clear_refs", "w") as f:
        f.write("5")


@contextlib.contextmanager
def memory_bounded(server: ServerProcess, budget: int = MEMORY_BUDGET) -> Iterator[None]:
    """Assert that what runs inside never pushed the server's RSS ``budget`` bytes above
    what it was when it started (the kernel's high-water mark, not a sample)."""
    reset_peak_rss(server)
    before = rss(server)
    yield
    peak = peak_rss(server)
    assert peak <= before + budget, (
        f"the server's RSS peaked at {peak >> 20} MiB, from {before >> 20} MiB "
        f"(budget {budget >> 20} MiB)"
    )


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident set size so far (``VmHWM``), in bytes."""
    with open(f"/proc/{server.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


def settled(server: ServerProcess, done: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
    """Poll ``/_stats/`` until ``done(stats)`` (connections still closing need a moment);
    returns the last stats either way, for the test to judge."""
    deadline = time.monotonic() + timeout
    while True:
        current = stats(server)
        if done(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


# gevent.pywsgi prints these itself, from its HTTP parser, before Django or dwebsocket
# run: a client that resets the connection in the middle of its request head (the reset
# while reading the headers, then the failure to write its 400 to the dead socket), and
# a request with more than 100 header lines (answered 400).
_WSGI_SERVER_NOISE = re.compile(
    r"^(ConnectionResetError: \[Errno 104\]|BrokenPipeError: \[Errno 32\]"
    r"|http\.client\.HTTPException: got more than 100 headers)"
)


#: A traceback through these directories is ours, wherever the checkout or the venv is
#: (their own paths may hold "django" or "dwebsocket": .nox/tests-python-3-12-django-6-0/).
_OUR_CODE = tuple(
    f'File "{Path(str(module.__file__)).parent}{os.sep}' for module in (dwebsocket, django)
)


def foreign_tracebacks(log: str) -> list[str]:
    """Tracebacks in ``log`` other than gevent.pywsgi's own for clients that reset the
    connection mid-request; each is returned whole."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()
        # The traceback ends at the first line that is not indented (the exception).
        end = next(
            (i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines)
        )
        body = "\n".join(lines[: end + 1])
        ours = any(prefix in body for prefix in _OUR_CODE)
        if ours or not _WSGI_SERVER_NOISE.search(lines[end] if end < len(lines) else ""):
            found.append(body)
    return found
