"""The C extensions of the protocol when an allocation fails: ``python -m
tests.protocol.nomemory`` prints one JSON line (``test_allocation_failures.py`` runs it in
a subprocess, so that a crash is a failed test, not a dead test run).

For each ``n`` from 0, CPython's ``_testcapi.set_nomemory(n, n + 1)`` makes the ``n``-th
allocation after it fail (every allocator: raw, mem and object), then a fixed scenario
runs through ``_deflate`` (two stream pairs, with and without context takeover, while at
most one stream of each kind stays attached, so that parking and restoring windows run
too), ``_speedups`` (``scan_messages`` over a stream of masked frames, ``unmask``,
``apply_mask``) and the default backend's C receive loop (``_fastpath.scan``, plain and
compressed frames, and ``_fastpath.read_large``, the rest of a large frame read from a
pipe). The sweep stops after ``CLEAN_RUNS`` runs in a row that fail nothing: every
allocation the scenario makes has failed once.

What must hold: a failed allocation is a ``MemoryError`` from the call that made it (or
an error of the compressed stream it broke: ``zlib.error``), never a crash; the same
objects stay usable afterwards (the scenario goes on with them); a run that failed
nothing gives exactly the reference output; and once the codecs are gone no zlib stream is
left (``live_counts() == (0, 0)``).

``_fastpath.FastPath`` itself is not swept: it switches greenlets, and greenlet ends the
process (``Fatal Python error: g_switchstack``) when it cannot allocate the copy of a
stack, whichever allocation the sweep made fail.
"""

from __future__ import annotations

import _testcapi  # type: ignore[import-not-found]
import json
import os
import random
import zlib
from collections.abc import Callable
from typing import Any

from dwebsocket.backends.default import _fastpath
from dwebsocket.protocol import _deflate, _speedups

TAIL = b"\x00\x00\xff\xff"
#: More than any run needs (a few hundred): a sweep that does not end by then is a bug.
LIMIT = 5000
#: The sweep ends after this many runs in a row in which nothing failed.
CLEAN_RUNS = 20


