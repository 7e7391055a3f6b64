"""The rule of ``tests/requirements.py``: a missing part skips locally and fails on CI.

End to end through the real fixture: a pytest run in a subprocess whose ``PATH`` has no
``redis-server``, once with ``CI=1`` (the test must fail) and once without (skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import c_extension, missing, on_ci

REPO = Path(__file__).resolve().parent.parent

NEEDS_REDIS = """
def test_needs_redis(redis_server):
    assert redis_server.port
"""


def run_without_redis(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs_redis.py").write_text(NEEDS_REDIS)
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTHONPATH"}}
    env.update(PATH=str(empty), PYTHONPATH=str(REPO))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider"),
            *("-p", "tests.groups.conftest", "test_needs_redis.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_redis_fails_on_ci(tmp_path: Path) -> None:
    """A fixture that fails is an error: a failed run all the same (exit status 1)."""
    result = run_without_redis(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "redis-server" in result.stdout, result.stdout


def test_missing_redis_skips_locally(tmp_path: Path) -> None:
    result = run_without_redis(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "redis-server" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("value", "ci"),
    [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("true", True)],
)
def test_what_counts_as_ci(monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert on_ci() is ci
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="chromium"):
        missing("chromium")


def test_a_c_extension_turned_off_is_not_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("DWEBSOCKET_NO_SPEEDUPS", "1")
    with pytest.raises(pytest.skip.Exception):
        c_extension(None, "_speedups")
    monkeypatch.delenv("DWEBSOCKET_NO_SPEEDUPS")
    with pytest.raises(pytest.fail.Exception, match="_speedups"):
        c_extension(None, "_speedups")
