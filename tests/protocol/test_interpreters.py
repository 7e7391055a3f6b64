"""The C extensions in subinterpreters (``Py_mod_multiple_interpreters``, Python 3.12+).

A module that says it supports an interpreter with its own GIL must hold nothing shared
between interpreters: no static type, no global state. Each of ours has static types
(``_speedups``' ``ReceiveState``, and the C API's struct pointing at it), so none may load
there; where one is refused, ``accelerator`` falls back to the pure-Python code. Whether
a legacy subinterpreter (one GIL for all, as mod_wsgi makes them) loads them is CPython's
rule for what each declares, not tested here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from tests.requirements import c_extension

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="Py_mod_multiple_interpreters is Python 3.12's"
)

EXTENSIONS = [
    "dwebsocket.protocol._speedups",
    "dwebsocket.protocol._deflate",
    "dwebsocket.backends.default._fastpath",
]

#: Loads each extension file in a new interpreter with its own GIL, without importing its
#: package there (a package's imports may not load in an isolated interpreter).
SCRIPT = """
import sys
try:
    import _interpreters as interpreters  # 3.13

    def create():
        return interpreters.create("isolated")
except ImportError:
    import _xxsubinterpreters as interpreters  # 3.12

    def create():
        return interpreters.create(isolated=True)

LOAD = '''
import importlib.machinery, importlib.util
loader = importlib.machinery.ExtensionFileLoader({name!r}, {path!r})
spec = importlib.util.spec_from_file_location({name!r}, {path!r}, loader=loader)
try:
    loader.exec_module(importlib.util.module_from_spec(spec))
except ImportError:
    print({name!r}, "refused", flush=True)
else:
    print({name!r}, "loaded", flush=True)
'''

for name, path in PATHS:
    interpreter = create()
    interpreters.run_string(interpreter, LOAD.format(name=name, path=path))
    interpreters.destroy(interpreter)
"""


def test_no_extension_loads_where_an_interpreter_has_its_own_gil() -> None:
    paths = []
    for name in EXTENSIONS:
        spec = importlib.util.find_spec(name)
        c_extension(spec, name)
        assert spec is not None
        paths.append((name, spec.origin))
    script = f"PATHS = {paths!r}\n" + textwrap.dedent(SCRIPT)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    seen = dict(line.split() for line in done.stdout.splitlines())
    assert seen == dict.fromkeys(EXTENSIONS, "refused")
