"""The test matrix and the release build (``make matrix``, run by CI through ``make test``).

Every supported Python x Django pair is tested. The main pair (``MAIN``: the Makefile's
``.venv``) runs every test through ``make test``; the others run here, each in a venv of its
own: the unit layer, and the shared suite (every test that uses the ``server`` fixture) on
``runserver``, whose request handling is Django's own, and ``gevent.pywsgi``, the
production path with the C fast path. That is what changes between Pythons and Djangos;
the other servers' code does not, and running them all on eight pairs would not fit CI's
hour. ``build`` makes the sdist and a wheel per Python and checks them (every extension of
``setup.py`` in each: ``tools/check_wheel.py``).

    nox                                       # everything (needs python3.10 ... python3.13)
    nox -s "tests-3.12(django='6.0')"         # one pair
    nox -s build

The README's "Versions tested" table and the package's classifiers are checked against
``MATRIX`` (tests/test_release.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
from check_wheel import extensions

#: (Python, Django) pairs, all supported; Django 6 needs Python 3.12 or later.
MATRIX: list[tuple[str, str]] = [
    ("3.10", "5.2"),
    ("3.11", "5.2"),
    ("3.12", "5.2"),
    ("3.12", "6.0"),
    ("3.12", "6.1"),
    ("3.13", "5.2"),
    ("3.13", "6.0"),
    ("3.13", "6.1"),
]
#: The pair of the Makefile's .venv (PYTHON = python3.11; pip picks the newest Django that
#: supports it): ``make test`` runs every test there, so the matrix skips it.
MAIN = ("3.11", "5.2")
PYTHONS = sorted({python for python, _ in MATRIX}, key=lambda v: tuple(map(int, v.split("."))))
#: The servers of the shared suite on the other pairs (``tests/servers.py``), and the
#: ASGI server it runs on there (``tests/asgi``: sync and async views through Django's
#: own ASGIHandler, which each Django version changes).
MATRIX_SERVERS = "runserver,gevent"
MATRIX_ASGI_SERVERS = "uvicorn"
#: What the matrix venvs install besides Django: the test tools and the servers' extras.
EXTRAS = "test,gevent,gunicorn,eventlet,redis,prometheus,asgi"
#: The oldest asgiref Django 5.2 itself accepts (it comes with Django, not from us).
ASGIREF_LOWEST = "asgiref~=3.8.1"

REPO = Path(__file__).resolve().parent
DIST = REPO / "dist"

nox.options.sessions = ["tests", "lowest", "build"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def _pyenv_versions() -> None:
    """Let pyenv's shims find every installed supported Python (``python3.12`` ...), as
    ``pyenv global 3.11.7 3.12.1 ...`` would, without changing the machine's setting."""
    if shutil.which("pyenv") is None:
        return
    run = subprocess.run
    bare = run(["pyenv", "versions", "--bare"], capture_output=True, text=True, timeout=30)
    found = [v for v in bare.stdout.split() if v.count(".") == 2 and v.replace(".", "").isdigit()]
    newest: dict[str, str] = {}
    for version in sorted(found, key=lambda v: tuple(map(int, v.split(".")))):
        newest[version.rsplit(".", 1)[0]] = version
    current = (
        os.environ.get("PYENV_VERSION")
        or run(["pyenv", "version-name"], capture_output=True, text=True, timeout=30).stdout.strip()
    )
    chosen = [*current.split(":"), *(newest[p] for p in PYTHONS if p in newest)]
    os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys(v for v in chosen if v))


_pyenv_versions()


