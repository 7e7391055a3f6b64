"""Check an installed dwebsocket: every C extension ``setup.py`` declares is in it and
loads, and ``_speedups`` agrees with the Python code.

    python tools/check_wheel.py        # from outside the checkout; exits 1 on a failure

Run on every built wheel (``nox -s build``, and cibuildwheel's ``test-command``). The
build treats the extensions as optional, so a wheel without them would install and run,
only slower; this is what makes a missing one fail the release. It needs greenlet
(``pip install gevent``): ``_fastpath`` links against its C API.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import sysconfig
from pathlib import Path

SETUP = Path(__file__).resolve().parent.parent / "setup.py"


def extensions(setup: Path = SETUP) -> list[str]:
    """The module names of the ``Extension(...)`` calls in ``setup.py`` (the POSIX-only
    ones too: the wheels are built on POSIX)."""
    tree = ast.parse(setup.read_text())
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "Extension"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


def main() -> int:
    import dwebsocket
    from dwebsocket.protocol import frames

    where = Path(dwebsocket.__file__).resolve().parent
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if where.parent not in installed:
        print(f"dwebsocket was imported from {where}, not from the installed wheel")
        return 1
    names = extensions()
    if os.name != "posix":
        names = [n for n in names if not n.endswith("._fastpath")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"{where}: the C extension {name} is missing or did not load: {exc}")
            return 1
    if frames._c_apply_mask is None:
        print(f"{where}: dwebsocket does not use _speedups")
        return 1
    data, mask = bytes(range(256)) * 33 + b"tail", b"\x01\x7f\x80\xff"
    if frames._c_apply_mask(data, mask) != frames._py_apply_mask(data, mask):
        print("_speedups.apply_mask differs from the Python code")
        return 1
    print(f"dwebsocket {dwebsocket.__version__} at {where}: {', '.join(names)} load and agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
