"""``make coverage``'s measurement, one pytest-xdist worker at a time.

``make coverage -p tests.coverage_worker -n 2``: each worker process measures itself
from the moment pytest loads this plugin (``-p`` plugins load before pytest-django's
``django.setup()`` and before any conftest, so ``dwebsocket``'s import-time lines are
counted) until pytest unconfigures, and writes a data file of its own
(``.coverage.<host>.<pid>.<random>``) for ``coverage combine``. The controller, which
runs no test, measures nothing.

Coverage is started here rather than through coverage's subprocess support so that only
the workers are measured: the servers the tests start inherit the workers' environment,
and a tracer in them would skew the memory and import-purity assertions those tests make
(``[tool.coverage.run]`` in pyproject.toml).
"""

from __future__ import annotations

import os
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):
    import coverage

    _coverage: coverage.Coverage | None = coverage.Coverage(data_suffix=True)
    _coverage.start()
else:
    _coverage = None


def pytest_unconfigure(config: Any) -> None:
    if _coverage is not None:
        _coverage.stop()
        _coverage.save()
