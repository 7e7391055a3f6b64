"""Build the optional C accelerator; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the build goes on and dwebsocket uses its
pure-Python masking (same behaviour, slower on large frames).
"""

from setuptools import Extension, setup

extensions = [
    Extension(
        "dwebsocket.protocol._speedups",
        sources=["dwebsocket/protocol/_speedups.c"],
        depends=["dwebsocket/protocol/_speedups.h"],
        optional=True,
    )
]
setup(ext_modules=extensions)
