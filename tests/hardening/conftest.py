"""The gevent.pywsgi server the hostile clients attack, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hardening.support import HOSTILE_SETTINGS, foreign_tracebacks
from tests.servers import ServerProcess, start_server


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """gevent.pywsgi with ``HOSTILE_SETTINGS``; at the end its log must hold no traceback
    but gevent.pywsgi's own for clients that reset mid-request."""
    server = start_server(
        "gevent", tmp_path_factory.mktemp("hostile") / "gevent.log", settings=HOSTILE_SETTINGS
    )
    try:
        yield server
    finally:
        server.stop()
    assert foreign_tracebacks(server.log()) == []
