"""What the package says about itself agrees with what is tested: the README's "Versions
tested" table, the classifiers and ``requires-python`` are ``noxfile.py``'s ``MATRIX``;
the changelog's first heading is the version in ``pyproject.toml``.

``noxfile.py`` is read with ``ast`` (nox itself is not installed in the matrix's venvs).
"""

from __future__ import annotations

import ast
import re
import sys
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from trove_classifiers import classifiers as known_classifiers

from tests.servers import REPO


def noxfile(name: str) -> Any:
    """The literal value assigned to ``name`` at the top of ``noxfile.py``."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name and value is not None:
            return ast.literal_eval(value)
    raise LookupError(f"noxfile.py assigns no literal to {name}")


MATRIX: list[tuple[str, str]] = noxfile("MATRIX")
MAIN: tuple[str, str] = noxfile("MAIN")
SERVERS: str = noxfile("MATRIX_SERVERS")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def key(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


def versions_table() -> str:
    """The README's table, from the matrix: one row per Python and what runs there."""
    shared = f"unit tests, shared server suite ({SERVERS.replace(',', ', ')})"

    def runs(pair: tuple[str, str]) -> str:
        return "every test, every server (``make test``)" if pair == MAIN else shared

    rows = [("Python", "Django", "tests")]
    pairs = sorted(MATRIX, key=lambda p: (key(p[0]), runs(p), key(p[1])))
    for (python, what), group in groupby(pairs, key=lambda p: (p[0], runs(p))):
        rows.append((python, " ".join(django for _, django in group), what))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


def test_the_readme_table_is_the_matrix() -> None:
    text = (REPO / "README.rst").read_text()
    section = text[text.index(".. versions-tested-begin") : text.index(".. versions-tested-end")]
    expected = versions_table()
    assert expected in section, f"README.rst's table should read:\n\n{expected}\n"


def test_the_matrix_is_every_supported_pair() -> None:
    # Django 5.2 supports Python 3.10-3.14, Django 6.x 3.12 and later.
    pythons = sorted({p for p, _ in MATRIX}, key=key)
    djangos = sorted({d for _, d in MATRIX}, key=key)
    supported = {(p, d) for p in pythons for d in djangos if d == "5.2" or key(p) >= (3, 12)}
    assert set(MATRIX) == supported and len(MATRIX) == len(supported)
    assert MAIN in MATRIX


def classified(prefix: str) -> list[str]:
    """The versions of the classifiers ``<prefix><version>``, oldest first."""
    found = [c.removeprefix(prefix) for c in PROJECT["classifiers"] if c.startswith(prefix)]
    return sorted((v for v in found if re.fullmatch(r"\d+\.\d+", v)), key=key)


def test_the_classifiers_are_the_matrix() -> None:
    unknown = set(PROJECT["classifiers"]) - known_classifiers
    assert not unknown, unknown
    pythons = sorted({p for p, _ in MATRIX}, key=key)
    djangos = sorted({d for _, d in MATRIX}, key=key)
    assert classified("Programming Language :: Python :: ") == pythons
    assert classified("Framework :: Django :: ") == djangos
    assert PROJECT["requires-python"] == f">={pythons[0]}"
    assert f"Django>={djangos[0]},<7" in PROJECT["dependencies"]


def test_the_makefile_venv_is_the_main_pair() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"^PYTHON \?= python{re.escape(MAIN[0])}$", makefile, re.M)


def test_the_changelog_heads_with_this_version() -> None:
    version = PROJECT["version"]
    release = re.match(r"\d+\.\d+\.\d+", version)
    assert release, version
    text = (REPO / "CHANGELOG.rst").read_text()
    heading = re.search(r"^(\d+\.\d+\.\d+\S*) \((.+)\)\n-+$", text, re.M)
    assert heading, "CHANGELOG.rst has no version heading"
    if version == release[0]:  # a release: its own heading, with its date
        assert heading[1] == version and re.fullmatch(r"\d{4}-\d\d-\d\d", heading[2]), heading[0]
    else:  # .devN, aN, bN, rcN: the version being prepared, not released yet
        assert heading[1] == release[0] and heading[2] == "unreleased", heading[0]


def test_the_main_environment_is_the_main_pair() -> None:
    """``make test``'s venv is the pair the table says runs every test."""
    import django

    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("not the Makefile's .venv (a matrix venv)")
    assert (f"{sys.version_info.major}.{sys.version_info.minor}", django.__version__[:3]) == MAIN
