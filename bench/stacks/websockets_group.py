"""The ``websockets`` asyncio server as ``bench/scale.py`` runs it: the echo, and a
broadcast to every connection of the process for each message published on the Redis
channel "scale" -- what a ``websockets`` user builds for groups across processes (the
library has none). Several processes serve one port through SO_REUSEPORT.

    python bench/stacks/websockets_group.py 127.0.0.1:PORT redis://127.0.0.1:PORT/0
"""

import asyncio
import resource
import signal
import sys

import redis.asyncio
from websockets.asyncio.server import broadcast, serve

CONNECTIONS = set()


async def member(websocket):
    CONNECTIONS.add(websocket)
    try:
        async for message in websocket:
            await websocket.send(message)
    finally:
        CONNECTIONS.discard(websocket)


async def relay(url: str, subscribed: asyncio.Event) -> None:
    client = redis.asyncio.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe("scale")
        subscribed.set()
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(CONNECTIONS, message["data"].decode())


async def main(host: str, port: int, url: str) -> None:
    subscribed = asyncio.Event()
    relaying = asyncio.create_task(relay(url, subscribed))
    await asyncio.wait_for(subscribed.wait(), 30)
    async with serve(member, host, port, reuse_port=True, backlog=4096) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        print(f"websockets serving on {host}:{port}", flush=True)
        await server.wait_closed()
    relaying.cancel()


if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = sys.argv[1].rpartition(":")
    asyncio.run(main(host, int(port), sys.argv[2]))
