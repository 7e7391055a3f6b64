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
    ),
    # permessage-deflate's zlib streams, called directly (needs zlib's headers: without
    # them, deflate.py uses Python's zlib module).
    Extension(
        "dwebsocket.protocol._deflate",
        sources=["dwebsocket/protocol/_deflate.c"],
        depends=["dwebsocket/protocol/_deflate.h"],
        libraries=["z"],
        optional=True,
    ),
]
if os.name == "posix":
    extensions.append(
        Extension(
            "dwebsocket.backends.default._fastpath",
            sources=["dwebsocket/backends/default/_fastpath.c"],
            depends=["dwebsocket/protocol/_speedups.h", "dwebsocket/protocol/_deflate.h"],
            include_dirs=["dwebsocket/protocol"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
