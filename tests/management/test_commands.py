"""``manage.py websocket_send`` and ``websocket_status`` given bad input: a ``CommandError``
that says what is wrong (exit status 1, one line), never a traceback. (Their normal use:
``tests/groups/test_servers.py``, ``tests/metrics/``.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.servers import REPO

TIMEOUT = 60


def manage(
    *args: str | bytes,
    groups_url: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    shell: str = 'exec "$@"',
) -> subprocess.CompletedProcess[str]:
    """``python tests/manage.py ARGS`` in a process of its own (what a user sees), started
    by ``sh -c SHELL`` (``"$@"``: that command): a limit or a closed descriptor is set
    there, not by a ``preexec_fn``, which makes subprocess fork() this process, and
    eventlet, imported by other tests, warns (an error here) at every fork."""
    command = [sys.executable, str(REPO / "tests" / "manage.py"), *args]
    result = subprocess.run(
        ["/bin/sh", "-c", shell, "sh", *command],
        input=stdin,
        capture_output=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DWEBSOCKET_TEST_SETTINGS": json.dumps({"WEBSOCKET_GROUPS_URL": groups_url}),
            **(env or {}),
        },
        cwd=REPO,
        timeout=TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def assert_command_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("CommandError: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# -- websocket_send ---------------------------------------------------------------------


def test_send_an_empty_group_name(redis_url: str) -> None:
    assert_command_error(manage("websocket_send", "", "hi", groups_url=redis_url), "GROUP")


def test_send_text_that_is_not_utf8(redis_url: str) -> None:
    # An argument that is not UTF-8 reaches Python as lone surrogates.
    result = manage("websocket_send", "room", b"caf\xe9", groups_url=redis_url)
    assert_command_error(result, "UTF-8", "--binary-file")


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_send_lines_that_are_not_utf8(redis_url: str, locale: str) -> None:
    """Standard input in Latin-1: the lines before the bad one are sent, and counted."""
    result = manage(
        "websocket_send",
        "room",
        "-",
        groups_url=redis_url,
        stdin=b"one\ntwo\ncaf\xe9\nfour\n",
        env={"LC_ALL": locale, "PYTHONIOENCODING": ""},
    )
    assert_command_error(result, "line 3", "UTF-8", "2 message(s) sent before")


def test_send_with_a_groups_url_that_cannot_work() -> None:
    url = "redis://127.0.0.1:notaport/0"
    # The system checks read the URL as the layer would, and stop the command first.
    result = manage("websocket_send", "room", "hi", groups_url=url)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("SystemCheckError: "), result.stderr
    assert "(dwebsocket.E020) WEBSOCKET_GROUPS_URL" in result.stderr, result.stderr
    result = manage("websocket_send", "--skip-checks", "room", "hi", groups_url=url)
    assert_command_error(result, "WEBSOCKET_GROUPS_URL", "notaport")


def test_send_with_a_multiprocess_dir_that_is_gone(redis_url: str, tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR exported for websocket_status, its directory gone (or not
    this user's to write): counting is off (a warning in the log); the message is sent."""
    result = manage(
        "websocket_send",
        "room",
        "hi",
        groups_url=redis_url,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")},
    )
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "Sent 1 message(s)" in result.stdout, result


# -- websocket_status -------------------------------------------------------------------


@contextlib.contextmanager
def serving(body: bytes, content_type: str = "text/plain") -> Iterator[str]:
    """A one-page HTTP server on 127.0.0.1 (a thread); yields its URL."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "page",
    [
        # --url at the site rather than its /metrics page
        b"<!doctype html><html><body>Welcome { to the site</body></html>\n",
        b"django_websocket_connections_open NaN\n",
        b"django_websocket_connections_open +Inf\n",
        # a counter of that name without dwebsocket's label
        b"# TYPE django_websocket_handshakes_total counter\ndjango_websocket_handshakes_total 3\n",
    ],
    ids=["html", "nan", "inf", "no-label"],
)
def test_status_of_a_page_that_is_not_dwebsockets_metrics(page: bytes) -> None:
    pytest.importorskip("prometheus_client")
    with serving(page) as url, pytest.raises(CommandError, match="could not read"):
        call_command("websocket_status", "--url", url)


@contextlib.contextmanager
def answering(reply: bytes) -> Iterator[str]:
    """A TCP server on 127.0.0.1 (a thread) that reads one request, writes ``reply`` and
    closes; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    finally:
        listener.close()
        thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "reply",
    [
        # --url at another service's port (an SSH server, say): no HTTP status line
        b"SSH-2.0-OpenSSH_9.6\r\n",
        # a server that stops (a restart) in the middle of the page
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\ndjango_websocket_connections_open 1\n",
    ],
    ids=["not-http", "cut-short"],
)
def test_status_of_a_url_that_gives_no_http_page(reply: bytes) -> None:
    """http.client's errors that are no OSError (BadStatusLine, IncompleteRead): a
    CommandError naming the URL, on one line, not a traceback."""
    pytest.importorskip("prometheus_client")
    with (
        answering(reply) as url,
        pytest.raises(CommandError, match=re.escape(f"could not read {url}")) as e,
    ):
        call_command("websocket_status", "--url", url)
    assert "\r" not in str(e.value) and "\n" not in str(e.value)


