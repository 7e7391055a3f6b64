"""The contract between the C fast path (``_fastpath.c``) and the Python code: the state
structs and their Python twins have the same fields, and every name the C code looks up
exists on the Python objects it looks it up on. A refactor of the Python side that would
silently break the C code fails here."""

from __future__ import annotations

import math
import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from dwebsocket.backends.default import state
from dwebsocket.backends.default.transport import _GeventReadWaiter
from dwebsocket.backends.default.websocket import DefaultWebSocket
from dwebsocket.protocol import connection
from dwebsocket.protocol.accelerator import speedups

SOURCE = Path(state.__file__).with_name("_fastpath.c").read_text()

needs_fastpath = pytest.mark.skipif(state.fastpath is None, reason="_fastpath is not built")
needs_speedups = pytest.mark.skipif(speedups is None, reason="_speedups is not built")


def _members(cls: type) -> dict[str, type]:
    """Field -> type of a C struct type, from its member descriptors and a fresh value."""
    instance = cls()
    return {
        name: type(getattr(instance, name))
        for name, descriptor in vars(cls).items()
        if type(descriptor).__name__ == "member_descriptor"
    }


@needs_fastpath
def test_iostate_and_its_twin_have_the_same_fields() -> None:
    assert _members(state.fastpath.IOState) == state.FIELDS
    assert state.PyIOState.__slots__ == tuple(state.FIELDS)
    c, py = state.fastpath.IOState(), state.PyIOState()
    for name in state.FIELDS:
        a, b = getattr(c, name), getattr(py, name)
        assert a == b or (math.isnan(a) and math.isnan(b)), name
    # Typed: the struct refuses what the Python code must never write.
    with pytest.raises(TypeError):
        c.shut = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.queued = 1.5  # type: ignore[misc]


@needs_speedups
def test_receive_state_and_its_twin_have_the_same_fields() -> None:
    assert speedups is not None
    assert _members(speedups.ReceiveState) == {"open": bool, "max_message": int, "scan_limit": int}
    assert set(connection.PyReceiveState.__slots__) == {"open", "max_message", "scan_limit"}
    assert repr(speedups.ReceiveState()) == repr(connection.PyReceiveState())
    assert connection.ReceiveState is speedups.ReceiveState


def _str_names() -> list[str]:
    block = re.search(r"#define STR_NAMES\(X\)(.*?)\n#define DECLARE", SOURCE, re.S)
    assert block is not None
    return re.findall(r"X\((\w+)\)", block.group(1))


@needs_fastpath
def test_every_name_the_c_code_looks_up_exists() -> None:
    import gevent
    from gevent.lock import BoundedSemaphore

    hub = gevent.get_hub()
    io = hub.loop.io(0, 1)
    timer = hub.loop.timer(1.0)
    where: dict[str, list[Any]] = {
        # the locks: websocket._new_lock() under gevent, threading's otherwise
        "acquire": [BoundedSemaphore(1)],
        "locked": [BoundedSemaphore(1)],
        "release": [BoundedSemaphore(1)],
        "append": [deque()],
        "popleft": [deque()],
        "close": [io, timer],
        "loop": [hub],
        "ref": [io],
        "run_callback": [hub.loop],
        "run_callback_threadsafe": [hub.loop],
        "start": [io, timer],
        "stop": [io, timer],
        "switch": [hub],
        "timer": [hub.loop],
        "update": [],  # a keyword of timer.start()
        "_fast": [DefaultWebSocket],
        "_lost_received": [DefaultWebSocket],
        "_received": [DefaultWebSocket],
        "_send_rest": [DefaultWebSocket],
        "_write_interrupted": [DefaultWebSocket],
        "is_closed": [DefaultWebSocket],
        "wait": [DefaultWebSocket],
        "_expired": [state.fastpath.Waiter, _GeventReadWaiter],
        "_ready": [state.fastpath.Waiter],
        "_close_in_hub": [state.fastpath.Waiter],
    }
    try:
        names = _str_names()
        assert sorted(names) == sorted(where), "add the new name to this test's table"
        for name, owners in where.items():
            for owner in owners:
                if owner is DefaultWebSocket and name == "_fast":
                    assert "_fast" in DefaultWebSocket.__init__.__code__.co_names
                    continue
                assert hasattr(owner, name), (owner, name)
    finally:
        io.close()
        timer.close()
