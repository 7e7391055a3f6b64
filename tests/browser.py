"""Debian's Chromium driven by Playwright, shared by every browser test (one instance per
test session: ``browser`` is registered in ``tests/conftest.py``).

Chromium comes from ``make browser-setup`` (Debian's ``chromium`` package); Playwright only
drives it (``playwright install`` is never run). Without it the tests that need it are
skipped locally and fail on CI (``CI`` set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.requirements import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "WAIT_MS", "browser"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds any single browser expectation may take.
WAIT_MS = 20_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK) and shutil.which("chromium") is None:
        missing("chromium (run `make browser-setup`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (the dev extra)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
            timeout=60_000,
        )
        try:
            yield chromium
        finally:
            chromium.close()
