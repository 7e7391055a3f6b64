"""Check an installed dwebsocket: its C extensions load and agree with the Python code.

    python tools/check_wheel.py        # from outside the checkout; exits 1 on a failure

It needs greenlet (``pip install gevent``): ``_fastpath`` links against its C API.

Run on every built wheel (``nox -s build``, and cibuildwheel's ``test-command``). The
build treats the extensions as optional, so a wheel without them would install and run,
only slower; this is what makes a missing one fail the release.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path


def main() -> int:
    import dwebsocket
    from dwebsocket.protocol import frames

    where = Path(dwebsocket.__file__).resolve().parent
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if where.parent not in installed:
        print(f"dwebsocket was imported from {where}, not from the installed wheel")
        return 1
    if frames._c_apply_mask is None:
        print(f"{where}: the C extension _speedups is missing or failed to load")
        return 1
    data, mask = bytes(range(256)) * 33 + b"tail", b"\x01\x7f\x80\xff"
    if frames._c_apply_mask(data, mask) != frames._py_apply_mask(data, mask):
        print("_speedups.apply_mask differs from the Python code")
        return 1
    if os.name == "posix":
        try:
            from dwebsocket.backends.default import _fastpath  # noqa: F401 - it loads
        except ImportError as exc:
            print(f"{where}: the C extension _fastpath did not load: {exc}")
            return 1

    print(f"dwebsocket {dwebsocket.__version__} at {where}: C extensions loaded and agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
