"""Where the Redis layer finds Redis: one server, a master Sentinels watch, or a Cluster.

``WEBSOCKET_GROUPS_URL`` picks one (:func:`topology_for`):

``redis://``, ``rediss://``, ``unix://`` (:class:`Server`)
    One server, as redis-py reads the URL.
``redis-sentinel://[user:password@]host:port[,host:port...]/master_name`` (:class:`Sentinels`)
    The master that the Sentinels name, asked again at every new connection: after a
    failover the layer's connections break (Sentinel closes them on the demoted master, or
    the master is gone) and reconnect to the promoted replica. Options as query
    parameters: ``db``, ``socket_timeout``, ``socket_connect_timeout``, and
    ``sentinel_username``/``sentinel_password`` if the Sentinels require their own.
``redis-cluster://[user:password@]host:port[,host:port...]`` (:class:`Cluster`)
    A Redis Cluster, 7.0 or later: sharded pub/sub. A group's channel carries the group
    name as a hash tag (``dwebsocket:0:{room}``), so the channel and every key of the
    group (history, presence) live in one slot on one shard; messages are published with
    ``SPUBLISH`` to that shard only, and each process holds one subscription connection
    per shard that serves a group it has members in (:mod:`.cluster`). The hosts are
    seeds: the client learns the others from them. Options: ``socket_timeout``,
    ``socket_connect_timeout`` (no ``ssl``: refused, as is any option redis-py does not
    know on every scheme). A cluster has database 0 only.

A topology gives the layer what differs between them: the client that publishes (and runs
scripts), the channel of a group and the command that publishes to it, the connections
the subscriptions use, and how those are spread (:meth:`Topology.subscription`). The layer
(:mod:`.redis`) does the rest the same way for all three.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY, ClusterNode
from redis.commands.core import Script
from redis.connection import parse_url, to_bool
from redis.crc import key_slot
from redis.exceptions import AskError, NoScriptError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from dwebsocket.conf import MAX_SECONDS

if TYPE_CHECKING:
    from dwebsocket.groups.redis import RedisLayer, Subscriber

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "Cluster",
    "Sentinels",
    "Server",
    "topology_for",
    "url_problem",
]

CLUSTER_SCHEMES = ("redis-cluster",)
SENTINEL_SCHEMES = ("redis-sentinel",)
#: Longest pause between two reconnection attempts of a subscription where a failover is
#: part of the design (Sentinel, Cluster): a replica takes over within seconds, and the
#: subscriptions should follow as soon as it has.
FAILOVER_BACKOFF_CAP = 1.0
#: What a ``redis-sentinel://`` URL takes besides what its connections take.
SENTINEL_OPTIONS = ("ssl", "sentinel_username", "sentinel_password")
#: What a ``redis-cluster://`` URL takes (the last two from the URL's user part).
CLUSTER_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "max_connections",
    "timeout",
    "username",
    "password",
)


def _check_options(kwargs: dict[str, Any], *takers: type) -> None:
    """Raise ValueError if ``kwargs`` (a URL's) has an option none of ``takers`` (a pool
    class, a connection class) takes: redis-py passes such an option on to each new
    connection, which then raises TypeError (every send a 500, the reader a traceback
    at each attempt)."""
    known = {"connection_class"}
    for taker in takers:
        for klass in taker.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None and klass is not object:
                known.update(inspect.signature(init).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"redis-py takes no option {', '.join(unknown)}")


#: The URL options redis-py reads as seconds and hands as they are to
#: ``socket.settimeout()`` or the pool's wait, which raise ValueError (negative, NaN) or
#: OverflowError (past what the platform waits) at each new connection.
_SECONDS = ("socket_timeout", "socket_connect_timeout", "timeout")
#: Those of them that 0 makes a socket non-blocking: every connect (``EINPROGRESS``) or
#: every read not answered at once (``EAGAIN``) fails, an outage that never ends.
_ABOVE_ZERO = ("socket_timeout", "socket_connect_timeout")


def _check_values(kwargs: dict[str, Any]) -> None:
    """Raise ValueError if an option of ``kwargs`` (a URL's, as redis-py reads them) has a
    value redis-py would fail on at each connection rather than at once: the check would
    pass, and every send raise it."""
    for name in _SECONDS:
        value = kwargs.get(name)
        if value is None:
            continue
        if name in _ABOVE_ZERO and not 0 < value <= MAX_SECONDS:  # NaN too
            raise ValueError(
                f"{name} must be a number of seconds above 0 and at most {MAX_SECONDS} "
                f"(a week), not {value!r}"
            )
        if not 0 <= value <= MAX_SECONDS:
            raise ValueError(
                f"{name} must be a number of seconds from 0 to {MAX_SECONDS} (a week), "
                f"not {value!r}"
            )
    connections = kwargs.get("max_connections")
    if connections is not None and connections < 0:
        raise ValueError(f"max_connections must be 0 or more, not {connections!r}")


def _subscriber_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection arguments for a subscription connection, from a pool's."""
    kwargs = dict(kwargs)
    # RESP2: subscription replies are plain arrays (redis-py 8 defaults to RESP3, whose
    # push messages the reader does not need). Maintenance notifications need RESP3.
    kwargs.update(protocol=2, retry=Retry(NoBackoff(), 0))
    kwargs.pop("maint_notifications_config", None)
    kwargs.pop("maint_notifications_pool_handler", None)
    return kwargs


class Server:
    """One Redis server (``redis://``, ``rediss://``, ``unix://``)."""

    publish_command = "PUBLISH"
    backoff_cap: float | None = None  # the layer's own

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.parse(url)
        self.pool = redis.BlockingConnectionPool.from_url(url, **options)
        self.client: Any = redis.Redis(connection_pool=self.pool)
        kwargs = self.pool.connection_kwargs
        self.socket_timeout: float | None = kwargs.get("socket_timeout")
        self.db = int(kwargs.get("db", 0))

    @staticmethod
    def parse(url: str) -> None:
        """Read ``url`` as :meth:`__init__` does, building nothing; ``ValueError`` saying
        what is wrong with it."""
        parts = urlsplit(url)
        db = parts.path.strip("/")
        if parts.scheme.lower() != "unix" and db and not (db.isascii() and db.isdigit()):
            # redis-py would quietly use database 0 instead.
            raise ValueError(f"the database after the host is a number, not {db!r}")
        kwargs = parse_url(url)  # type: ignore[no-untyped-call]
        _check_options(
            kwargs, redis.BlockingConnectionPool, kwargs.get("connection_class", redis.Connection)
        )
        _check_values(kwargs)

    def channel(self, prefix: str, group: str) -> bytes:
        return (prefix + group).encode()

    def group(self, prefix: str, channel: bytes) -> str | None:
        name = channel.decode(errors="replace")
        return name[len(prefix) :] if name.startswith(prefix) else None

    def publish(self, channel: bytes, data: bytes) -> None:
        self.client.publish(channel, data)

    def shard(self, channel: bytes) -> str | None:
        """Which shard serves ``channel`` (one failing shard does not stop the others):
        None, there is one."""
        return None

    def probe(self, channel: bytes) -> bool:
        """Whether the shard of ``channel`` answers a PING now, through the publishing
        pool (a connection a failed send broke is connected again); bounded by the socket
        timeouts, no retry."""
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def serves(self, shard: str | None) -> bool:
        """Whether ``shard`` (what :meth:`shard` returned) still serves slots of this
        process's map: always, but on a Cluster."""
        return True

    def make_connection(self, address: str | None = None) -> redis.Connection:
        """A new, unconnected connection for a subscription."""
        connection: redis.Connection = self.pool.connection_class(
            **_subscriber_kwargs(self.pool.connection_kwargs)
        )
        return connection

    def subscription(self, layer: RedisLayer) -> Subscriber:
        from dwebsocket.groups.redis import Subscriber

        return Subscriber(layer)

    def close(self) -> None:
        self.pool.disconnect()


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool that waits (up to ``timeout``) for a free connection, as the
    layer's pool does for one server, instead of failing at ``max_connections``."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        """When the master moves, redis-py's Sentinel code disconnects the idle
        connections (``inuse_connections=False``); ``BlockingConnectionPool.disconnect``
        took no argument before redis-py 7, and the TypeError ended every failover: this
        disconnects them all there (those in use were talking to the old master)."""
        if _DISCONNECT_CHOOSES:
            super().disconnect(inuse_connections)
        else:
            super().disconnect()  # type: ignore[call-arg,unused-ignore]


#: Whether ``BlockingConnectionPool.disconnect`` takes ``inuse_connections`` (redis-py 7+).
_DISCONNECT_CHOOSES = (
    "inuse_connections" in inspect.signature(redis.BlockingConnectionPool.disconnect).parameters
)


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _parse(url: str, schemes: tuple[str, ...]) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``(hosts, path, connection kwargs)`` of a multi-host URL; the kwargs as redis-py
    reads the same options from a ``redis://`` URL. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"the scheme must be {' or '.join(schemes)}")
    hosts = _hosts(parts.netloc)
    userinfo = parts.netloc.rpartition("@")[0]
    query = dict(parse_qsl(parts.query))
    extra: dict[str, Any] = {
        key: query.pop(key) for key in ("sentinel_username", "sentinel_password") if key in query
    }
    single = (
        "redis://" + (userinfo + "@" if userinfo else "") + f"{quote(hosts[0][0])}:{hosts[0][1]}"
    )
    if query:
        single += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
    kwargs: dict[str, Any] = parse_url(single)  # type: ignore[no-untyped-call]
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    _check_values(kwargs)
    kwargs.update(extra)
    return hosts, parts.path.strip("/"), kwargs


class Sentinels(Server):
    """The master of ``master_name`` as the Sentinels at the URL's hosts say
    (``redis-sentinel://host:port[,host:port...]/master_name``)."""

    backoff_cap = FAILOVER_BACKOFF_CAP

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        hosts, path, kwargs = self.read(url)
        self.service = path
        sentinel_kwargs = {
            "socket_timeout": kwargs.get("socket_timeout", options["socket_timeout"]),
            "socket_connect_timeout": kwargs.get(
                "socket_connect_timeout", options["socket_connect_timeout"]
            ),
            "username": kwargs.pop("sentinel_username", None),
            "password": kwargs.pop("sentinel_password", None),
            "protocol": 2,
        }
        self.sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)
        self.pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            self.service, self.sentinel, **(options | kwargs)
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.socket_timeout = self.pool.connection_kwargs.get("socket_timeout")
        self.db = int(self.pool.connection_kwargs.get("db", 0))

    @staticmethod
    def read(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
        """``(hosts, master name, connection kwargs)``; ``ValueError`` saying what is
        wrong with ``url``."""
        hosts, path, kwargs = _parse(url, SENTINEL_SCHEMES)
        if not path or "/" in path:
            raise ValueError("name the master after the hosts: redis-sentinel://host:port/name")
        path = unquote(path)  # as redis-py reads a URL's path (and its password)
        if "ssl" in kwargs:
            # parse_url leaves it a str, which the Sentinel pool takes for true: "false" too.
            kwargs["ssl"] = bool(to_bool(kwargs["ssl"]))  # type: ignore[no-untyped-call]
        connection = (
            SentinelManagedSSLConnection if kwargs.get("ssl") else SentinelManagedConnection
        )
        _check_options(
            {k: v for k, v in kwargs.items() if k not in SENTINEL_OPTIONS},
            _BlockingSentinelPool,
            connection,
        )
        return hosts, path, kwargs

    @staticmethod
    def parse(url: str) -> None:
        Sentinels.read(url)

    def close(self) -> None:
        super().close()
        for sentinel in self.sentinel.sentinels:
            sentinel.close()


class Cluster(Server):
    """A Redis Cluster (``redis-cluster://host:port[,host:port...]``), sharded pub/sub."""

    publish_command = "SPUBLISH"
    backoff_cap = FAILOVER_BACKOFF_CAP

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        hosts, kwargs = self.read(url)
        settings = options | kwargs
        self.kwargs = {
            key: settings[key]
            for key in ("socket_timeout", "socket_connect_timeout", "username", "password")
            if settings.get(key) is not None
        }
        self.client = LazyCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],  # type: ignore[no-untyped-call]
            # The slots a failed shard served fail alone; the others go on.
            require_full_coverage=False,
            # Keep asking the URL's hosts when the map is lost, not only the nodes last
            # seen: a cluster rebuilt on other addresses is found again.
            dynamic_startup_nodes=False,
            max_connections=settings["max_connections"],
            # Senders past max_connections wait their turn (up to ``timeout``), as the
            # other topologies' pools have them do; the default pool refuses them at once.
            # (The timeout bound here: older redis-py drops a ``timeout`` argument.)
            connection_pool_class=functools.partial(
                redis.BlockingConnectionPool, timeout=settings["timeout"]
            ),
            # The first seed as a URL too (``RedisCluster.from_url``'s way): redis-py
            # before 8.2 makes the nodes' pools of connection_pool_class only for a
            # client made from a URL, and plain pools otherwise, which refused the 33rd
            # sender to a master at once ("Too many connections": an outage).
            url=_seed_url(*hosts[0]),
            # One attempt, as with one server: redis-py retries a timed-out command three
            # times, learning the slots again and sleeping in between, so that one send to
            # a master that hangs held its view some 15 s at a socket timeout of 1 s.
            # MOVED and ASK are followed all the same; the next call learns the slots.
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            **self.kwargs,
        )
        self.socket_timeout = self.kwargs.get("socket_timeout")
        self.db = 0

    @staticmethod
    def read(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """``(seeds, connection kwargs)``; ``ValueError`` saying what is wrong with ``url``."""
        hosts, path, kwargs = _parse(url, CLUSTER_SCHEMES)
        if path not in ("", "0") or kwargs.get("db", 0) != 0:
            raise ValueError("a Redis Cluster has database 0 only")
        kwargs.pop("db", None)
        unknown = sorted(set(kwargs) - set(CLUSTER_OPTIONS))
        if unknown:
            # The client would drop them without a word (ssl=true: plain text).
            raise ValueError(
                f"a Redis Cluster URL takes no option {', '.join(unknown)} "
                f"(only {', '.join(CLUSTER_OPTIONS[:-2])})"
            )
        return hosts, kwargs

    @staticmethod
    def parse(url: str) -> None:
        Cluster.read(url)

    def channel(self, prefix: str, group: str) -> bytes:
        # The group is the hash tag: its channel and its keys share one slot.
        return f"{prefix}{{{group}}}".encode()

    def group(self, prefix: str, channel: bytes) -> str | None:
        name = channel.decode(errors="replace")
        if not (name.startswith(prefix + "{") and name.endswith("}")):
            return None
        return name[len(prefix) + 1 : -1]

    def publish(self, channel: bytes, data: bytes) -> None:
        try:
            client = self.client.get()
            # Straight to the master of the channel's slot, as this process knows it: a fifth
            # less per call than RedisCluster.spublish, whose routing is for any command
            # (bench/FINDINGS.md, section 12). A redirection (the slot moved) or a dead
            # node goes the general way, which follows it and learns the slots again.
            server = _master(client, channel)
            if server is not None and _spublish_at(server, channel, data):
                return
            client.spublish(channel, data)
        except RedisClusterException as exc:  # not a RedisError: say what it means here
            raise redis.ConnectionError(str(exc)) from exc

    def shard(self, channel: bytes) -> str | None:
        return self.owner(key_slot(channel))

    def probe(self, channel: bytes) -> bool:
        # The master of the channel's slot as this process knows it -- the node the direct
        # path of publish() wrote to -- through its own pool (redis-py retries nothing
        # there). None known: no probe, the failure stands.
        try:
            server = _master(self.client.get(), channel)
            return server is not None and bool(server.ping())
        except (redis.RedisError, RedisClusterException, OSError, IndexError, KeyError):
            return False

    def owner(self, slot: int) -> str | None:
        """``host:port`` of the master serving ``slot`` as this process last learned it,
        or None if it knows none (no node answered yet, or none serves the slot)."""
        try:
            node = self.client.get().nodes_manager.get_node_from_slot(slot)
        except (redis.RedisError, RedisClusterException, OSError, IndexError, KeyError):
            return None
        return str(node.name) if node is not None else None

    def serves(self, shard: str | None) -> bool:
        """Whether ``shard`` (a ``host:port``) is a master in the slots as this process
        last learned them; not once a failover or resharding replaced it. None (no master
        known for a slot) and a map not learned yet count as serving: nothing says not."""
        if shard is None:
            return True
        client = self.client.made  # never made here: this only reads the map
        if client is None:
            return True
        node = client.nodes_manager.get_node(node_name=shard)
        return node is not None and node.server_type == PRIMARY

    def refresh(self) -> None:
        """Ask the cluster again which node serves which slot (blocks up to the socket
        timeouts; raises ``redis.RedisError`` if no node answers)."""
        try:
            self.client.get(retry_now=True).nodes_manager.initialize()
        except RedisClusterException as exc:
            raise redis.ConnectionError(str(exc)) from exc

    def make_connection(self, address: str | None = None) -> redis.Connection:
        assert address is not None
        host, _, port = address.rpartition(":")
        connection: redis.Connection = redis.Connection(  # type: ignore[no-untyped-call]
            host=host, port=int(port), **_subscriber_kwargs(self.kwargs)
        )
        return connection

    def subscription(self, layer: RedisLayer) -> Any:
        from dwebsocket.groups.cluster import ClusterSubscription

        return ClusterSubscription(layer, self)

    def close(self) -> None:
        self.client.close()


#: redis-py 5's pools want the command named when handing out a connection; 6 and later
#: warn if it is.
_NAMES_COMMAND = (
    inspect.signature(redis.BlockingConnectionPool.get_connection)
    .parameters["command_name"]
    .default
    is inspect.Parameter.empty
)


def _master(client: Any, channel: bytes) -> redis.Redis | None:
    """The client of the master serving ``channel``'s slot, as ``client`` (a
    ``RedisCluster``) last learned the slots; None if it knows none."""
    node = client.nodes_manager.get_node_from_slot(key_slot(channel))
    return node.redis_connection if node is not None else None


def _spublish_at(server: redis.Redis, channel: bytes, data: bytes) -> bool:
    """SPUBLISH ``data`` on ``channel`` at ``server`` (a master's client); False if it did
    not run there: the master could not be reached before the command was written whole,
    or answered that the slot moved. Raises if it may have run: a command whose reply was
    lost (the connection broke after Redis got it) is never sent again, which the general
    way would do (the message published twice)."""
    pool = server.connection_pool
    try:
        connection = pool.get_connection(*(("SPUBLISH",) if _NAMES_COMMAND else ()))
    except redis.ConnectionError:  # a dead node: the general way finds its heir
        return False
    try:
        try:
            connection.send_command("SPUBLISH", channel, data)  # type: ignore[no-untyped-call]
        except redis.ConnectionError:  # not written whole: it did not run
            return False
        try:
            connection.read_response()
        except AskError:  # MOVED too (a subclass): not run there
            return False
        return True
    finally:
        pool.release(connection)


class _ShardScript(Script):
    """A script that a master which does not know it (a replica promoted, a node
    restarted: scripts are not replicated) is sent whole, by ``EVAL`` to the node of its
    keys, which keeps it. redis-py's ``Script`` sends ``SCRIPT LOAD`` to every master
    instead: one that is down or hangs failed the call on a healthy shard."""

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        keys, args = keys or [], args or []
        if client is None:
            client = self.registered_client
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.script, len(keys), *keys, *args)


