"""Where an idle connection's memory goes: a breakdown for bench/FINDINGS.md.

    .venv/bin/python bench/memory.py [--conns 2000] [--deflate] [--trace] [--middleware]

Serves the benchmark site (``bench/stacks/djsite``) with monkey-patched gevent.pywsgi in
this process, as ``tests/run_gevent.py`` does, and opens ``--conns`` idle WebSockets on it
with the C load generator (``bench/loadgen``, idle mode); then every connection sends one
32-byte message (compressed where deflate was negotiated) and gets its echo. At each of
the two points it prints, per connection:

- the RSS added (what ``make bench-servers``' idle rows measure);
- the greenlets' saved C stacks (``greenlet._stack_saved``: the part of each view's
  stack copied to the heap while it waits, which no Python tool sees);
- with ``--trace``, ``tracemalloc``'s view of the rest, grouped by the innermost frame
  in dwebsocket, Django, gevent or the standard library that allocated it (tracing slows
  the server down and adds its own overhead to RSS: read the RSS of a run without it).

``--middleware`` serves the site with the seven middleware classes of Django's
``startproject`` (the bare site has none): each is a layer of C stack and Python frames
under the view for as long as it runs (``bench/FINDINGS.md``, section 21).

Every process it starts is stopped; every wait is bounded.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import tracemalloc  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# --checkout DIR: measure another checkout's dwebsocket (its own built extensions), e.g.
# the commit before a change, with this script.
_CHECKOUT = next(
    (Path(sys.argv[i + 1]).resolve() for i, a in enumerate(sys.argv[:-1]) if a == "--checkout"),
    REPO,
)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(_CHECKOUT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stacks.djsite.settings")

import gevent  # noqa: E402
import greenlet  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from bench.compare import LOADGEN, build_loadgen  # noqa: E402

# Where an allocation is charged: the innermost frame whose file is under one of these.
_GROUPS = [
    ("dwebsocket", "dwebsocket/"),
    ("django", "/django/"),
    ("gevent", "/gevent/"),
    ("greenlet", "/greenlet/"),
]


# What `django-admin startproject` enables (Django 5.2 and 6.0), so that --middleware
# measures what a connection costs in an ordinary project rather than in the bare
# benchmark site. Sessions are signed cookies: the site has no database.
STARTPROJECT: dict[str, Any] = {
    "MIDDLEWARE": [
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    "INSTALLED_APPS": [
        "dwebsocket",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
    ],
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap() -> tuple[int, int]:
    """glibc's (bytes in use, bytes free inside the heap): the free part is fragmentation
    RSS still counts. (0, 0) where mallinfo2() is missing."""
    try:
        func = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return 0, 0
    func.restype = _Mallinfo2
    info = func()
    return info.uordblks + info.hblkhd, info.fordblks


def saved_stacks() -> tuple[int, int]:
    """(greenlets alive, bytes of C stack they keep on the heap)."""
    count = total = 0
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and not obj.dead:
            count += 1
            total += obj._stack_saved
    return count, total


# CPython 3.11-3.13: a frame object's pointer to its interpreter frame (``f_frame``) follows
# its header and ``f_back``; an interpreter frame's first slot is after 9 pointers' worth
# of fields (FRAME_SPECIALS_SIZE), and a data-stack chunk's first frame after its 3-word
# header (``_PyStackChunk``: previous, size, top).
_F_FRAME = 3 * ctypes.sizeof(ctypes.c_void_p)
_CHUNK_HEADER = 3 * ctypes.sizeof(ctypes.c_void_p)
_SPECIALS = 9


def _frames(waiting: greenlet.greenlet) -> list[Any]:
    """``waiting``'s Python frames, innermost first."""
    chain = []
    frame = waiting.gr_frame
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    return chain


def _frame_bytes(code: Any) -> int:
    """What a frame of ``code`` takes in the data stack."""
    slots = code.co_nlocals + len(code.co_cellvars) + len(code.co_freevars)
    return (slots + code.co_stacksize + _SPECIALS) * ctypes.sizeof(ctypes.c_void_p)


def _waiting() -> list[greenlet.greenlet]:
    """The live greenlets that have a Python frame (are waiting in one)."""
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, greenlet.greenlet) and not obj.dead and obj.gr_frame is not None
    ]


