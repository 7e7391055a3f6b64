"""The protocol's C extensions when memory runs out: ``tests/protocol/nomemory.py`` makes
each allocation of a fixed scenario fail in turn (CPython's ``_testcapi``) and checks that
it is a ``MemoryError`` and nothing worse; here it runs in a subprocess, so that a crash
fails this test instead of ending the run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from dwebsocket.protocol import deflate
from dwebsocket.protocol.accelerator import speedups
from tests.requirements import c_extension, missing

REPO = Path(__file__).resolve().parent.parent.parent


def sweep(scenario: str, *, timeout: float) -> dict[str, Any]:
    """The report (JSON) of ``tests.protocol.nomemory``'s ``scenario()``, run in a
    subprocess (a crash fails the test, not the run); needs the ``_deflate`` extension and
    CPython's ``_testcapi``."""
    c_extension(deflate._codecs, "_deflate")
    if importlib.util.find_spec("_testcapi") is None:
        missing("CPython's _testcapi module (part of a full CPython build)")
    done = subprocess.run(
        [sys.executable, "-c", f"from tests.protocol.nomemory import {scenario}; {scenario}()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_failed_allocation_is_a_memory_error() -> None:
    c_extension(speedups, "_speedups")
    report = sweep("main", timeout=120)
    assert report["swept"] is not None and report["swept"] > 50, report  # the sweep ended
    assert report["memory_errors"] > 50, report  # and reached the C code
    assert report["wrong_results"] == [], report
    assert "live_after" not in report, report  # no zlib stream left behind


def test_a_parked_window_that_cannot_be_restored_is_a_memory_error_and_is_kept() -> None:
    # An Inflater whose stream another one took keeps its window; getting a stream back
    # allocates zlib's window for it. That failing is a MemoryError (it was zlib.error,
    # which deflate.py fails as the peer's bad data, 1002) and the window stays: the
    # same decompress() again gives the message (it gave "invalid distance too far back").
    report = sweep("restore", timeout=60)
    assert report["failed"] > 0, report  # the sweep reached the call's allocations
    assert report["not_memory_errors"] == [], report
    assert report["context_lost"] == [], report


def test_an_inflater_that_failed_mid_stream_keeps_its_stream() -> None:
    # A MemoryError while zlib inflated (the output buffer growing) or once the peer's
    # stream ended (its unused data) left the Inflater free to give its stream up: the
    # next use of another one took it, keeping only the window, so the Inflater forgot
    # that its stream had ended (it decoded the next bytes as more of it) or the block it
    # was in.
    report = sweep("failed_inflate", timeout=60)
    assert report["failed"] > 2, report  # the sweep reached both calls' allocations
    assert report["taken"] == [], report


def test_a_compression_that_fails_part_way_sends_nothing_the_peer_decodes_wrongly() -> None:
    # A MemoryError after zlib took part of a message (its output buffer growing) lost
    # that output while the stream went on from it: the next message, compressed in a
    # context the peer does not have, decoded as other bytes or failed with 1002. Now
    # the stream refuses (zlib.error) until reset(), in C and in the zlib module's twin,
    # and the connection fails (1011) instead of sending again.
    report = sweep("lost_compression", timeout=120)
    assert report["failed"] > 10, report  # the sweep reached the calls' allocations
    assert report["refused"] > 0, report
    assert report["wrong_bytes"] == [], report