def frame(opcode: int, payload: bytes, fin: bool = True, key: bytes = b"abcd") -> bytes:
    """A masked client frame."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0xFF]) + n.to_bytes(8, "big")
    return head + key + _speedups.apply_mask(payload, key)


def scenario_ops() -> tuple[list[Callable[[], Any]], Callable[[], list[Any]], Callable[[], None]]:
    """The scenario as a list of steps (so that a failed step does not stop the rest),
    what they produced, and how to let go of the codecs."""
    noise = random.Random(7).randbytes(3000)
    messages = [b'{"type":"chat","text":"hello %d"}' % i for i in range(3)]
    messages += [noise, b"ab" * 35000]
    deflaters = [_deflate.Deflater(6, 12, 5, 0, takeover) for takeover in (False, True)]
    inflaters = [_deflate.Inflater(12, takeover) for takeover in (False, True)]
    sent: list[bytes] = [b"", b""]
    results: list[Any] = []

    def compress(k: int, message: bytes) -> None:
        sent[k] = deflaters[k].compress(message) + deflaters[k].flush(zlib.Z_SYNC_FLUSH)

    def decompress(k: int) -> None:
        inflater = inflaters[k]
        results.append(inflater.decompress(sent[k][:-4] + TAIL, 1 << 20))
        results.append((inflater.eof, inflater.unused_data))

    stream = b"".join(
        [
            frame(1, b"hello"),
            frame(2, noise[:300]),
            frame(1, "é".encode() * 50),
            frame(9, b"ping"),
            frame(1, b"frag", fin=False),
            frame(0, b"ment"),
            frame(2, noise),
        ]
    )

    def scan() -> None:
        out: list[Any] = []
        results.append(_speedups.scan_messages(stream, 0, 1, 1 << 20, out))
        results.append(out)
        results.append(_speedups.unmask(stream, 6, 11))
        results.append(_speedups.apply_mask(noise, b"wxyz"))

    # The default backend's receive loop in C, compressed frames included (a client's
    # deflater, the server's inflater), and its read of a large frame's rest from an fd.
    client = _deflate.Deflater(6, 12, 5, 0, False)
    server = _deflate.Inflater(12, False)
    compressed = b""
    for message in messages[:4]:
        payload = client.compress(message) + client.flush(zlib.Z_SYNC_FLUSH)
        compressed += frame(0x40 | 2, payload[:-4])  # RSV1: compressed
    large = frame(2, messages[4])

    def fast_scan() -> None:
        for buf, codec in ((stream, None), (compressed, server)):
            out: list[Any] = []
            results.append(_fastpath.scan(buf, 1 << 20, 1 << 20, codec, 4096, out))
            results.append(out)

    def read_large() -> None:
        r, w = os.pipe()
        try:
            os.set_blocking(r, False)
            os.write(w, large[40000:])  # more than half of it is in the read: taken
            results.append(_fastpath.read_large(large[:40000], 1 << 20, r))
        finally:
            os.close(r)
            os.close(w)

    ops: list[Callable[[], Any]] = [scan, fast_scan, read_large]
    for _ in range(2):
        for message in messages:
            for k in (0, 1):
                ops.append(lambda k=k, m=message: compress(k, m))
                ops.append(lambda k=k: decompress(k))
        ops.append(deflaters[0].reset)
        ops.append(inflaters[0].reset)

    def release() -> None:
        deflaters.clear()
        inflaters.clear()

    return ops, lambda: results, release


def run(n: int | None) -> tuple[int, int, list[Any]]:
    """The scenario with allocation ``n`` failing (None: none); (MemoryErrors, other
    errors, results)."""
    ops, results, release = scenario_ops()
    steps = iter(ops)
    memory_errors = others = 0
    if n is not None:
        _testcapi.set_nomemory(n, n + 1)
    try:
        while True:
            try:
                step = next(steps, None)
                if step is None:
                    break
                step()
            except MemoryError:
                memory_errors += 1
                _testcapi.remove_mem_hooks()
            except zlib.error:
                others += 1  # a stream that lost a step earlier: expected
    finally:
        _testcapi.remove_mem_hooks()
    produced = results()
    release()
    return memory_errors, others, produced


def main() -> None:
    _deflate.set_live_limit(1, 1)
    _, _, reference = run(None)
    report: dict[str, Any] = {"swept": None, "memory_errors": 0, "wrong_results": []}
    clean = 0  # runs in a row that failed nothing
    for n in range(LIMIT):
        memory_errors, others, produced = run(n)
        report["memory_errors"] += memory_errors
        if _deflate.live_counts() != (0, 0):
            report["live_after"] = [n, list(_deflate.live_counts())]
            break
        if memory_errors or others:
            clean = 0
            continue
        # Nothing failed: past the scenario's last allocation, or one whose failure the
        # code got over. Either way the output must be the reference.
        if produced != reference:
            report["wrong_results"].append(n)
        clean += 1
        if clean == CLEAN_RUNS:
            report["swept"] = n - CLEAN_RUNS
            break
    print(json.dumps(report))


def restore() -> None:
    """Print one JSON line: the allocations of a parked ``Inflater``'s next ``decompress()``
    failing in turn (``python -c 'from tests.protocol.nomemory import restore; restore()'``).

    The other Inflater took its stream (at most one attached), with another window size,
    so that getting one back allocates zlib's window for the kept one. Each failure must
    be a ``MemoryError``, and one that left the Inflater without its stream (nothing
    inflated yet) must leave its context as it was: the same call again gives the message.
    """
    _deflate.set_live_limit(1, 1)
    z = zlib.compressobj(6, zlib.DEFLATED, -12)
    first = b"the first message, which the second one refers to. " * 4
    second = b"the first message, which the second one refers to, again"
    sent = [z.compress(m) + z.flush(zlib.Z_SYNC_FLUSH) for m in (first, second)]
    report: dict[str, Any] = {"failed": 0, "not_memory_errors": [], "context_lost": []}
    for n in range(LIMIT):
        kept, other = _deflate.Inflater(12), _deflate.Inflater(15)
        kept.decompress(sent[0])
        other.decompress(b"\x02\x00" + TAIL)  # an empty block: nothing to keep of its own
        error: Exception | None = None
        _testcapi.set_nomemory(n, n + 1)
        try:
            kept.decompress(sent[1])
        except Exception as exc:
            error = exc
        finally:
            _testcapi.remove_mem_hooks()
        if error is None:
            break  # past the call's last allocation
        report["failed"] += 1
        if not isinstance(error, MemoryError):
            report["not_memory_errors"].append([n, repr(error)])
        if _deflate.live_counts()[1] == 0:  # it did not get a stream: nothing inflated
            try:
                again: object = kept.decompress(sent[1]) == second
            except zlib.error as exc:
                again = repr(exc)
            if again is not True:
                report["context_lost"].append([n, again])
    print(json.dumps(report))


def failed_inflate() -> None:
    """Print one JSON line: the allocations of a decompression that ends the peer's
    deflate stream failing in turn, through ``Inflater.decompress()`` (a message larger
    than the output buffer keeps, which grows it as zlib writes) and through the fast
    path's C receive loop (``_fastpath.scan``, a small message). After a failure in the
    middle of zlib's work (or once it ended the stream) the Inflater must keep its stream:
    another one's use, while at most one stays attached, must not take it, which would
    keep only its window and forget the rest of its state (that the stream ended, or the
    block it was in). Run as ``restore()`` is.
    """
    _deflate.set_live_limit(1, 1)
    z = zlib.compressobj(6, zlib.DEFLATED, -12)
    first = z.compress(b"first, ") + z.flush(zlib.Z_SYNC_FLUSH)
    large = z.copy()
    small = z.compress(b"and last") + z.flush(zlib.Z_FINISH)  # BFINAL: the stream ends
    large_end = large.compress(random.Random(7).randbytes(100) * 3000) + large.flush() + TAIL
    report: dict[str, Any] = {"failed": 0, "taken": []}
    for via in ("decompress", "scan"):
        for n in range(LIMIT):
            kept, other = _deflate.Inflater(12), _deflate.Inflater(12)
            kept.decompress(first)
            out: list[Any] = []
            error: Exception | None = None
            data = frame(0x40 | 2, small)
            decompress, scan = kept.decompress, _fastpath.scan
            _testcapi.set_nomemory(n, n + 1)
            try:
                if via == "decompress":
                    decompress(large_end)
                else:
                    scan(data, 1 << 20, 1 << 20, kept, 1 << 20, out)
            except Exception as exc:
                error = exc
            finally:
                _testcapi.remove_mem_hooks()
            if error is None:
                break  # past the call's last allocation
            report["failed"] += 1
            other.decompress(b"\x02\x00" + TAIL)
            if _deflate.live_counts()[1] != 2:
                report["taken"].append([via, n, repr(error)])
    print(json.dumps(report))


def lost_compression() -> None:
    """Print one JSON line: the allocations of compressing a message larger than the
    first output block failing in turn: one ``compress()`` of ``_deflate``'s Deflater and
    of the zlib module's (``PyDeflater``), the fast path's ``compress_message()``, and a
    server ``Connection``'s ``send_binary()`` over either stream.

    A failure may come after zlib took part of the message, whose output is then lost:
    the compressor's context is no longer the one the peer decodes in. What must hold:
    the next message is refused (a stream: ``zlib.error`` until ``reset()``; the
    connection: ``InvalidState``, having failed with 1011) or is one the peer, which got
    only what was returned, decodes as sent.
    """
    report: dict[str, Any] = {"failed": 0, "wrong_bytes": [], "refused": 0}
    for kind in ("c", "python", "c_api", "connection", "connection-python"):
        for n in range(LIMIT):
            outcome = _lose_compression(kind, n)
            if outcome == "ok":
                break  # past the call's last allocation
            report["failed"] += 1
            if outcome == "refused":
                report["refused"] += 1
            elif outcome != "decoded":
                report["wrong_bytes"].append([kind, n, outcome])
    print(json.dumps(report))


_FIRST = b"a first message for context! " * 8
_BIG = random.Random(7).randbytes(100_000)  # incompressible: more than the first block
_LATER = b"a first message for context! and a later one"


def _lose_compression(kind: str, n: int) -> str:
    """One run of :func:`lost_compression`: "ok" (nothing failed), "refused", "decoded"
    (the next message, as sent), or what the peer made of it."""
    from dwebsocket.exceptions import InvalidState
    from dwebsocket.protocol import deflate
    from dwebsocket.protocol.connection import Connection

    if kind.endswith("python"):
        encoder: Any = deflate.PyDeflater(6, 15, 5, zlib.Z_DEFAULT_STRATEGY, False)
    else:
        encoder = _deflate.Deflater(6, 15, 5, zlib.Z_DEFAULT_STRATEGY, False)
    codec = deflate.PerMessageDeflate()
    codec.encoder = encoder
    conn = Connection(deflate=codec)
    client = Connection(client=True, deflate=deflate.PerMessageDeflate())
    inflater = zlib.decompressobj(-15)
    framed = kind.startswith("connection")
    made: list[Any] = [b"", TAIL]  # filled in place: a new list could fail to be made

    def compress(data: bytes, whole: bool = True) -> None:
        """``data``'s frame or compressed bytes (without the tail)."""
        made[1] = TAIL
        if kind == "c_api":
            made[0] = _deflate.compress_message(encoder, data)
        elif framed:
            made[0] = conn.send_binary(data)
        else:  # as PerMessageDeflate.compress() calls them; one call when swept
            made[0] = encoder.compress(data)
            if whole:
                made[1] = encoder.flush(zlib.Z_SYNC_FLUSH)

    def sent() -> bytes:
        return made[0] if framed or kind == "c_api" else (made[0] + made[1])[:-4]

    def peer(data: bytes, message: bytes) -> str:
        if framed:
            events = client.receive_data(data)
            return "decoded" if events == [message] else repr(events)[:80]
        try:
            out = inflater.decompress(data + TAIL)
        except zlib.error as exc:
            return repr(exc)
        return "decoded" if out == message else repr(out)[:80]

    compress(_FIRST)
    assert peer(sent(), _FIRST) == "decoded"
    _testcapi.set_nomemory(n, n + 1)
    try:
        compress(_BIG, whole=False)
    except MemoryError:
        pass
    else:
        return "ok"
    finally:
        _testcapi.remove_mem_hooks()
    try:
        compress(_LATER)
    except (zlib.error, InvalidState):
        return "refused"
    return peer(sent(), _LATER)


if __name__ == "__main__":
    main()