@nox.session
@nox.parametrize(("python", "django"), [pair for pair in MATRIX if pair != MAIN])
def tests(session: nox.Session, django: str) -> None:
    """The unit layer and the shared suite on runserver and gevent, on one pair."""
    session.install("-e", f".[{EXTRAS}]", f"Django~={django}.0")
    _shared_suite(session)


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """The same on the oldest Python, with Django and every server's extra at the lower
    bound pyproject.toml declares (its newest patch release): a bound nobody ran is a
    guess. The test tools are the newest."""
    session.install("-e", f".[{EXTRAS}]", *lower_bounds(), ASGIREF_LOWEST)
    _shared_suite(session)
    # Redis Cluster and Sentinel through the oldest redis-py: its pools differ from the
    # newest's (a failover's disconnect, the nodes' pool class), and the shared suite
    # starts neither.
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
        "tests/groups/test_cluster_layer.py",
    )  # fmt: skip


def lower_bounds() -> list[str]:
    """``name~=X.Y.0`` (``==X.Y.Z`` for a bound with a patch number) for each ``>=``
    requirement of Django and of ``EXTRAS`` but ``test``."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [e for e in EXTRAS.split(",") if e != "test"]
    found = [*project["dependencies"]]
    found += [r for e in extras for r in project["optional-dependencies"][e]]
    pins = []
    for requirement in found:
        if match := re.match(r"([\w.-]+(?:\[[\w,]+\])?)>=([\d.]+)", requirement):
            name, version = match.groups()
            parts = [*version.split("."), "0", "0"][:3]  # "5" is 5.0.0, "0.36" 0.36.0
            exact = version.count(".") == 2
            pins.append(f"{name}=={version}" if exact else f"{name}~={'.'.join(parts)}")
    return pins


def _shared_suite(session: nox.Session) -> None:
    session.run(
        "python",
        "-c",
        "import sys, django; print(sys.version.split()[0], 'Django', django.get_version())",
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow and (not server or shared)",
        # Two workers: most of these tests wait on sockets and subprocesses, not the CPU.
        *(session.posargs or ["-n", "2"]),
        env={
            "DWEBSOCKET_TEST_SERVERS": MATRIX_SERVERS,
            "DWEBSOCKET_TEST_ASGI_SERVERS": MATRIX_ASGI_SERVERS,
        },
    )


@nox.session(python=PYTHONS[0])
def sdist(session: nox.Session) -> None:
    """``dist/dwebsocket-*.tar.gz``, checked by ``twine check``."""
    shutil.rmtree(DIST, ignore_errors=True)
    session.install("build", "twine")
    session.run("python", "-m", "build", "--sdist", "--outdir", str(DIST))
    session.run("twine", "check", "--strict", *map(str, DIST.glob("*.tar.gz")))


@nox.session(python=PYTHONS)
def wheel(session: nox.Session) -> None:
    """A wheel for this Python built from the sdist, with both C extensions in it, that
    imports them once installed in a fresh venv."""
    (sdist,) = DIST.glob("*.tar.gz")
    session.install("build", "twine")
    tag = "cp" + session.python.replace(".", "")  # type: ignore[union-attr]
    for old in DIST.glob(f"*-{tag}-*.whl"):
        old.unlink()
    session.run("python", "-m", "build", "--wheel", "--outdir", str(DIST), str(sdist))
    (built,) = DIST.glob(f"*-{tag}-*.whl")
    names = zipfile.ZipFile(built).namelist()
    abi = "cpython-" + session.python.replace(".", "")  # type: ignore[union-attr]
    for module in extensions():  # every Extension of setup.py
        path = module.replace(".", "/")
        if not any(n.startswith(f"{path}.{abi}") and n.endswith(".so") for n in names):
            session.error(f"{built.name} has no {path}.{abi}-*.so")
    session.run("twine", "check", "--strict", str(built))
    session.install("--force-reinstall", "--no-deps", str(built))
    session.install("gevent")  # _fastpath links against greenlet
    session.chdir(session.create_tmp())  # away from the checkout's dwebsocket/
    session.run("python", str(REPO / "tools" / "check_wheel.py"))


@nox.session(python=False)
def build(session: nox.Session) -> None:
    """The sdist, then a wheel per Python (the release's ``dist/``)."""
    session.notify("sdist")
    for python in PYTHONS:
        session.notify(f"wheel-{python}")