def _seed_url(host: str, port: int) -> str:
    """``redis://host:port``, an IPv6 address in brackets."""
    return f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}"


class LazyCluster:
    """A ``redis.RedisCluster`` made at first use, not at construction: making one asks a
    seed for the slots, and a layer must be made (and joins return) while the cluster is
    unreachable. Scripts registered through it bind to it, not to the client. Its calls
    raise ``redis.ConnectionError`` for redis-py's ``RedisClusterException``."""

    #: Seconds between two attempts to make the client while no seed answers.
    RETRY = 1.0

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._client: redis.RedisCluster | None = None
        self._lock = threading.Lock()
        self._failed_at = -math.inf
        self._error: Exception | None = None

    def get(self, *, retry_now: bool = False) -> redis.RedisCluster:
        """The client; makes it if need be (blocks up to the connect timeouts). Raises
        ``redis.RedisError`` if no seed answers (without trying again for
        :data:`RETRY` seconds, unless ``retry_now``)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if not retry_now and time.monotonic() - self._failed_at < self.RETRY:
                    assert self._error is not None
                    raise redis.ConnectionError(str(self._error))
                try:
                    self._client = self._make()
                except (redis.RedisError, RedisClusterException, OSError) as exc:
                    self._failed_at, self._error = time.monotonic(), exc
                    raise redis.ConnectionError(f"no seed of the cluster answers: {exc}") from exc
            return self._client

    @property
    def made(self) -> redis.RedisCluster | None:
        """The client if it was made, else None (nothing is tried)."""
        return self._client

    def _make(self) -> redis.RedisCluster:
        """Make the client. Making one asks the default node (the master of slot 0) for
        ``COMMAND``; redis-py asks another master if that one fails, as many times as its
        retry allows -- none here, so a dead master of slot 0 (a shard down whole, or not
        failed over yet) failed every process made meanwhile, for every shard. The retry
        allows one attempt per seed while the client is made, none after: the same
        object, which redis-py 5 hands to the nodes' connections and later versions keep
        for the cluster's own attempts."""
        retry = self._kwargs.get("retry")
        if retry is None:
            return redis.RedisCluster(**self._kwargs)
        retries = retry._retries
        retry._retries = max(retries, len(self._kwargs["startup_nodes"]))
        try:
            return redis.RedisCluster(**self._kwargs)
        finally:
            retry._retries = retries

    def register_script(self, script: str) -> Script:
        # As bytes: a Script of a str asks its client for an encoder, which would make
        # (connect) the client here.
        return _ShardScript(self, script.encode())  # type: ignore[arg-type]  # duck-typed

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.get(), name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            # No node answers, or none serves the slot: RedisClusterException, which is
            # not a RedisError. Raised as what it means here, as publish() does, so that
            # the layer takes it for an outage (else a view's 500).
            try:
                return attribute(*args, **kwargs)
            except RedisClusterException as exc:
                raise redis.ConnectionError(str(exc)) from exc

        return call

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _kind(url: str) -> type[Server]:
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return Cluster
    if scheme in SENTINEL_SCHEMES:
        return Sentinels
    return Server


def url_problem(url: str) -> str | None:
    """What :func:`topology_for` would find wrong with ``url`` (a sentence), or None.
    Builds nothing, connects to nothing."""
    try:
        _kind(url).parse(url)
    except ValueError as exc:
        return str(exc)
    return None


def topology_for(url: str, options: dict[str, Any]) -> Server:
    """The topology ``url`` names, built with the layer's connection ``options`` (the URL's
    own win). Connects to nothing, except a Cluster, whose client asks a seed for the
    slots (``redis.RedisError`` if none answers). Raises ``ValueError`` for a URL it
    cannot read."""
    return _kind(url)(url, options)
