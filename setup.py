"""Build the optional C accelerators; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the build goes on and dwebsocket runs its Python
code instead (same behaviour, slower): the protocol core's masking and receive loop
(``_speedups``), and the default backend's I/O under gevent (``_fastpath``, POSIX only).
"""

import os

from setuptools import Extension, setup

extensions = [
    Extension(
        "dwebsocket.protocol._speedups",
        sources=["dwebsocket/protocol/_speedups.c"],
        depends=["dwebsocket/protocol/_speedups.h"],
        optional=True,
    )
]
if os.name == "posix":
    extensions.append(
        Extension(
            "dwebsocket.backends.default._fastpath",
            sources=["dwebsocket/backends/default/_fastpath.c"],
            depends=["dwebsocket/protocol/_speedups.h"],
            include_dirs=["dwebsocket/protocol"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
