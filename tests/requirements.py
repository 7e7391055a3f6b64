"""What a test needs from the machine, and the one rule for when it is not there.

Locally a missing part (a C extension that was not built, ``redis-server``, Playwright or
Chromium) skips the tests that need it, with the reason. On CI (``CI`` set to anything but
empty, ``0`` or ``false``; ``.ci/run`` exports ``CI=1``) it fails them: CI is where every
part is installed on purpose, and a skip there would pass a run that tested nothing.

A C extension turned off on purpose (``DWEBSOCKET_NO_SPEEDUPS=1``) is not missing: its
tests skip everywhere. ``tests/test_requirements.py`` checks the rule in a subprocess.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from dwebsocket.protocol.accelerator import speedups_disabled

__all__ = ["REDIS_SETUP", "c_extension", "executable", "missing", "on_ci"]

#: How to install redis-server and redis-cli here.
REDIS_SETUP = "make redis-setup"


def on_ci() -> bool:
    """True when the tests run on CI (``CI`` set, as ``.ci/run`` and CI services do)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def missing(what: str, *, allow_module_level: bool = False) -> NoReturn:
    """``what`` is not installed: fail the test on CI, skip it elsewhere (at module
    level too with ``allow_module_level``: on CI that is a collection error)."""
    if on_ci():
        pytest.fail(f"{what} is missing: on CI a missing part fails, it never skips", False)
    pytest.skip(f"{what} is missing", allow_module_level=allow_module_level)


def executable(name: str, how: str = "") -> str:
    """The path of program ``name`` on ``PATH``, or :func:`missing` (``how`` says how to
    install it)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name}{f' ({how})' if how else ''}")
    return path


def c_extension(available: object, what: str) -> None:
    """Require C extension ``what`` (``available`` is the module, or None when not
    loaded). Turned off by ``DWEBSOCKET_NO_SPEEDUPS``: a skip everywhere, not missing."""
    if available is not None:
        return
    if speedups_disabled():
        pytest.skip(f"{what}: turned off by DWEBSOCKET_NO_SPEEDUPS")
    missing(f"the C extension {what} (not built)")
