"""``_deflate`` with buffers larger than zlib's counts: given to zlib in pieces.

zlib counts input and output in ``uInt`` (32 bits), so ``_deflate.c`` feeds a larger
input in pieces of at most ``DWS_ZLIB_PIECE`` bytes (``UINT_MAX``). A build of it with
pieces of :data:`PIECE` bytes checks many pieces against the zlib module's twins
(``PyDeflater``, ``PyInflater``) byte for byte; one slow test compresses a message of
4 GiB - 64 bytes with the real build (read from the zero pages of a read-only private
mapping: no memory is used for it, and the output is ~20 MB).
"""

from __future__ import annotations

import importlib.util
import random
import shlex
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path
from types import ModuleType

import pytest

from dwebsocket.protocol import deflate
from tests.requirements import c_extension, missing

REPO = Path(__file__).resolve().parent.parent.parent
SOURCE = REPO / "dwebsocket" / "protocol" / "_deflate.c"

#: The test build's piece: a prime, so pieces do not line up with zlib's own buffers.
PIECE = 1021
_random = random.Random(7692)
MESSAGES = [
    b"",
    b"x",
    bytes(PIECE - 1),
    bytes(PIECE),
    bytes(PIECE + 1),
    _random.randbytes(10 * PIECE + 7),  # incompressible: output larger than a piece too
    b"permessage-deflate " * 3000,
]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """``_deflate`` built with ``-DDWS_ZLIB_PIECE=PIECE`` into a temporary directory, by
    the compiler and flags Python was built with (no setuptools: a 3.12 venv has none)."""
    c_extension(deflate._codecs, "_deflate")
    config = sysconfig.get_config_vars()
    built = tmp_path_factory.mktemp("deflate-pieces") / f"_deflate{config['EXT_SUFFIX']}"
    command = [
        *shlex.split(config.get("LDSHARED") or "cc -shared"),
        *shlex.split(config.get("CCSHARED") or "-fPIC"),
        "-O2",
        f"-I{sysconfig.get_paths()['include']}",
        f"-DDWS_ZLIB_PIECE={PIECE}",
        str(SOURCE),
        "-lz",
        "-o",
        str(built),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        missing(f"a C compiler ({command[0]})")
    if done.returncode != 0:
        missing(f"a C compiler with zlib's headers ({done.stderr[-500:]})")
    spec = importlib.util.spec_from_file_location("_deflate", built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compressing_in_pieces_gives_the_zlib_modules_bytes(pieces: ModuleType) -> None:
    # The codec's level (6). At level 0 zlib cuts its stored blocks where the buffers end,
    # so the bytes depend on the buffer sizes, there as in the zlib module.
    ours = pieces.Deflater(6, 12, 5, 0, False)
    twin = deflate.PyDeflater(6, 12, 5, 0, False)
    for message in MESSAGES:  # one stream: each message in the context of the others
        got = ours.compress(message) + ours.flush(zlib.Z_SYNC_FLUSH)
        assert got == twin.compress(message) + twin.flush(zlib.Z_SYNC_FLUSH), len(message)
    assert ours.flush(zlib.Z_FINISH) == twin.flush(zlib.Z_FINISH)


@pytest.mark.parametrize("max_length", [0, PIECE - 1, PIECE + 1, 3 * PIECE])
@pytest.mark.parametrize("level", [0, 6])
def test_decompressing_in_pieces_gives_the_zlib_modules_bytes(
    pieces: ModuleType, level: int, max_length: int
) -> None:
    for message in MESSAGES:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -12)
        data = compressor.compress(message) + compressor.flush(zlib.Z_FINISH) + b"after"
        ours, twin = pieces.Inflater(12, False), deflate.PyInflater(12, False)
        got = ours.decompress(data, max_length)
        assert got == twin.decompress(data, max_length), (len(message), max_length)
        assert (ours.eof, ours.unused_data) == (twin.eof, twin.unused_data), len(message)


@pytest.mark.slow
def test_a_message_of_4_gib_less_64_bytes_compresses_as_the_zlib_module_does() -> None:
    """A piece of 2**32 - 64 bytes: the output buffer's reserve was counted in uInt
    (2**32 - 64 + 64 = 0), so in a thread with no output buffer yet none was made and
    zlib.error ('Error -2 while compressing data') was raised; with a full one, zlib would
    have been called with no room, for ever (the GIL held). In a subprocess, so that a
    hang is a failed test too, and the C codec first: the thread's first compression."""
    c_extension(deflate._codecs, "_deflate")
    done = subprocess.run(
        [sys.executable, "-c", _FOUR_GIB],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    c, python = done.stdout.split()
    assert c == python


_FOUR_GIB = """
import hashlib, mmap, zlib
from dwebsocket.protocol import _deflate, deflate

size = 2**32 - 64
zeros = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
for codec in (_deflate.Deflater, deflate.PyDeflater):
    stream = codec(1, 12, 5, 0, False)  # level 1: 4 GiB in ~10 s rather than ~30
    out = stream.compress(zeros) + stream.flush(zlib.Z_SYNC_FLUSH)
    print(hashlib.sha256(out).hexdigest())
"""
