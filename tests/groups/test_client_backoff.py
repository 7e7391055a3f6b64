"""The browser client's backoff spreads reconnections: 1,000 clients running the real
``dwebsocket.js`` inside Chromium, in virtual time (``js/backoff_sim.js``: a fake
WebSocket stands for the server, timers and ``Math.random`` are replaced, seeded), lose
their server at once; it is back 1, 5 or 30 s later.

Virtual time makes the run exact and repeatable, so what it measures is the backoff, not
this machine's load: the results must equal ``docs/benchmarks/reconnect.json`` (which the
docs quote; ``DWEBSOCKET_UPDATE_RESULTS=1`` rewrites it after a deliberate change), and
stay within the documented bounds: 99 % back within 30 s of the restart, at most
``PEAK_RATIO`` x the clients handshaking in any one second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import dwebsocket

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.server  # starts Chromium

SIM = Path(__file__).parent / "js" / "backoff_sim.js"
CLIENT = Path(dwebsocket.__file__).parent / "static" / "dwebsocket" / "dwebsocket.js"
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "reconnect.json"
CLIENTS = 1000
DOWNTIMES = [1000, 5000, 30000]
#: The documented bound: handshakes in the busiest second, per client.
PEAK_RATIO = 0.6


def simulate(browser: Browser) -> list[dict[str, Any]]:
    page = browser.new_page()
    try:
        results: list[dict[str, Any]] = page.evaluate(
            """([sim, source, configs]) => {
                const simulate = new Function(sim + "; return simulate;")();
                return configs.map((config) => simulate(source, config));
            }""",
            [
                SIM.read_text(),
                CLIENT.read_text(),
                [{"clients": CLIENTS, "downMs": down, "seed": 1} for down in DOWNTIMES],
            ],
        )
        return results
    finally:
        page.close()


def test_1000_clients_come_back_spread_out(browser: Browser) -> None:
    results = simulate(browser)
    if os.environ.get("DWEBSOCKET_UPDATE_RESULTS"):
        RESULTS.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    for run in results:
        assert run["back"] == CLIENTS
        assert run["t99_s"] <= 30, run
        assert run["peak_per_s"] <= PEAK_RATIO * CLIENTS, run
    assert json.loads(RESULTS.read_text())["runs"] == results
