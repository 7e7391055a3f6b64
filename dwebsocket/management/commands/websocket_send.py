"""``manage.py websocket_send GROUP MESSAGE``: send to a group from the shell or cron."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from dwebsocket import groups
from dwebsocket.exceptions import InvalidSetting
from dwebsocket.groups.memory import MemoryLayer

_NOT_UTF8 = "is not UTF-8 text (send bytes with --binary-file PATH)"


class Command(BaseCommand):
    help = (
        "Send a message to every member of a WebSocket group, in every process "
        "(needs WEBSOCKET_GROUPS_URL = redis://...). MESSAGE '-' sends each line read from "
        "standard input as its own text message."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("group", help="the group's name")
        parser.add_argument("message", nargs="?", help="text to send; '-' for lines of stdin")
        parser.add_argument(
            "--binary-file",
            metavar="PATH",
            type=Path,
            help="send this file's content as one binary message instead",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        group: str = options["group"]
        text: str | None = options["message"]
        path: Path | None = options["binary_file"]
        if (text is None) == (path is None):
            raise CommandError("give either MESSAGE or --binary-file PATH")
        if not group:
            raise CommandError("GROUP is empty: give the name of a group")
        if text is not None and text != "-" and not _is_utf8(text):
            raise CommandError(f"MESSAGE {_NOT_UTF8}")
        try:
            layer = groups.get_layer()
        except (InvalidSetting, ImproperlyConfigured) as exc:  # a URL no layer serves, no redis-py
            raise CommandError(str(exc)) from exc
        if isinstance(layer, MemoryLayer):
            raise CommandError(
                "WEBSOCKET_GROUPS_URL is unset or memory://: a message sent from this command "
                "would reach only members in this process, and it has none. "
                "Set it to redis://host:port/db."
            )
        if path is not None:
            # No more than a group message may hold: /dev/zero, a pipe that never ends or
            # a file of gigabytes would otherwise be read into memory first.
            limit = groups.MAX_MESSAGE_SIZE
            try:
                with path.open("rb") as file:
                    data = file.read(limit + 1)
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
            if len(data) > limit:
                raise CommandError(
                    f"{path} is over dwebsocket.groups.MAX_MESSAGE_SIZE ({limit} bytes): "
                    "send a reference to the data (a URL, an id) instead "
                    "(0 message(s) sent before)"
                )
            messages: Any = [data]
        elif text == "-":
            if sys.stdin is None:  # closed (``<&-``): Python has no stream to give
                raise CommandError("MESSAGE is '-' but standard input is closed")
            messages = _lines(sys.stdin)
        else:
            messages = [text]
        count = 0
        try:
            for message in messages:
                groups.send(group, message, fail_silently=False)
                count += 1
        except groups.GroupsUnavailable as exc:
            raise CommandError(f"{exc} ({count} message(s) sent before)") from exc
        except UnicodeError as exc:
            raise CommandError(
                f"line {count + 1} of standard input {_NOT_UTF8} ({count} message(s) sent before)"
            ) from exc
        except ValueError as exc:  # over groups.MAX_MESSAGE_SIZE
            raise CommandError(f"{exc} ({count} message(s) sent before)") from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Sent {count} message(s) to group {group!r}.")


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8: bytes that were not UTF-8 in the command line
    (or in standard input read with ``surrogateescape``) reach Python as lone
    surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lines(stream: Any) -> Iterator[str]:
    """Each line of ``stream`` without its end. Raises ``UnicodeError`` at a line that is
    not UTF-8 (decoding it strictly failed, or it holds lone surrogates), ``ValueError``
    at one longer than a group message may be (read no further: ``< /dev/zero`` or a
    file of gigabytes on one line would otherwise be read into memory first)."""
    limit = groups.MAX_MESSAGE_SIZE
    number = 0
    while True:
        # Characters, each at least a byte: no line a message can hold is cut, "\r\n" and
        # all, and a cut one is over the limit.
        line = stream.readline(limit + 2)
        if not line:
            return
        number += 1
        if not _is_utf8(line):
            raise UnicodeEncodeError("utf-8", line, 0, len(line), "not UTF-8")
        text = line.rstrip("\r\n")
        if len(text) > limit or (not text.isascii() and len(text.encode()) > limit):
            raise ValueError(
                f"line {number} of standard input is over dwebsocket.groups.MAX_MESSAGE_SIZE "
                f"({limit} bytes): send a reference to the data (a URL, an id) instead"
            )
        yield text