def test_status_with_a_multiprocess_dir_that_is_not_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("prometheus_client")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="PROMETHEUS_MULTIPROC_DIR"):
        call_command("websocket_status")


def test_status_with_a_damaged_multiprocess_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("prometheus_client")
    (tmp_path / "counter_1.db").write_bytes(b"garbage")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(CommandError, match="could not read"):
        call_command("websocket_status")


def test_status_reads_the_lower_case_multiprocess_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client still honours the deprecated prometheus_multiproc_dir when
    PROMETHEUS_MULTIPROC_DIR is not in the environment: servers count into it, and
    websocket_status said that PROMETHEUS_MULTIPROC_DIR was not set."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    # A server process's counter file, as prometheus_client writes it.
    counters = MmapedDict(str(tmp_path / "counter_1.db"))
    family = "django_websocket_handshakes"
    key = mmap_key(family, f"{family}_total", ["status"], ["101"], "handshakes")
    counters.write_value(key, 2.0, 0.0)
    counters.close()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("prometheus_multiproc_dir", str(tmp_path))
    out = io.StringIO()
    call_command("websocket_status", "--json", stdout=out)
    assert json.loads(out.getvalue())["handshakes_total"] == {"101": 2}
    # Named in the errors as set.
    missing = tmp_path / "missing"
    monkeypatch.setenv("prometheus_multiproc_dir", str(missing))
    with pytest.raises(CommandError, match=re.escape(f"prometheus_multiproc_dir {missing} is")):
        call_command("websocket_status")
    # PROMETHEUS_MULTIPROC_DIR wins when both are set, as in prometheus_client.
    monkeypatch.setenv("prometheus_multiproc_dir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    with pytest.raises(CommandError, match=re.escape(f"PROMETHEUS_MULTIPROC_DIR {missing} is")):
        call_command("websocket_status")


def test_send_a_binary_file_without_end(redis_url: str) -> None:
    """--binary-file /dev/zero (or a file of gigabytes): read up to the size a group
    message may have, then refused. Before, the whole file was read into memory first
    (here, under a 2 GiB address-space limit: a MemoryError traceback)."""
    result = manage(
        "websocket_send",
        "room",
        "--binary-file",
        "/dev/zero",
        groups_url=redis_url,
        shell='ulimit -v 2097152 && exec "$@"',  # KiB: 2 GiB
    )
    assert_command_error(result, "/dev/zero", "MAX_MESSAGE_SIZE", "0 message(s) sent")


def test_send_lines_of_a_closed_standard_input(redis_url: str) -> None:
    """MESSAGE '-' with no standard input at all (closed: ``<&-``, some daemons' way),
    which Python gives as sys.stdin None. Before: a TypeError traceback."""
    result = manage("websocket_send", "room", "-", groups_url=redis_url, shell='exec "$@" <&-')
    assert_command_error(result, "standard input")


def test_send_lines_of_a_standard_input_without_end(redis_url: str) -> None:
    """MESSAGE '-' with standard input that never ends a line (``< /dev/zero``, a pipe
    that never ends, a file of gigabytes on one line): read up to the size a group message
    may have, then refused, as ``--binary-file`` is. Before, the line was read whole into
    memory first (here, under a 2 GiB address-space limit: a MemoryError traceback)."""
    result = manage(
        "websocket_send",
        "room",
        "-",
        groups_url=redis_url,
        shell='ulimit -v 2097152 && exec "$@" < /dev/zero',  # KiB: 2 GiB
    )
    assert_command_error(
        result, "line 1 of standard input", "MAX_MESSAGE_SIZE", "0 message(s) sent"
    )


def test_lines_up_to_the_size_of_a_group_message() -> None:
    """A line of MAX_MESSAGE_SIZE bytes is one message, whatever its end (``\\r\\n``
    too: not that line cut, then an empty one); one byte more is refused."""
    from dwebsocket.groups import MAX_MESSAGE_SIZE
    from dwebsocket.management.commands.websocket_send import _lines

    full = "x" * MAX_MESSAGE_SIZE
    text = f"{full}\r\n{full}\n{full}\r\nlast"
    assert list(_lines(io.StringIO(text, newline=""))) == [full, full, full, "last"]
    with pytest.raises(ValueError, match="line 2 of standard input is over"):
        list(_lines(io.StringIO(f"a\n{full}y\nb\n", newline="")))
