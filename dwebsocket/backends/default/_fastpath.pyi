from collections.abc import Callable
from typing import Any

from dwebsocket.backends.default.state import PyIOState as IOState

class Waiter:
    def __init__(self, hub: Any, fd: int) -> None: ...
    def wait(self, deadline: float | None, /) -> bool | None: ...
    def close(self) -> None: ...

class FastPath:
    def __init__(
        self,
        *,
        ws: Any,
        io: IOState,
        rx: Any,
        waiter: Waiter,
        fd: int,
        reading: Any,
        writing: Any,
        core: Any,
        release_idle: Callable[[], None],
        ping_interval: float | None,
        ping_timeout: float | None,
        db_interval: float,
        deflate: bool,
        deflater: Any,
        inflater: Any,
        backlog_bytes: int,
    ) -> None: ...
    def wait(self, deadline: float | None, /) -> str | bytes | None: ...
    def send(self, message: object, /) -> bool: ...

class Messages:
    def __init__(self, ws: Any) -> None: ...
    def __iter__(self) -> Messages: ...
    def __next__(self) -> str | bytes: ...

def scan(
    buf: bytes,
    scan_limit: int,
    max_message: int,
    inflater: Any,
    backlog_bytes: int,
    out: list[Any],
    /,
) -> int: ...
def read_large(
    buf: bytes, scan_limit: int, fd: int, /
) -> tuple[str | bytes, None] | tuple[None, bytes] | None: ...
