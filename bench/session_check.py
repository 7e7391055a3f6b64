"""What an authenticated handshake costs the server, and the session check at opening's
share of it (``dwebsocket.users._checker.soon``, 16eab26): one gevent server of the test
project (``memory://``, ``tests.groups.user_urls``), one logged-in user, sockets opened
one after the other, each closed once the view said whose it is.

    .venv/bin/python bench/session_check.py                       # this checkout
    .venv/bin/python bench/session_check.py --checkout /tmp/before --rounds 3

``--checkout DIR`` (repeatable) measures other checkouts with the same script, rounds
interleaved (their C extensions built in place; the venv's packages are shared). Prints
handshakes per second and the server's CPU per handshake (user + system), per round and
the medians. Sequential handshakes are the worst case for the check: each is its own
batch of one, so each pays a session-store read and a user query, as the request did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in a child process whose sys.path starts with the checkout measured.
_ONE = r"""
import json, os, sys, time, tempfile
from pathlib import Path
checkout, count = Path(sys.argv[1]), int(sys.argv[2])
os.chdir(checkout)
tmp = Path(tempfile.mkdtemp())
settings = {
    "ROOT_URLCONF": "tests.groups.user_urls",
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3",
                              "NAME": str(tmp / "site.sqlite3")}},
    "MIDDLEWARE": ["django.contrib.sessions.middleware.SessionMiddleware",
                   "django.contrib.auth.middleware.AuthenticationMiddleware"],
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
    "WEBSOCKET_GROUPS_URL": "memory://",
    "WEBSOCKET_SESSION_CHECK_INTERVAL": None,
}
os.environ.update(DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(checkout),
                  DWEBSOCKET_TEST_SETTINGS=json.dumps(settings))
import django
django.setup()
import dwebsocket, psutil
assert Path(dwebsocket.__file__).is_relative_to(checkout), dwebsocket.__file__
from websockets.sync.client import connect
from tests.groups.test_users_servers import Browser, Site, create_site
from tests.servers import start_server
create_site(settings)
server = start_server("gevent", tmp / "server.log", settings=settings)
try:
    browser = Browser(Site([server], tmp / "site.sqlite3"))
    browser.login(server, "alice")
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    process = psutil.Process(server.process.pid)

    def handshake():
        with connect(server.url("/ws/"), additional_headers={"Cookie": cookie},
                     open_timeout=20, close_timeout=20, compression=None) as ws:
            while "pid" not in json.loads(ws.recv(timeout=20)):
                pass

    for _ in range(50):
        handshake()
    cpu = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    for _ in range(count):
        handshake()
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # the last checks, in the background
    cpu = sum(process.cpu_times()[:2]) - cpu
    print(json.dumps({"per_s": count / elapsed, "cpu_us": cpu / count * 1e6}))
finally:
    server.stop()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", type=Path, default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    checkouts = [REPO, *args.checkout]
    results: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}
    for round_ in range(args.rounds):
        for checkout in checkouts:
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            with tempfile.TemporaryDirectory():
                out = subprocess.run(
                    [sys.executable, "-c", _ONE, str(checkout), str(args.count)],
                    capture_output=True,
                    env=env,
                    cwd=checkout,
                    timeout=600,
                    check=True,
                )
            result = json.loads(out.stdout.decode().strip().splitlines()[-1])
            results[checkout].append(result)
            print(
                f"round {round_ + 1} {checkout}: {result['per_s']:.0f}/s, "
                f"{result['cpu_us']:.0f} us of server CPU per handshake",
                flush=True,
            )
    for checkout, rounds in results.items():
        print(
            f"{checkout}: median {statistics.median(r['per_s'] for r in rounds):.0f}/s, "
            f"{statistics.median(r['cpu_us'] for r in rounds):.0f} us per handshake"
        )


if __name__ == "__main__":
    main()
