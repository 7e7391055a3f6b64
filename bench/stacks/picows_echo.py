"""picows' echo on uvloop: the fastest Python WebSocket server we know, as a ceiling.

    python bench/stacks/picows_echo.py 127.0.0.1:PORT

picows has no permessage-deflate; it answers frames from a callback, without a
coroutine per message.
"""

import asyncio
import contextlib
import signal
import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


async def main(host: str, port: int) -> None:
    def listener_factory(request: WSUpgradeRequest) -> Echo:
        return Echo()

    server = await ws_create_server(listener_factory, host, port)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)
    print(f"picows serving on {host}:{port}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await server.serve_forever()


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    uvloop.run(main(host, int(port)))
