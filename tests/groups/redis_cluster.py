"""A private Redis Cluster and a private Sentinel setup for tests, on 127.0.0.1.

- :class:`RedisCluster`: 3 masters and 3 replicas (``redis-server --cluster-enabled yes``,
  joined by ``redis-cli --cluster create ... --cluster-replicas 1``), each node on its own
  free port and cluster bus port, a 1 s node timeout so that a replica takes over a dead
  master within seconds. :meth:`~RedisCluster.kill` stops a master and waits until its
  replica has been promoted; :meth:`~RedisCluster.move_slot` hands one slot to another
  master (``CLUSTER SETSLOT``, what ``redis-cli --cluster reshard`` does per slot).
- :class:`RedisSentinels`: a master, a replica and 3 sentinels (``redis-server --sentinel``,
  quorum 2, down after 1 s) monitoring it as ``"dws"``.

Every process is stopped by :meth:`close` (the fixtures call it), every wait is bounded,
and the shared Redis on 6379 is never touched. Needs redis-server and redis-cli 7 or later
(sharded pub/sub).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.groups.redis_server import REDIS_SERVER, free_port
from tests.requirements import REDIS_SETUP, executable

REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
HOST = "127.0.0.1"
#: Milliseconds without an answer before the cluster (or the sentinels) call a node down.
NODE_TIMEOUT_MS = 1000
SETUP_TIMEOUT = 30.0
T = TypeVar("T")


def require() -> None:
    """Skip the test without redis-server or redis-cli; on CI (``CI`` set) fail it: a
    missing part must never pass as a skip there."""
    executable("redis-server", REDIS_SETUP)
    executable("redis-cli", REDIS_SETUP)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = SETUP_TIMEOUT) -> T:
    """Call ``check`` until it returns something other than None/False (then return it);
    ``TimeoutError`` naming ``what`` after ``timeout`` seconds. Errors from a node that is
    still coming up (``redis.RedisError``) count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except redis.RedisError as exc:
            last, value = exc, None
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout} s (last error: {last})")


class _PortTaken(RuntimeError):
    """redis-server could not bind its port (or cluster bus port)."""


