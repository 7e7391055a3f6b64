"""The built wheel and sdist, installed into fresh venvs as a user installs them, serve the
README's quick start: ``startproject``, the echo view, ``manage.py runserver``, and the
``websockets`` client's text and bytes echoed back. The sdist also without a C compiler
(``CC=false``): dwebsocket then runs its Python code."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.release.conftest import Dist
from tests.release.support import Venv, echo, make_project, serving
from tests.release.test_metadata import MATRIX
from tests.servers import REPO
from tools.check_wheel import extensions

pytestmark = [pytest.mark.server, pytest.mark.venv]

#: Prints where dwebsocket was imported from, whether ``_speedups`` loaded and whether
#: ``_fastpath`` was built (it loads only beside gevent: it links against greenlet).
WHERE = (
    "import importlib.util, dwebsocket, dwebsocket.protocol.frames as f; "
    "fast = importlib.util.find_spec('dwebsocket.backends.default._fastpath'); "
    "print(dwebsocket.__file__, f._c_apply_mask is not None, fast is not None)"
)
RUNSERVER = ["python", "manage.py", "runserver", "127.0.0.1:{port}", "--noreload"]


def test_the_artifacts_hold_what_they_should(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = sources = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for name in (
        "LICENSE",
        "CHANGELOG.rst",
        "README.rst",
        "dwebsocket/py.typed",
        "dwebsocket/protocol/_speedups.c",
        "dwebsocket/protocol/_speedups.h",
        "dwebsocket/protocol/_speedups.pyi",
        "dwebsocket/backends/default/_fastpath.c",
        "dwebsocket/backends/default/_fastpath.pyi",
    ):
        assert name in names, name
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".so")]

    names = set(zipfile.ZipFile(dist.wheel).namelist())
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    declared = extensions()
    assert len(declared) >= 2, declared
    for module in declared:
        path = module.replace(".", "/")
        assert [n for n in names if n.startswith(f"{path}.{tag}") and n.endswith(".so")], path
        assert f"{path}.c" in sources, path
    assert {"dwebsocket/py.typed", "dwebsocket/protocol/_speedups.h"} <= names
    assert not [n for n in names if n.endswith(".c")]

    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_serves_the_quick_start(dist: Dist, tmp_path: Path) -> None:
    venv = Venv(tmp_path / "venv")
    venv.install(f"dwebsocket @ {dist.wheel.as_uri()}")
    project = make_project(venv, tmp_path / "site")
    where, speedups, fastpath = venv.run("python", "-c", WHERE, cwd=project).split()
    assert where.startswith(str(venv.path)), where
    assert (speedups, fastpath) == ("True", "True")
    assert "no issues" in venv.run("python", "manage.py", "check", cwd=project)
    log = tmp_path / "runserver.log"
    with serving(venv, RUNSERVER, project, log) as port:
        echo(port)
    assert "Traceback" not in log.read_text(errors="replace")


def test_the_sdist_installs_and_serves_without_a_compiler(dist: Dist, tmp_path: Path) -> None:
    venv = Venv(tmp_path / "venv")
    # Django from the index (and pip's cache) first; then dwebsocket built from the sdist
    # with a compiler that always fails, bypassing any wheel pip cached from it before.
    venv.install("Django>=5.2,<7")
    output = venv.install(
        "--no-deps", "--no-cache-dir", "--verbose", str(dist.sdist), env={"CC": "false"}
    )
    assert "building optional extension" in output or "failed" in output, output[-3000:]
    project = make_project(venv, tmp_path / "site")
    where, speedups, fastpath = venv.run("python", "-c", WHERE, cwd=project).split()
    assert where.startswith(str(venv.path)), where
    assert (speedups, fastpath) == ("False", "False")
    log = tmp_path / "runserver.log"
    with serving(venv, RUNSERVER, project, log) as port:
        echo(port)
    assert "Traceback" not in log.read_text(errors="replace")


#: What ``[tool.cibuildwheel]`` must select on each platform besides the Pythons.
WHEEL_PLATFORMS = {
    "linux": ["manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"],
    "macos": ["macosx_x86_64", "macosx_arm64"],
}


@pytest.mark.parametrize("platform", sorted(WHEEL_PLATFORMS))
def test_cibuildwheel_builds_every_supported_python(platform: str) -> None:
    """The release configuration, read by cibuildwheel itself (which builds nothing here:
    Linux wheels need Docker, macOS ones a Mac)."""
    cibuildwheel = Path(sys.executable).with_name("cibuildwheel")
    done = subprocess.run(
        [str(cibuildwheel), "--print-build-identifiers", "--platform", platform, str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pythons = {python.replace(".", "") for python, _ in MATRIX}
    expected = {f"cp{p}-{plat}" for p in pythons for plat in WHEEL_PLATFORMS[platform]}
    assert set(done.stdout.split()) == expected
