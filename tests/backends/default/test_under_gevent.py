"""The default backend's in-process tests again, under gevent's monkey-patching.

There the socketpairs are gevent sockets, so ``wait()``, ``send()`` and iteration take
the C fast path (``_fastpath.c``): the behaviour tests then check that path, and
``test_fastpath.py`` what is its own. With ``DWEBSOCKET_NO_SPEEDUPS`` the same tests run
on the Python code under gevent (its read waiter), as where no compiler built the
extension. Monkey-patching is per process: one pytest run in a subprocess, bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dwebsocket.backends.default import transport
from tests.backends.default.test_fastpath import SKIP_REASON
from tests.requirements import c_extension

REPO = Path(__file__).resolve().parents[3]
MODULES = [
    "tests/backends/default/test_websocket.py",
    "tests/backends/default/test_fastpath.py",
]
RUN = """
from gevent import monkey
monkey.patch_all()
import sys
import pytest
sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist", *sys.argv[1:]]))
"""


@pytest.mark.parametrize("code", ["c", "python"])
def test_the_backend_tests_pass_under_gevent(code: str) -> None:
    pytest.importorskip("gevent")
    if code == "c":
        c_extension(transport._fastpath, "_fastpath")
    env = {**os.environ}
    env.pop("DWEBSOCKET_NO_SPEEDUPS", None)
    if code == "python":
        env["DWEBSOCKET_NO_SPEEDUPS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", RUN, *MODULES],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    # The fast path's own tests ran where it exists, and only there.
    assert (SKIP_REASON in result.stdout) == (code == "python"), result.stdout[-2000:]
