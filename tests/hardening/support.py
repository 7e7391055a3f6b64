"""Helpers of the hardening tests: a server's resource usage, and its log checked for
tracebacks that are not the WSGI server's own."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

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


def settled(server: ServerProcess, done: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
    """Poll ``/_stats/`` until ``done(stats)`` (connections still closing need a moment);
    returns the last stats either way, for the test to judge."""
    deadline = time.monotonic() + timeout
    while True:
        current = stats(server)
        if done(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


# gevent.pywsgi prints these itself when a client resets the connection in the middle
# of its request head (its HTTP parser, before Django or dwebsocket run): the reset
# while reading the headers, then the failure to write its 400 to the dead socket.
_WSGI_SERVER_NOISE = re.compile(
    r"(ConnectionResetError: \[Errno 104\]|BrokenPipeError: \[Errno 32\])"
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
        ours = "dwebsocket" in body or "django" in body
        if ours or not _WSGI_SERVER_NOISE.search(lines[end] if end < len(lines) else ""):
            found.append(body)
    return found
