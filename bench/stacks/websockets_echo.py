"""The ``websockets`` asyncio server's echo, with its defaults (permessage-deflate offered
and accepted, 1 MiB max message).

    python bench/stacks/websockets_echo.py 127.0.0.1:PORT
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(host: str, port: int) -> None:
    async with serve(echo, host, port) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        print(f"websockets serving on {host}:{port}", flush=True)
        await server.wait_closed()


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    asyncio.run(main(host, int(port)))