class Node:
    """One redis-server process: a cluster node, a plain server or a sentinel."""

    def __init__(self, directory: Path, args: list[str], *, sentinel: bool = False) -> None:
        self.port = free_port()
        # Not named by the port: two nodes may be handed the same one (the socket that
        # chose it was closed each time); the second then starts again on another.
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.port}-", dir=directory))
        self.args = args
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "log"
        #: Stopped by SIGSTOP (:meth:`RedisCluster.hang`): running, answering nothing.
        self.hung = False

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it answers. A port another process took since
        :func:`free_port` chose it (other test suites run on this machine) makes the
        server exit: it is started again on new ports, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                self._start()
                return
            except _PortTaken:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                if "--cluster-port" in self.args:
                    self.args[self.args.index("--cluster-port") + 1] = str(free_port())

    def _start(self) -> None:
        assert self.process is None
        common = ["--port", str(self.port), "--bind", HOST, "--protected-mode", "no"]
        common += ["--dir", str(self.directory), "--logfile", str(self.log)]
        if self.sentinel:
            # A sentinel rewrites its configuration file: it needs one of its own.
            config = self.directory / "sentinel.conf"
            config.write_text("")
            argv = [REDIS_SERVER, str(config), "--sentinel", *common, *self.args]
        else:
            argv = [REDIS_SERVER, *common, "--save", "", "--appendonly", "no", *self.args]
            # A replica's first sync at once, not after the default 5 s wait for others.
            argv += ["--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(f"redis-server on {self.port}", self._answers, 10)

    def _answers(self) -> bool:
        process = self.process
        assert process is not None
        if process.poll() is not None:
            self.process = None
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if process.stderr is not None:
                log += process.stderr.read().decode(errors="replace")
                process.stderr.close()
            if "Address already in use" in log:
                raise _PortTaken(log)
            raise RuntimeError(f"redis-server exited with {process.returncode}: {log[-2000:]}")
        with contextlib.closing(self.client(socket_timeout=1, socket_connect_timeout=1)) as client:
            # Ours, not another's that held the port first (it answers while ours, unable
            # to bind, has yet to exit): wait for that exit, then start again elsewhere.
            return bool(client.info("server").get("process_id") == process.pid)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client of this node (protocol 2, short timeouts). Close it after use."""
        # No retries: a wait_for() around a call is the retry, and keeps to its deadline.
        options: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "retry": Retry(NoBackoff(), 0),
        }
        return redis.Redis(HOST, self.port, protocol=2, **(options | kwargs))

    def command(self, *args: Any) -> Any:
        with contextlib.closing(self.client(decode_responses=True)) as client:
            return client.execute_command(*args)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        self.hung = False
        if process is None:
            return
        process.kill()  # as a crash would: no goodbye to clients or to the cluster
        process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self.process is not None


def replica_synced(node: Node) -> bool:
    return bool(node.command("INFO", "replication").get("master_link_status") == "up")


class RedisCluster:
    """Three masters, each with one replica, on random free ports of 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="dwebsocket-cluster-")
        self.nodes: list[Node] = []
        for _ in range(masters * (1 + replicas)):
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
            args += ["--cluster-port", str(free_port())]  # not port + 10000: it may be taken
            self.nodes.append(Node(Path(self._dir.name), args))
        self.replicas = replicas

    @property
    def url(self) -> str:
        """``redis-cluster://`` with every node as a seed, as a deployment would list them."""
        return "redis-cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            create = [REDIS_CLI, "--cluster", "create", *(node.address for node in self.nodes)]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            subprocess.run(
                create,
                check=True,
                capture_output=True,
                timeout=SETUP_TIMEOUT,
            )
            self.wait_ok()
            # A replica that never synchronised cannot take over: wait until all have.
            wait_for(
                "every replica in sync", lambda: all(map(replica_synced, self.replica_nodes()))
            )
        except BaseException:
            self.close()
            raise

    def replica_nodes(self) -> list[Node]:
        return [node for node in self.live() if node.command("ROLE")[0] == "slave"]

    def live(self) -> list[Node]:
        """The nodes that run and answer (not hung)."""
        return [node for node in self.nodes if node.running and not node.hung]

    def node_id(self, node: Node) -> str:
        node_id: str = node.command("CLUSTER", "MYID")
        return node_id

    def by_port(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def slots(self, node: Node | None = None) -> dict[int, tuple[int, int, Node]]:
        """``{start slot: (start, end, master)}`` as ``node`` (or any live node) sees it."""
        asked = node or self.live()[0]
        ranges = {}
        for start, end, master, *_replicas in asked.command("CLUSTER", "SLOTS"):
            ranges[start] = (start, end, self.by_port(int(master[1])))
        return ranges

    def owner(self, slot: int, node: Node | None = None) -> Node:
        """The master serving ``slot`` (as ``node``, or any live node, sees it)."""
        for start, end, master in self.slots(node).values():
            if start <= slot <= end:
                return master
        raise LookupError(f"slot {slot} is not served")

    def masters(self) -> list[Node]:
        return list({master.port: master for _, _, master in self.slots().values()}.values())

    def keyslot(self, key: str) -> int:
        slot: int = self.live()[0].command("CLUSTER", "KEYSLOT", key)
        return slot

    def wait_ok(self, timeout: float = SETUP_TIMEOUT) -> None:
        """Until every live node says the cluster is ok and they all agree on who serves
        every slot."""

        def agreed() -> bool:
            views = []
            for node in self.live():
                info = node.command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                views.append({s: (e, m.port) for s, (_, e, m) in self.slots(node).items()})
            return all(view == views[0] for view in views)

        wait_for("cluster state ok on every node", agreed, timeout)

    def kill(self, master: Node, timeout: float = SETUP_TIMEOUT) -> Node:
        """Kill ``master`` (SIGKILL) and wait until one of its replicas serves its slots;
        return that replica. The cluster then has no replica for those slots."""
        served = [s for s, (_, _, m) in self.slots().items() if m is master]
        master.stop()

        def promoted() -> Node | None:
            owners = {self.owner(slot) for slot in served}
            if len(owners) != 1 or master in owners:
                return None
            return owners.pop()

        replica = wait_for(f"a replica of {master.address} promoted", promoted, timeout)
        self.wait_ok(timeout)
        return replica

    def hang(self, master: Node, timeout: float = SETUP_TIMEOUT) -> Node:
        """Stop ``master`` answering (SIGSTOP: a frozen host, a partition -- its sockets
        stay open, nothing comes back, so clients time out instead of being refused) and
        wait until one of its replicas serves its slots; return that replica.
        :meth:`close` kills it all the same."""
        served = [s for s, (_, _, m) in self.slots().items() if m is master]
        assert master.process is not None
        master.process.send_signal(signal.SIGSTOP)
        master.hung = True

        def promoted() -> Node | None:
            owners = {self.owner(slot) for slot in served}
            if len(owners) != 1 or master in owners:
                return None
            return owners.pop()

        replica = wait_for(f"a replica of the hung {master.address} promoted", promoted, timeout)
        self.wait_ok(timeout)
        return replica

    def move_slot(self, slot: int, target: Node) -> None:
        """Hand ``slot`` (and its keys) from its master to master ``target``: IMPORTING on
        the target, MIGRATING on the source, MIGRATE the keys, then SETSLOT NODE on every
        master -- what ``redis-cli --cluster reshard`` does for each slot it moves."""
        source = self.owner(slot)
        if source is target:
            return
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
        for node in (target, source, *self.masters()):
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self._dir.cleanup()


class RedisSentinels:
    """A master, a replica and three sentinels monitoring them as :attr:`NAME`."""

    NAME = "dws"

    def __init__(self, sentinels: int = 3, front: Callable[[int], int] | None = None) -> None:
        """``front``: given the master's port, the port of something in front of it (a
        proxy) that the sentinels are to monitor, and so name, instead."""
        self._front = front
        self.monitored = 0  # the port the sentinels monitor (the master's, or its front's)
        self._dir = tempfile.TemporaryDirectory(prefix="dwebsocket-sentinel-")
        root = Path(self._dir.name)
        self.master = Node(root, [])
        self.replica = Node(root, ["--replicaof", HOST, str(self.master.port)])
        self.sentinels = [Node(root, [], sentinel=True) for _ in range(sentinels)]

    @property
    def url(self) -> str:
        addresses = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis-sentinel://{addresses}/{self.NAME}"

    def start(self) -> None:
        try:
            self.master.start()
            self.replica.start()
            wait_for("the replica in sync", lambda: replica_synced(self.replica))
            self.monitored = (
                self.master.port if self._front is None else self._front(self.master.port)
            )
            for sentinel in self.sentinels:
                sentinel.start()
                sentinel.command("SENTINEL", "MONITOR", self.NAME, HOST, self.monitored, 2)
                for option, value in [
                    ("down-after-milliseconds", NODE_TIMEOUT_MS),
                    ("failover-timeout", 10_000),
                    ("parallel-syncs", 1),
                ]:
                    sentinel.command("SENTINEL", "SET", self.NAME, option, value)
            # A failover needs the sentinels to know each other (they meet through the
            # master's hello channel, every 2 s) and the replica.
            wait_for("the sentinels know each other and the replica", self._sentinels_ready)
        except BaseException:
            self.close()
            raise

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            if len(sentinel.command("SENTINEL", "SENTINELS", self.NAME)) < len(self.sentinels) - 1:
                return False
            if not sentinel.command("SENTINEL", "REPLICAS", self.NAME):
                return False
        return True

    def current_master(self) -> Node:
        """The node the sentinels (all of them, the first that answers) call master."""
        for sentinel in self.sentinels:
            if sentinel.running:
                _host, port = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
                return (
                    self.master if int(port) in (self.master.port, self.monitored) else self.replica
                )
        raise LookupError("no sentinel running")

    def kill_master(self, timeout: float = SETUP_TIMEOUT) -> Node:
        """Kill the master (SIGKILL) and wait until every sentinel names its replica as the
        master and the replica says it is one; return the new master."""
        old = self.current_master()
        new = self.replica if old is self.master else self.master
        old.stop()

        def promoted() -> bool:
            for sentinel in self.sentinels:
                reply = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
                if int(reply[1]) != new.port and not (
                    new is self.master and int(reply[1]) == self.monitored
                ):
                    return False
            return bool(new.command("ROLE")[0] == "master")

        wait_for(f"{new.address} promoted", promoted, timeout)
        return new

    def close(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def running(setup: RedisCluster | RedisSentinels) -> Iterator[Any]:
    """``setup`` started, then closed; fails on CI (skips elsewhere) without
    redis-server and redis-cli."""
    require()
    setup.start()
    try:
        yield setup
    finally:
        setup.close()
