"""Replay the kept fuzz corpus through its targets: every seed, every input fuzzing kept
for its coverage, and every crash it ever found (``crash-*``: the regression tests).
Part of the ordinary test run; ``make fuzz`` is what grows the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus_files() -> list[tuple[str, Path]]:
    return [
        (target, path)
        for target in sorted(TARGETS)
        for path in sorted((CORPUS / target).glob("*"))
        if path.is_file()
    ]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_corpus_replays(target: str) -> None:
    """Every input of the target's corpus, in one test (the corpus holds hundreds)."""
    paths = [path for name, path in corpus_files() if name == target]
    assert paths, f"tests/fuzz/corpus/{target}/ is empty"
    for path in paths:
        try:
            TARGETS[target](path.read_bytes())
        except BaseException as exc:
            raise AssertionError(f"{path.relative_to(CORPUS)} fails: {exc!r}") from exc


CRASHES = [(target, path) for target, path in corpus_files() if path.name.startswith("crash-")]


@pytest.mark.parametrize(
    ("target", "path"), CRASHES, ids=[f"{t}/{p.name}" for t, p in CRASHES] or None
)
def test_every_crash_found_stays_fixed(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
