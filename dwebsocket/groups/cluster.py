"""Subscriptions on a Redis Cluster: one reader per shard, sharded pub/sub.

A group's channel ``dwebsocket:0:{<group>}`` lives in the slot of its hash tag, on the
master that serves that slot; ``SPUBLISH`` reaches only the subscribers of that master.
So a process holds one subscription connection (:class:`ShardSubscriber`, the plain
layer's reader with sharded commands) per master that serves a group it has members in,
subscribed to exactly those groups: it receives nothing it does not deliver.

Every subscription, first or after a reconnection, goes out as one ``SSUBSCRIBE`` per
group, as the plain reader's ``SUBSCRIBE``: Redis refuses a command whole, with one error,
if its ACL user may not use one of its channels, and that refusal must be its group's
alone, not that of the other groups of its slot (one command may name the channels of one
slot only: Redis answers CROSSSLOT otherwise, redis-py#4038). ``SUNSUBSCRIBE``, which no
ACL refuses, goes out as one command per slot.

The topology changes under the subscriptions in three ways, and each ends in
:meth:`ClusterSubscription.refresh` (ask a node for the slots again, move every group
whose master changed to that master's reader, drop readers left with nothing); a call of
the layer's that fails at a master asks for one too (:meth:`ClusterSubscription.shard_failed`),
as a process may have no reader there:

- a master fails: its reader's connection breaks and it asks for a refresh at each
  reconnection attempt (at most a second apart), so its groups move to the replica as
  soon as the cluster has promoted it;
- a slot moves (resharding): the old master ends the subscriptions of that slot itself
  (an ``sunsubscribe`` nobody asked for), and the reader asks for a refresh;
- a subscription is sent to a node that no longer serves the slot: it answers ``MOVED``.

Messages published while a group's subscription moves (during a failover, a second or
two) are lost to this process, as any pub/sub message published while a process is not
subscribed; history (where a group keeps it) lets members recover them. So are those of
a history group while its slot migrates, once its stream has moved: the script runs on
the new owner (``ASK``) and publishes there, while Redis serves the slot's channels from
the old one until the move ends.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import redis
from redis.crc import key_slot
from redis.exceptions import AskError

from dwebsocket.groups.redis import BACKOFF_BASE, Subscriber

if TYPE_CHECKING:
    from dwebsocket.groups.redis import RedisLayer
    from dwebsocket.groups.topology import Cluster

__all__ = ["ClusterSubscription", "ShardSubscriber"]

logger = logging.getLogger("dwebsocket.groups")


class ShardSubscriber(Subscriber):
    """The subscription connection to one master (``address``), for the groups whose
    slot it serves; otherwise the plain layer's reader."""

    SUBSCRIBE, UNSUBSCRIBE = "SSUBSCRIBE", "SUNSUBSCRIBE"
    MESSAGE, SUBSCRIBED, UNSUBSCRIBED = b"smessage", b"ssubscribe", b"sunsubscribe"

    def __init__(self, layer: RedisLayer, cluster: ClusterSubscription, address: str) -> None:
        super().__init__(layer, address)
        self.cluster = cluster

    def wants(self, group: str) -> bool:
        return group in self.layer.registry and self.cluster.routed(group) == self.address

    def unsubscribe(self, connection: redis.Connection, groups: set[str]) -> None:
        for channels in self._by_slot(groups).values():
            connection.send_command(self.UNSUBSCRIBE, *channels, check_health=False)  # type: ignore[no-untyped-call]

    def _by_slot(self, groups: set[str]) -> dict[int, list[bytes]]:
        slots: dict[int, list[bytes]] = collections.defaultdict(list)
        for group in groups:
            channel = self.layer.channel(group)
            slots[key_slot(channel)].append(channel)
        return slots

    def refused(self, error: redis.ResponseError) -> None:
        """``MOVED``: a slot of ours is served elsewhere now. Forget the groups of that
        slot here and have the cluster's map refreshed: they move to their new master."""
        if not isinstance(error, AskError):  # MovedError is one too
            super().refused(error)  # a channel the ACL refuses: those groups alone
            return
        slot = error.slot_id
        head = self._subscribing[0] if self._subscribing else ()
        if head and key_slot(self.layer.channel(head[0])) == slot:
            self._subscribing.popleft()  # the SSUBSCRIBE it answers
        moved = {g for g in self._requested if key_slot(self.layer.channel(g)) == slot}
        if not moved:
            return  # another group of that slot's MOVED: forgotten and refreshed for already
        self._requested -= moved
        for group in moved:
            self._in_flight.pop(group, None)
        self.subscribed = self.subscribed - moved
        self.cluster.refresh()

    def dropped(self, group: str) -> None:
        self.cluster.refresh()

    def _lost(self) -> None:
        super()._lost()
        if not self._stopping:
            self.cluster.refresh()


