"""The optional C accelerators: whether to load them, and the core's, loaded once.

``DWEBSOCKET_NO_SPEEDUPS`` set to a true value (``1``, ``true``, ``yes``, ``on``) turns off
every C extension of dwebsocket (the protocol core's ``_speedups`` and ``_deflate``, the
default backend's ``_fastpath``); unset, empty or a false value (``0``, ``false``, ``no``,
``off``) leaves them on. Without a compiler at install time they are not built, and the
same Python code runs (see ``setup.py``).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["speedups", "speedups_disabled"]

_TRUE = frozenset({"1", "true", "yes", "on"})


def speedups_disabled() -> bool:
    """True when ``DWEBSOCKET_NO_SPEEDUPS`` asks for the pure-Python code."""
    return os.environ.get("DWEBSOCKET_NO_SPEEDUPS", "").strip().lower() in _TRUE


def _load() -> ModuleType | None:
    if speedups_disabled():
        return None
    try:
        from . import _speedups
    except ImportError:  # pragma: no cover - exercised when the extension is not built
        return None
    return _speedups


#: ``dwebsocket.protocol._speedups``, or None (not built, or turned off).
speedups: ModuleType | None = _load()
