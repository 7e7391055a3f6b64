"""The C extensions are built wherever the tests run: the main environment and every pair
of the test matrix (``noxfile.py``). Without a compiler dwebsocket still works (the Python
code, tested everywhere too); that skips here locally and fails on CI."""

from __future__ import annotations

import importlib.util

from tests.requirements import missing

EXTENSIONS = ["dwebsocket.protocol._speedups", "dwebsocket.backends.default._fastpath"]


def test_the_c_extensions_are_built() -> None:
    not_built = [name for name in EXTENSIONS if importlib.util.find_spec(name) is None]
    if not_built:
        missing(f"the C extensions {', '.join(not_built)} (not built)")
