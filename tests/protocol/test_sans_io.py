"""The core stays sans-I/O: importing it pulls in no socket, Django or uwsgi."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_io() -> None:
    code = (
        "import sys\n"
        "import dwebsocket.protocol.connection, dwebsocket.protocol.handshake\n"
        "import dwebsocket.protocol.deflate, dwebsocket.protocol.frames\n"
        "print(sorted(m for m in ('django', 'socket', 'uwsgi', 'select', 'ssl')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=__file__.rsplit("/tests/", 1)[0],
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