def python_stacks() -> tuple[int, int, int, int]:
    """(greenlets waiting, their Python frames, bytes of data stack they span, 4 KiB pages
    those spans touch), over the greenlets that have a frame. CPython >= 3.11 gives each
    greenlet its own data-stack chunk (16 KiB, mmap'd, so only the pages written count in
    RSS); a greenlet's frames lie in it one after the other, from its run function's, at
    the chunk's start, up to the one it is waiting in. The span is measured from the
    interpreter frames' own addresses; the pages are those of the chunk in memory."""
    if sys.version_info < (3, 11) or sys.implementation.name != "cpython":
        return 0, 0, 0, 0
    count = frames = span = pages = 0
    for waiting in _waiting():
        chain = _frames(waiting)
        if not chain:
            continue  # it ended meanwhile
        top = ctypes.c_void_p.from_address(id(chain[0]) + _F_FRAME).value or 0
        bottom = ctypes.c_void_p.from_address(id(chain[-1]) + _F_FRAME).value or 0
        end = top + _frame_bytes(chain[0].f_code)
        if not bottom or end - bottom > 16 * 1024 or end < bottom:
            continue  # not one chunk's frames (a deeper stack): left out
        count += 1
        frames += len(chain)
        span += end - bottom
        chunk = (bottom - _CHUNK_HEADER) & ~4095
        # The pages the chunk has in memory: a deeper call earlier in the session (the
        # handshake's, a signal's receivers) may have touched more than the frames
        # waiting now span, and a touched page stays. The span's pages where mincore fails.
        pages += _resident(chunk) or -(-(end - chunk) // 4096)
    return count, frames, span, pages


_libc = ctypes.CDLL(None, use_errno=True)


def _resident(chunk: int) -> int:
    """How many pages of the 16 KiB data-stack chunk at ``chunk`` are in memory
    (mincore(2)); 0 if that cannot be read."""
    vec = (ctypes.c_ubyte * 4)()
    if _libc.mincore(ctypes.c_void_p(chunk), ctypes.c_size_t(16 * 1024), vec) != 0:
        return 0
    return sum(v & 1 for v in vec)


def print_frames() -> None:
    """One waiting view's Python frames, outermost first, with each one's size in the data
    stack (``--frames``)."""
    for waiting in _waiting():
        chain = _frames(waiting)
        if len(chain) < 5:
            continue
        print("one waiting greenlet's Python frames, outermost first (bytes, where):")
        for frame in reversed(chain):
            code = frame.f_code
            where = f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}"
            print(f"  {_frame_bytes(code):5d}  {where}:{frame.f_lineno} {code.co_name}")
        return


