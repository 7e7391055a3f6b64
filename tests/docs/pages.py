"""What the number checks of this folder share. A page quotes its results file through
substitutions at its end (``.. |name| replace:: 150,000``); each check module builds the
values the results file gives, rounded as the page writes them (its ``expected()``), and
``python -m tests.docs.<module>`` prints the block to paste after a new run."""

from __future__ import annotations

import re
from pathlib import Path

SUBSTITUTION = re.compile(r"^\.\. \|(\w+)\| replace:: (.*)$", re.M)


def substitutions(page: Path, prefix: str = "") -> dict[str, str]:
    """The page's substitutions whose names start with ``prefix`` (a page that quotes two
    results files gives each its own prefix)."""
    return {n: v for n, v in SUBSTITUTION.findall(page.read_text()) if n.startswith(prefix)}


def assert_quotes(page: Path, expected: dict[str, str], prefix: str = "") -> None:
    """The page defines exactly the expected values (none missing, none unchecked, each
    as the results file says) and uses every one it defines."""
    assert substitutions(page, prefix) == expected, f"{page.name} and its results differ"
    text = page.read_text()
    unused = sorted(name for name in expected if text.count(f"|{name}|") < 2)
    assert not unused, f"{page.name} defines {unused} but never uses them"


def print_block(expected: dict[str, str]) -> None:
    for name, value in sorted(expected.items()):
        print(f".. |{name}| replace:: {value}")