class _Subscribed:
    """``group in subscription.subscribed``: whether the reader of the group's master
    has its subscription confirmed."""

    def __init__(self, cluster: ClusterSubscription) -> None:
        self.cluster = cluster

    def __contains__(self, group: object) -> bool:
        if not isinstance(group, str):
            return False
        shard = self.cluster.shard_of(group)
        return shard is not None and group in shard.subscribed


class ClusterSubscription:
    """Every subscription of a process on a Redis Cluster: a :class:`ShardSubscriber` per
    master in use. The layer talks to it as to the plain layer's one reader."""

    def __init__(self, layer: RedisLayer, topology: Cluster) -> None:
        self.layer = layer
        self.topology = topology
        self.subscribed = _Subscribed(self)
        self._lock = threading.Lock()  # guards the two maps; never held over I/O
        self._shards: dict[str, ShardSubscriber] = {}
        self._routes: dict[str, str] = {}  # group -> master its subscription belongs to
        self._unrouted: set[str] = set()  # groups with members here and no master known
        self._retrying = False
        #: A refresh failed (no seed answered): groups a reader dropped for it (a moved
        #: slot) wait for the next one, which :meth:`_retry` makes.
        self._owed = False
        self._refresh_lock = threading.Lock()
        self._asked = self._served = 0  # refresh() calls made, and answered by a run since
        self._relearning = False  # a refresh for a failed call runs (shard_failed)
        self._relearner: threading.Thread | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        with self._lock:
            shards = list(self._shards.values())
        return bool(shards) and all(shard.connected for shard in shards)

    @property
    def down(self) -> bool:
        with self._lock:
            shards = list(self._shards.values())
        return any(shard.down for shard in shards)

    def start(self) -> None:
        """Readers start with their first group."""

    def down_besides(self, address: str | None) -> bool:
        """Whether the reader of a master other than ``address`` is down (failed to
        connect, not connected again yet): the outage goes on while one is."""
        with self._lock:
            shards = [shard for at, shard in self._shards.items() if at != address]
        return any(shard.down for shard in shards)

    def routed(self, group: str) -> str | None:
        """The master whose reader carries ``group`` now (None: no reader does)."""
        return self._routes.get(group)

    def shard_of(self, group: str) -> ShardSubscriber | None:
        address = self._routes.get(group)
        return self._shards.get(address) if address is not None else None

    def request(self, group: str, wait: float | None = None) -> None:
        """Have the reader of ``group``'s master subscribe to it if it has members here,
        unsubscribe otherwise (as :meth:`.redis.Subscriber.request`, ``wait`` included).
        While no node of the cluster answers, nothing waits: the group is routed when
        one does (:meth:`_retry`)."""
        address = self.topology.owner(key_slot(self.layer.channel(group)))
        wanted = group in self.layer.registry
        with self._lock:
            if self._stopping:
                return
            previous = self._routes.get(group)
            if wanted and address is not None:
                self._routes[group] = address
                self._unrouted.discard(group)
            else:
                self._routes.pop(group, None)
                if wanted:
                    self._unrouted.add(group)
                else:
                    self._unrouted.discard(group)
            moved = previous is not None and previous != self._routes.get(group)
            old = self._shards.get(previous) if moved and previous is not None else None
            shard = self._shard(address) if wanted and address is not None else None
            retry = bool(self._unrouted) and not self._retrying
            self._retrying = self._retrying or retry
        if old is not None:
            old.request(group)  # no longer its: it unsubscribes
        if shard is not None:
            shard.request(group, wait)
        if retry:
            self.layer.report_down(redis.ConnectionError("no node of the cluster answers"))
            self._start_retry()

    def _start_retry(self) -> None:
        threading.Thread(target=self._retry, name="dwebsocket-groups-cluster", daemon=True).start()

    def _retry(self) -> None:
        """While groups with members here have no master known, or the last refresh
        failed, refresh the slots at growing intervals (to the layer's backoff cap)."""
        delay = BACKOFF_BASE
        try:
            while not self._stopping and (self._unrouted or self._owed):
                time.sleep(delay / 2 + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.layer.backoff_cap)
                self.refresh()
        finally:
            with self._lock:
                self._retrying = False
                again = (bool(self._unrouted) or self._owed) and not self._stopping
            if again:  # a group came in as this loop ended
                self.refresh()

    def shard_failed(self) -> None:
        """A call to a master failed (the layer's send, command or presence write): learn
        the slots again, in the background. A failover the readers see moves the map too,
        but a process with no member in that master's groups has no reader there, and one
        that has notices a master that hangs only at its keepalive: without this, its sends
        would go to a master that hangs (timeouts, not refusals, which redis-py follows by
        itself) for as long as it hangs, after the cluster promoted its replica. One such
        refresh at a time: the sends of an outage fail together, and each failure holds
        that master's sends back a while (``RedisLayer._publish_failed``), so another
        comes after it if the master has not been replaced yet."""
        with self._lock:
            if self._relearning or self._stopping:
                return
            self._relearning = True
            thread = self._relearner = threading.Thread(
                target=self._relearn, name="dwebsocket-groups-cluster", daemon=True
            )
        thread.start()

    def _relearn(self) -> None:
        try:
            self.refresh()
        finally:
            with self._lock:
                self._relearning = False

    def _shard(self, address: str) -> ShardSubscriber:
        shard = self._shards.get(address)
        if shard is None:
            shard = self._shards[address] = ShardSubscriber(self.layer, self, address)
            shard.start()
        return shard

    def refresh(self) -> None:
        """Learn the slots again and move every group whose master changed (called by the
        readers, which see the changes). Blocks up to the socket timeouts. A refresh
        already running in another thread is not enough: it may have read the map before
        the change this one is for (a reader that just dropped a moved slot's groups, which
        nothing else would subscribe again). So this one waits for it, then runs, unless
        a refresh that started after this call has run meanwhile."""
        with self._lock:
            self._asked += 1
            ticket = self._asked
        with self._refresh_lock:
            with self._lock:
                if self._stopping or self._served >= ticket:
                    return
                self._served = self._asked  # every call so far: this run reads the map after
            try:
                self.topology.refresh()
            except (redis.RedisError, OSError) as exc:
                logger.debug("Redis Cluster slots not refreshed: %s", exc)
                with self._lock:
                    self._owed = True
                    retry = not self._retrying and not self._stopping
                    self._retrying = self._retrying or retry
                if retry:
                    self._start_retry()
                return
            with self._lock:
                self._owed = False
            for group in self.layer.registry.groups():
                self.request(group)
            with self._lock:
                used = set(self._routes.values())
                idle = [
                    self._shards.pop(address)
                    for address in list(self._shards)
                    if address not in used
                ]
        for shard in idle:  # a master that serves none of our groups any more (or died)
            shard.stop()
        if idle and self.layer.outage:
            # A reader that was down is gone: the outage may have waited only for it.
            self.layer._shard_up(None)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            shards = list(self._shards.values())
            self._shards.clear()
        for shard in shards:
            shard.stop()
        relearner = self._relearner
        if relearner is not None and relearner is not threading.current_thread():
            relearner.join(self.layer.timeout + 1)  # it may be asking a seed: bounded