def where(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in dwebsocket, Django, gevent or greenlet that led to the
    allocation, and the innermost frame of all (the allocating line)."""
    frames = list(reversed(trace))  # innermost first
    alloc = frames[0]
    inner = f"{Path(alloc.filename).name}:{alloc.lineno}"
    for frame in frames:
        for group, marker in _GROUPS:
            if marker in frame.filename:
                name = frame.filename.split(marker, 1)[1]
                here = f"{group}: {name}:{frame.lineno}"
                return here if frame is alloc else f"{here} ({inner})"
    return f"other: {inner}"


def diff(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> Counter[str]:
    sizes: Counter[str] = Counter()
    stats = after.compare_to(before, "traceback")
    for stat in stats:
        if stat.size_diff:
            sizes[where(stat.traceback)] += stat.size_diff
    return sizes


def report(
    label: str,
    n: int,
    rss_delta: int,
    heap_delta: tuple[int, int],
    stacks: tuple[int, int],
    sizes: Counter[str],
    python: tuple[int, int, int, int] = (0, 0, 0, 0),
    only: str | None = None,
) -> dict[str, Any]:
    print(f"\n== {label}: {n} connections ==")
    print(f"RSS added: {rss_delta / 1024 / n:.1f} KiB per connection")
    print(
        f"malloc: {heap_delta[0] / 1024 / n:.1f} KiB per connection in use, "
        f"{heap_delta[1] / 1024 / n:.1f} KiB free inside the heap"
    )
    print(
        f"greenlets alive: {stacks[0]}, "
        f"saved C stacks: {stacks[1] / 1024 / n:.2f} KiB per connection"
    )
    if python[0]:
        count, frames, span, pages = python
        print(
            f"Python data stacks: {frames / count:.1f} frames, {span / count / 1024:.2f} KiB "
            f"per waiting greenlet ({count}), {pages / count:.2f} pages of 4 KiB touched"
        )
    rows = []
    if sizes:
        total = sum(sizes.values())
        print(f"tracemalloc: {total / 1024 / n:.2f} KiB per connection, by allocating line:")
        if only is not None:
            # One group's lines, all of them down to a byte per connection.
            mine = Counter({k: v for k, v in sizes.items() if k.startswith(f"{only}: ")})
            print(f"  of which {only}: {sum(mine.values()) / 1024 / n:.2f} KiB")
            sizes = mine
        for name, size in sizes.most_common(None if only else 40):
            if abs(size) / n < (1 if only else 16):
                break
            print(f"  {size / 1024 / n:7.2f} KiB  {name}")
            rows.append((name, round(size / 1024 / n, 2)))
    return {
        "label": label,
        "conns": n,
        "rss_kib": round(rss_delta / 1024 / n, 2),
        "malloc_in_use_kib": round(heap_delta[0] / 1024 / n, 2),
        "malloc_free_kib": round(heap_delta[1] / 1024 / n, 2),
        "saved_stack_kib": round(stacks[1] / 1024 / n, 2),
        "python_frames": round(python[1] / python[0], 1) if python[0] else None,
        "python_stack_kib": round(python[2] / python[0] / 1024, 2) if python[0] else None,
        "python_stack_pages": round(python[3] / python[0], 2) if python[0] else None,
        "traced": rows,
    }


def warm_up(port: int, deflate: bool) -> None:
    """One WebSocket session: handshake, one message echoed, close (raw socket)."""
    extensions = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + extensions.encode()
            + b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("warm-up: no handshake answer")
            head += chunk
        sock.sendall(b"\x81\x82\x00\x00\x00\x00hi")  # masked with a zero key
        sock.recv(4096)
        sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
        sock.recv(4096)


def stop_client(client: subprocess.Popen[bytes]) -> None:
    try:
        assert client.stdin is not None
        client.stdin.write(b"quit\n")
        client.stdin.close()
    except OSError:
        pass
    try:
        client.wait(30)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--trace", action="store_true", help="tracemalloc breakdown")
    parser.add_argument(
        "--only",
        choices=[group for group, _ in _GROUPS],
        help="with --trace: every line of this group (dwebsocket's own objects, say)",
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--frames", action="store_true", help="list one view's Python frames")
    parser.add_argument("--checkout", help="measure the dwebsocket of this checkout")
    parser.add_argument(
        "--middleware",
        action="store_true",
        help="serve the site with the seven middleware classes of Django's startproject",
    )
    args = parser.parse_args()
    if args.middleware:
        # Before Django reads its settings: bench/stacks/djsite/settings.py takes these.
        extra = json.loads(os.environ.get("DWEBSOCKET_BENCH_SETTINGS", "{}"))
        os.environ["DWEBSOCKET_BENCH_SETTINGS"] = json.dumps({**extra, **STARTPROJECT})

    import django
    from django.core.wsgi import get_wsgi_application

    import dwebsocket

    print(f"dwebsocket from {Path(dwebsocket.__file__).parent}")
    django.setup()
    build_loadgen()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    server = WSGIServer(listener, get_wsgi_application(), log=None)
    server.start()

    results = []
    client: subprocess.Popen[bytes] | None = None
    try:
        # Warm up: one session's imports and caches before the baseline.
        for _ in range(3):
            warm_up(port, args.deflate)
        gevent.sleep(1)
        gc.collect()
        if args.trace:
            tracemalloc.start(25)
        snap0 = tracemalloc.take_snapshot() if args.trace else None
        base, heap0 = rss(), heap()
        # The load generator runs in another process; its lines are read by a real thread
        # (monkey-patched: a greenlet), so the server keeps serving meanwhile.
        client = subprocess.Popen(
            [
                str(LOADGEN),
                "--mode",
                "idle",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--path",
                "/echo/",
                "--steps",
                str(args.conns),
                "--connect-concurrency",
                "200",
                "--connect-timeout",
                "120",
                "--probe-timeout",
                "60",
                *(["--deflate"] if args.deflate else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert client.stdin is not None and client.stdout is not None

        def line(timeout: float) -> dict[str, Any]:
            box: list[bytes] = []
            reader = threading.Thread(target=lambda: box.append(client.stdout.readline()))
            reader.start()
            reader.join(timeout)
            if not box or not box[0]:
                raise SystemExit("no report from the load generator")
            return json.loads(box[0])  # type: ignore[no-any-return]

        opened = line(300)
        gevent.sleep(2)
        gc.collect()
        n = opened["open"]
        rss_idle, heap1 = rss(), heap()
        snap1 = tracemalloc.take_snapshot() if args.trace else None
        results.append(
            report(
                "idle",
                n,
                rss_idle - base,
                (heap1[0] - heap0[0], heap1[1] - heap0[1]),
                saved_stacks(),
                diff(snap0, snap1) if snap0 and snap1 else Counter(),
                python_stacks(),
                args.only,
            )
        )
        if args.frames:
            print_frames()
        # Reading a waiting greenlet's frames (python_stacks, print_frames) makes a Python
        # frame object for each of them, which then lives as long as the frame: ~4 KiB per
        # connection that a server never spends. Measured here, and taken out of the
        # figures after the message.
        gc.collect()
        walk_rss, walk_heap = rss(), heap()
        walked = (walk_rss - rss_idle, walk_heap[0] - heap1[0], walk_heap[1] - heap1[1])
        print(
            f"(reading the frames made {walked[0] / 1024 / n:.1f} KiB per connection of frame "
            "objects, not counted below)"
        )
        client.stdin.write(b"probe\n")
        client.stdin.flush()
        probed = line(120)
        gevent.sleep(1)
        gc.collect()
        rss_after, heap2 = rss(), heap()
        snap2 = tracemalloc.take_snapshot() if args.trace else None
        results.append(
            report(
                f"after one message (answered {probed['answered']})",
                n,
                rss_after - base - walked[0],
                (heap2[0] - heap0[0] - walked[1], heap2[1] - heap0[1] - walked[2]),
                saved_stacks(),
                diff(snap0, snap2) if snap0 and snap2 else Counter(),
                python_stacks(),
                args.only,
            )
        )
        print(
            "\nafter one message, added by the message: "
            f"{(rss_after - walk_rss) / 1024 / n:.1f} KiB per connection"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"deflate": args.deflate, "middleware": args.middleware, "results": results},
                    indent=1,
                )
            )
    finally:
        if client is not None:
            stop_client(client)
        server.stop(timeout=5)


if __name__ == "__main__":
    main()
