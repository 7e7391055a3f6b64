"""Coverage-guided fuzzing of one target with atheris (libFuzzer)::

    python -m tests.fuzz.run TARGET [SECONDS] [LIBFUZZER_ARGS...]

fuzzes ``tests.fuzz.targets.TARGETS[TARGET]`` for SECONDS (default 60), starting from the
kept corpus ``tests/fuzz/corpus/TARGET/``. New inputs go to a scratch corpus
(``build/fuzz/TARGET/``, not kept); a crash is written to ``build/fuzz/crash-*`` and
ends the run with a non-zero status. Each input may take at most 10 s, and the process
at most 2 GiB of RSS (libFuzzer's ``-timeout`` / ``-rss_limit_mb``): a leak or blow-up
fails the run too.

To keep what a run found, merge it into the kept corpus (only inputs that add coverage
are copied)::

    python -m tests.fuzz.run TARGET --merge

Found a crash? Copy it to ``tests/fuzz/corpus/TARGET/crash-<what>``: the corpus replay
(``tests/fuzz/test_corpus.py``, part of ``make test``) then runs it forever after.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fuzz" / "corpus"
SCRATCH = REPO / "build" / "fuzz"


def main() -> None:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    with atheris.instrument_imports(include=["dwebsocket"]):
        import dwebsocket.handshake  # noqa: F401 - the Origin check, instrumented too
        from tests.fuzz.targets import TARGETS

    args = sys.argv[1:]
    if not args or args[0] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [SECONDS|--merge] ...")
    name, args = args[0], args[1:]
    kept = CORPUS / name
    kept.mkdir(parents=True, exist_ok=True)
    scratch = SCRATCH / name
    scratch.mkdir(parents=True, exist_ok=True)
    options = ["-timeout=10", "-rss_limit_mb=2048", "-max_len=65536"]
    if any(arg.startswith("-merge_control_file") for arg in args):
        argv = [sys.argv[0], *args]  # libFuzzer's merge child, started by the wrapper below
    elif args and args[0] == "--merge":
        # libFuzzer merges in child processes it starts from argv[0]: make that runnable.
        wrapper = SCRATCH / f"run-{name}"
        wrapper.write_text(
            f'#!/bin/sh\ncd "{REPO}" && exec "{sys.executable}" -m tests.fuzz.run {name} "$@"\n'
        )
        wrapper.chmod(0o755)
        argv = [str(wrapper), "-merge=1", *options, *args[1:], str(kept), str(scratch)]
    else:
        seconds = args.pop(0) if args and args[0].isdigit() else "60"
        argv = [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-artifact_prefix={SCRATCH}/",
            "-print_final_stats=1",
            *options,
            *args,
            str(scratch),
            str(kept),
        ]
    target = TARGETS[name]
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
