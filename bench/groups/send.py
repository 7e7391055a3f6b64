"""The sender of the groups benchmark: a separate process, as a task worker would be.

    python bench/groups/send.py dwebsocket|channels

Prints ``{"ready": true}`` once set up; then for each line ``N`` on stdin sends the text
message ``N`` to group "bench" and prints ``{"round": N, "t0": t}`` with t the
CLOCK_MONOTONIC just before the send call. Ends on EOF.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable


def dwebsocket_sender() -> Callable[[str], None]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dwebsocket_site")
    import django

    django.setup()
    from dwebsocket import groups

    groups.get_layer()
    return lambda text: groups.send("bench", text)


def channels_sender() -> Callable[[str], None]:
    import asyncio

    import channels_site  # noqa: F401 - sets Django up
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    loop = asyncio.new_event_loop()

    def send(text: str) -> None:
        loop.run_until_complete(layer.group_send("bench", {"type": "bench.message", "text": text}))

    return send


def main() -> None:
    send = {"dwebsocket": dwebsocket_sender, "channels": channels_sender}[sys.argv[1]]()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        text = line.strip()
        t0 = time.monotonic()
        send(text)
        t1 = time.monotonic()
        print(json.dumps({"round": int(text), "t0": t0, "sent": t1}), flush=True)


if __name__ == "__main__":
    main()
