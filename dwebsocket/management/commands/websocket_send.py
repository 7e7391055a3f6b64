"""``manage.py websocket_send GROUP MESSAGE``: send to a group from the shell or cron."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from dwebsocket import groups
from dwebsocket.groups.memory import MemoryLayer


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
        layer = groups.get_layer()
        if isinstance(layer, MemoryLayer):
            raise CommandError(
                "WEBSOCKET_GROUPS_URL is unset or memory://: a message sent from this command "
                "would reach only members in this process, and it has none. "
                "Set it to redis://host:port/db."
            )
        if path is not None:
            try:
                messages: Any = [path.read_bytes()]
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        elif text == "-":
            messages = (line.rstrip("\r\n") for line in sys.stdin)
        else:
            messages = [text]
        count = 0
        try:
            for message in messages:
                groups.send(group, message, fail_silently=False)
                count += 1
        except groups.GroupsUnavailable as exc:
            raise CommandError(f"{exc} ({count} message(s) sent before)") from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Sent {count} message(s) to group {group!r}.")
