"""A TCP forwarder on 127.0.0.1 standing for a load balancer in front of server processes.

``target(port)`` picks the backend new connections go to; ``cut()`` drops every open
connection and refuses new ones (accepts, then closes at once: what a client sees of a
network that went away) until ``restore()``; ``freeze()`` keeps the open connections but
forwards nothing more on them, either way (a peer gone silent: only a heartbeat tells);
``hold(until)`` keeps what the servers send until it contains ``until``, then forwards it in
one write (a buffering load balancer: several frames, even the 101 and the frames after it,
reach the client in one read); ``pause()`` stops reading what the servers send on the
connections open now, until ``resume()`` (a slow network, or a client reading slowly, as a
server sees it: its writes back up, nothing is lost), ``pause(clients=True)`` what the
clients send (a link that stopped: their systems' buffers fill); ``throttle(chunk,
every)`` forwards what the clients send (on every connection, new ones too) at most
``chunk`` bytes every ``every`` seconds (a slow uplink: a large message takes long, bytes
keep moving), and ``throttle(..., to_clients=True)`` what the servers send (a slow
downlink). With ``real_link=True`` the clients' systems buffer what a real link leaves
them: over loopback (64 KiB segments, receive buffers growing without bound) they take
megabytes of a throttled upload at once, which its sender then no longer sees. Threads
only; ``close()`` stops everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.servers import HOST


class Proxy:
    def __init__(self, target: int, *, real_link: bool = False) -> None:
        self._target = target
        self._listener = socket.create_server((HOST, 0))
        if real_link:  # accepted connections inherit them: an Ethernet-sized MSS, a fixed buffer
            self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._frozen: set[socket.socket] = set()
        self._paused: set[socket.socket] = set()
        self._resumed = threading.Event()
        self._upstreams: set[socket.socket] = set()
        self._until: bytes | None = None
        self._held: dict[socket.socket, bytearray] = {}
        self._cut = False
        self._stopping = False
        self._throttle: tuple[int, float] | None = None
        self._throttle_to_clients: tuple[int, float] | None = None
        #: Connections accepted and forwarded (refused ones not counted).
        self.forwarded = 0
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    def target(self, port: int) -> None:
        with self._lock:
            self._target = port

    def cut(self) -> None:
        """Drop every connection; refuse new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def freeze(self) -> None:
        """Forward nothing more on the connections open now (new ones work)."""
        with self._lock:
            self._frozen |= self._open

    def pause(self, *, clients: bool = False) -> None:
        """Read nothing more from the servers (``clients``: from the clients) on the
        connections open now (a read under way is still forwarded) until :meth:`resume`."""
        with self._lock:
            self._resumed.clear()
            servers = self._upstreams & self._open
            self._paused |= self._open - servers if clients else servers

    def resume(self) -> None:
        with self._lock:
            self._paused.clear()
            self._resumed.set()

    def hold(self, until: bytes) -> None:
        """Keep what the servers send (on every connection, new ones too) until what one
        connection kept contains ``until``; then send each its bytes in one write and
        forward as usual again."""
        with self._lock:
            self._until = until

    def throttle(self, chunk: int, every: float, *, to_clients: bool = False) -> None:
        """Forward what clients send (``to_clients``: what servers send) at most ``chunk``
        bytes every ``every`` seconds."""
        with self._lock:
            if to_clients:
                self._throttle_to_clients = (chunk, every)
            else:
                self._throttle = (chunk, every)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._stopping = True
        self.resume()
        self._thread.join(5)
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                cut, target = self._cut, self._target
            if cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection((HOST, target), timeout=5)
            except OSError:
                client.close()  # the backend is down: like a load balancer without one
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    continue
                self._open |= {client, upstream}
                self._upstreams.add(upstream)
                self.forwarded += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                while source in self._paused and not self._stopping:
                    self._resumed.wait(0.1)
                upstream = source in self._upstreams
                throttle = self._throttle_to_clients if upstream else self._throttle
                if not (data := source.recv(throttle[0] if throttle else 65536)):
                    break
                if throttle:
                    time.sleep(throttle[1])
                if source in self._frozen or self._keep(source, sink, data):
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            source.close()

    def _keep(self, source: socket.socket, sink: socket.socket, data: bytes) -> bool:
        """True if ``data`` is held (see :meth:`hold`), or sent here with what was held."""
        with self._lock:  # held while sending: nothing overtakes what was held
            if self._until is None or source not in self._upstreams:
                return False
            kept = self._held.setdefault(sink, bytearray())
            kept += data
            if self._until in kept:
                self._until = None
                held, self._held = self._held, {}
                for client, chunk in held.items():
                    with contextlib.suppress(OSError):
                        client.sendall(chunk)
            return True
