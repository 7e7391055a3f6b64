"""Replay the kept fuzz corpus through its targets: every seed, every input fuzzing kept
for its coverage, and every crash it ever found (``crash-*``: the regression tests).
Part of the ordinary test run; ``make fuzz`` is what grows the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwebsocket.protocol.deflate import PerMessageDeflate
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


#: The close each frames seed ends with (None: it ends with none, its frames all read).
SEED_CLOSES = {
    "messages": 1000,
    "messages-one-chunk": 1000,
    "deflate": None,
    "deflate-fragments": None,
    "deflate-no-context-window-8": 1009,  # the message a byte over the 1 KiB limit
    "client-side": 1001,
    "pure-python-masking": 1000,
    "over-limit": 1009,
}


def test_the_frames_seeds_are_read_as_they_were_written() -> None:
    """The seeds (and the properties) write ``config, chunk, window`` before the stream:
    the target must read the stream from the fourth byte, or the seeds' frames (and every
    structured stream of the properties) are read from a stray byte on, and fail at once
    (seed-deflate: "reserved opcode 6")."""
    from dwebsocket.protocol.connection import Close
    from tests.fuzz import seeds
    from tests.fuzz.targets import _feed_frames, frames_config

    assert sorted(seeds.frame_streams()) == sorted(SEED_CLOSES)
    for name in SEED_CLOSES:
        data = (CORPUS / "frames" / f"seed-{name}").read_bytes()
        config = frames_config(data)
        deflate = None
        if config.compressed:
            deflate = PerMessageDeflate(
                remote_max_window_bits=config.window,
                remote_no_context_takeover=config.no_context,
            )
        _, events, _ = _feed_frames(
            config.client, deflate, config.limit, config.chunk, config.stream, False, False
        )
        closes = [event.code for event in events if isinstance(event, Close)]
        expected = SEED_CLOSES[name]
        assert closes == ([] if expected is None else [expected]), (name, events)
        if name != "over-limit":  # its one message is over the limit
            assert any(isinstance(event, (str, bytes)) for event in events), (name, events)
