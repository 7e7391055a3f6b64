"""The Redis layer (``redis://``): group messages cross processes and machines via pub/sub.

One subscription connection per process, owned by one reader (a thread; a greenlet or green
thread when gevent or eventlet has monkey-patched ``threading``). It subscribes to one
channel per group that has local members: on the first local join, and unsubscribes after
the last leave. ``send`` publishes through a small connection pool; every process,
including the sender's own, hands the message to its members when it comes back through
its subscription, so all members everywhere see the messages of a group in the same order.

Where Redis is -- one server, the master Sentinels name (``redis-sentinel://``), a Redis
Cluster (``redis-cluster://``) -- is a connection strategy (:mod:`.topology`): the same
layer and reader serve all three. On a Cluster a process has one such reader per shard
it uses, with sharded pub/sub (:mod:`.cluster`).

Wire format of a published message (all integers big-endian)::

    kind   1 byte   1 = text (UTF-8 payload), 2 = binary -- the RFC 6455 opcodes;
                    3 = a command to the members (JSON payload, :mod:`.control`);
                    4 = a presence event for the listeners (JSON text, :mod:`.presence`);
                    5 = text, 6 = binary, of a group that keeps history (see below)
    origin 8 bytes  random id of the sending process
    seq    8 bytes  the sender's message counter
    [kinds 5 and 6 only: length 1 byte, position "epoch:offset" in ASCII]
    payload

A process ignores, with one debug log, a kind it does not know (``groups/__init__`` lists
who allocated which), so that processes of two versions can share a Redis during a deploy.

History (groups named in ``WEBSOCKET_GROUPS_HISTORY``): each group has one stream,
``dwebsocket:<db>:{<group>}:history``, its group name in a hash tag (for Redis Cluster:
any other key of the group will share its slot). An entry's id is ``<epoch>-<offset>``:
the epoch is the Redis time (us) when the stream was made, the offset counts the group's
messages from 1 (``XADD <epoch>-*`` numbers them); its fields are ``k`` (kind), ``d``
(payload), ``t`` (Redis time, ms). One Lua script (``PUBLISH_SCRIPT``) appends the entry
(trimming the stream to about ``size``), sets the stream to expire ``ttl`` after it and
publishes the message with its position, so what the history holds and what subscribers
receive never disagree, and they come in one order. Another (``READ_SCRIPT``) reads the
epoch, the last offset and the entries after an offset at once (a page: up to a count and
about ``PAGE_BYTES``). A stream that is gone
(flushed, restarted without persistence, expired after ``ttl`` of silence, evicted) comes
back with a new epoch, made by the next message or the next join (an empty stream, at
offset 0). A sender still in an epoch newer than the stream's (the stream was made again
by a clock behind the one that named it) appends in the stream's epoch, as one in an older
epoch does: an epoch never goes on after its stream was lost, so no position of it ever
names another message. ``size`` and ``ttl`` are enforced exactly when reading.

Commands (kind 3, :mod:`.control`) are also kept ``control.MEMORY`` seconds in a sorted set
per group, ``dwebsocket:<db>:{<group>}:control``, scored by Redis time, written before the
command is published (``REMEMBER_SCRIPT``): a member that subscribed too late for one
finds it there (``recent_controls``).

Faults: no call into Redis waits longer than ``socket_timeout`` / ``socket_connect_timeout``
(2 s unless the URL says otherwise). When Redis is unreachable, ``send`` delivers to this
process's members, drops the rest and logs one WARNING per outage. No message is sent
twice: one whose reply was lost (the connection broke, or timed out, after Redis ran it)
fails like one that never reached Redis, though the other processes may have it. A
message whose connection broke (not timed out) is no outage if Redis answers a PING sent
at once to its shard (``RedisLayer._send_failed``): that connection was closed alone, and
the next sends go out; one WARNING per process says so. A command (kind 3) whose
connection broke is sent once more if that PING is answered: it may run twice, not be
lost (``_again_if_broken``); so are a presence write, which publishes no second event,
and a presence heartbeat, but a sync: that one is no outage and not sent again (it would
publish its decided events twice); the next heartbeat syncs.
The reader reconnects with capped exponential backoff (0.1 s doubling to 5 s, jittered; a
join cuts it short, see ``RedisLayer.join``) and subscribes again to every current group.
A subscription Redis closed after answering on it (``CLIENT KILL``, an output buffer
limit) is no outage unless the next attempt fails (``Subscriber._closed``).
Pub/sub keeps no history: what was published while a process was disconnected never
reaches that process's members. A Redis that answers but refuses to write (``REFUSED``)
is no outage: a history group's message is published without being kept, a command
without being remembered. Nor is a call Redis refuses for what one group's keys hold
(``WRONGTYPE``: ``_per_call``): the same, for that group alone, with one ERROR; nor one
an ACL refuses for a group's keys or channel (``NOPERM``, which for a command is
``REFUSED``): the same, and a group whose channel is refused has its messages reach this
process's members only (a history group keeps none of them: ``PUBLISH_SCRIPT`` takes back
the entry whose ``PUBLISH`` was refused).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import random
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from dwebsocket.exceptions import GroupsUnavailable, InvalidSetting
from dwebsocket.groups import control, redact
from dwebsocket.groups.history import PAGE_BYTES, Item, Items, Page, Policy, Position, policy
from dwebsocket.groups.memory import Member, Registry, fan_out, fan_out_items
from dwebsocket.groups.presence import (
    EventQueue,
    Local,
    Mirror,
    Present,
    deliver_event,
    event_prefix,
    event_suffix,
)
from dwebsocket.typing import BytesLike, Message

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImproperlyConfigured(
        "WEBSOCKET_GROUPS_URL names Redis but redis-py is not installed: "
        "pip install 'dwebsocket[redis]'"
    ) from exc
try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - redis-py < 7
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

__all__ = ["RedisLayer", "decode", "encode"]

logger = logging.getLogger("dwebsocket.groups")

TEXT = 1
BINARY = 2
CONTROL = 3
PRESENCE_EVENT = 4
TEXT_AT = 5
BINARY_AT = 6
HEADER = struct.Struct("!B8sQ")
#: The ``seq`` of a presence event its sender's listeners had already (see
#: ``HEARTBEAT_SCRIPT``): ``itertools.count(1)`` never makes it.
DELIVERED = 0

#: Appends a message to its group's stream and publishes it with its position, atomically.
#: KEYS: stream. ARGV: size, ttl (ms), epoch the sender saw last ("0": none), channel,
#: header (kind, origin, seq), payload, the publishing command (PUBLISH; SPUBLISH on a
#: Cluster). Returns the position "epoch:offset", or the PUBLISH's error (an ACL refusing
#: the channel), the entry taken back.
PUBLISH_SCRIPT = """
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
local kind = string.sub(ARGV[5], 1, 1)
local id = redis.pcall('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], ARGV[3] .. '-*',
  'k', kind, 'd', ARGV[6], 't', ms)
if type(id) ~= 'string' or string.sub(id, -2) == '-0' then
  -- A refusal (OOM at maxmemory, READONLY, NOPERM...) is the caller's, not an epoch's.
  if type(id) == 'table' and string.sub(id.err, 1, 4) ~= 'ERR ' then return id end
  -- Not in the sender's epoch: set right here, off the common path.
  local function append(id, create)
    if create then
      return redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id,
        'k', kind, 'd', ARGV[6], 't', ms)
    end
    return redis.pcall('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], id,
      'k', kind, 'd', ARGV[6], 't', ms)
  end
  if not id then
    -- No stream: a new epoch, named by the time in microseconds.
    id = append(now[1] .. string.format('%06d', now[2]) .. '-1', true)
  elseif type(id) == 'table' then
    -- The sender's epoch is older than the stream's (or it has none): use the stream's.
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        id = append(string.match(info[i + 1], '^%d+') .. '-*', false)
      end
    end
  else
    -- Newer than the stream's: the stream was lost and made again by a clock behind the
    -- one that named the sender's epoch. Numbering on in that epoch would give its old
    -- positions to other messages: take the entry back and use the stream's epoch.
    redis.call('XDEL', KEYS[1], id)
    local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
    if top then
      redis.call('XSETID', KEYS[1], top[1], 'MAXDELETEDID', top[1])
      id = append(string.match(top[1], '^%d+') .. '-*', false)
    else
      -- Empty (a join made it): its epoch is not known any more; start a new one.
      redis.call('DEL', KEYS[1])
      id = append(now[1] .. string.format('%06d', now[2]) .. '-1', true)
    end
  end
  if type(id) == 'table' then return id end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local dash = string.find(id, '-', 1, true)
local position = string.sub(id, 1, dash - 1) .. ':' .. string.sub(id, dash + 1)
local sent = redis.pcall(ARGV[7], ARGV[4], ARGV[5] .. string.char(#position) .. position .. ARGV[6])
if type(sent) == 'table' then
  -- Not published (an ACL refusing the channel): no process had it live, so the history
  -- takes it back, and its offset too (the next message's would be a gap to members:
  -- XDEL keeps the last id), returning the refusal to the caller.
  redis.call('XDEL', KEYS[1], id)
  local offset = tonumber(string.sub(id, dash + 1))
  redis.call('XSETID', KEYS[1], string.sub(id, 1, dash) .. string.format('%d', offset - 1))
  return sent
end
return position
"""

#: The epoch, last offset and Redis time (ms) of a group's stream, and its entries after an
#: offset: at most count, and no more once their data reach bytes (at least one: a page is
#: held until the client has taken it; read one, then twice as many each time, to stop
#: there). KEYS: stream.
#: ARGV: offset, count, ttl (ms), bytes. A group without a stream gets an empty one (a new
#: epoch, at offset 0), so that a member joining it has a position.
READ_SCRIPT = """
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if info.err then
  local epoch = now[1] .. string.format('%06d', now[2])
  redis.call('XADD', KEYS[1], epoch .. '-0', 'k', '')
  redis.call('XDEL', KEYS[1], epoch .. '-0')  -- empty; its last id stays: next is -1
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {epoch, 0, ms, {}}
end
local last
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local epoch, head = string.match(last, '^(%d+)-(%d+)$')
local entries = {}
local want, budget, size, step = tonumber(ARGV[2]), tonumber(ARGV[4]), 0, 1
local start = '(' .. epoch .. '-' .. ARGV[1]
while want > 0 do
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(step, want))
  for i = 1, #chunk do
    entries[#entries + 1] = chunk[i]
    size = size + #chunk[i][2][4]  -- fields k, kind, d, data, t, ms
    want = want - 1
    if size >= budget then return {epoch, tonumber(head), ms, entries} end
  end
  if #chunk < step then break end
  start = '(' .. chunk[#chunk][1]
  -- Twice as many as so far, or what the rest of the budget holds at the size seen so
  -- far if fewer: what XRANGE materialises in Redis stays near what is returned.
  step = math.max(1, math.min(2 * #entries,
    math.floor((budget - size) * #entries / math.max(size, 1))))
end
return {epoch, tonumber(head), ms, entries}
"""

#: Presence of one group (all its keys carry the group as hash tag, so they share a slot
#: with its channel): hash ``{<group>}:presence``, field ``<process>|<key>`` -> JSON
#: ``[key, user, info, sockets in that process]``; hash ``{<group>}:presence:procs``, field
#: ``<process>`` -> Redis time (ms) of its last heartbeat; ``{<group>}:presence:v``, the
#: version ``<epoch>:<n>`` (``n`` counts the changes of the hash, the epoch changes when
#: the keys were lost); ``{<group>}:presence:log``, the last ``PRESENCE_LOG`` changes
#: (``n``, field, new value or empty if deleted), so that a reader who knows version ``n``
#: reads only what changed since. A process whose heartbeat is older than ``stale`` ms is
#: dead: its fields do not count, and the next heartbeat of another process removes them.
PRESENCE_LOG = 1000

_PRESENCE_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function changed(field, value)
  local epoch, n = nil, 0
  local version = redis.call('GET', KEYS[3])
  if version then
    local e, c = string.match(version, '^(%d+):(%d+)$')
    epoch, n = e, tonumber(c)
  else
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('DEL', KEYS[4])
  end
  n = n + 1
  redis.call('SET', KEYS[3], epoch .. ':' .. n)
  redis.call('RPUSH', KEYS[4], n .. '\\n' .. field .. '\\n' .. (value or ''))
  redis.call('LTRIM', KEYS[4], -PRESENCE_LOG, -1)
end
local function expire(ms)
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ms) end
end
-- The version and the SHA-1 of the change that made it (the log's last entry); '' if none.
local function head()
  local version = redis.call('GET', KEYS[3])
  if not version then return '', '' end
  local last = redis.call('LINDEX', KEYS[4], -1)
  return version, last and redis.sha1hex(last) or ''
end
-- True unless the change that made version ``anchor`` (SHA-1 ``digest``) is gone: Redis
-- went back to an older copy (a restart from a snapshot, a failover to a replica that
-- lagged), which has the keys, but not the changes since. True for anchor ''.
local function holds(anchor, digest)
  if anchor == '' then return true end
  local version = redis.call('GET', KEYS[3])
  if not version then return false end
  local epoch, n = string.match(version, '^(%d+):(%d+)$')
  local e, a = string.match(anchor, '^(%d+):(%d+)$')
  if epoch ~= e or tonumber(a) > tonumber(n) then return false end
  local first = redis.call('LINDEX', KEYS[4], 0)
  first = first and tonumber(string.match(first, '^%d+'))
  -- Older than the log: not to be checked, so taken as gone (the caller writes again).
  if not first or tonumber(a) < first then return false end
  return redis.sha1hex(redis.call('LINDEX', KEYS[4], tonumber(a) - first)) == digest
end
-- The end of the JSON string (or null) at i in s; #s if it has none.
local function json_end(s, i)
  if string.sub(s, i, i) ~= '"' then return i + 3 end
  i = i + 1
  while i <= #s do
    local c = string.sub(s, i, i)
    if c == '"' then return i end
    if c == '\\\\' then i = i + 1 end
    i = i + 1
  end
  return #s
end
-- A leave event's tail from an entry ("[key,user,info,sockets]"), its parts as they were
-- written: cjson does not encode again what it decoded ([] comes out {}, 2^60 rounded).
local function leave_tail(value)
  local key_end = json_end(value, 2)
  local user_end = json_end(value, key_end + 2)
  local info_end = string.find(value, ',%d+%]$')
  return '","key":' .. string.sub(value, 2, key_end) .. ',"user":' ..
    string.sub(value, key_end + 2, user_end) .. ',"info":' ..
    string.sub(value, user_end + 2, (info_end or #value + 1) - 1) .. '}'
end
-- The live processes (a list) and the dead ones (a set: silent for more than stale ms),
-- whose heartbeats are removed.
local function processes(stale)
  local dead, live = {}, {}
  local procs = redis.call('HGETALL', KEYS[2])
  for i = 1, #procs, 2 do
    if now - tonumber(procs[i + 1]) > stale then
      dead[procs[i]] = true
      redis.call('HDEL', KEYS[2], procs[i])
    else
      live[#live + 1] = procs[i]
    end
  end
  return dead, live
end
-- Remove a dead process's entry (field, value) of key, and publish its leave if no live
-- process has a socket of the key and none was published for it yet (told: key -> true).
local function bury(field, value, key, live, told, command, channel, event_head)
  redis.call('HDEL', KEYS[1], field)
  changed(field, false)
  if told[key] then return end
  for _, other in ipairs(live) do
    if redis.call('HEXISTS', KEYS[1], other .. '|' .. key) == 1 then return end
  end
  told[key] = true
  redis.call(command, channel, event_head .. 'leave' .. leave_tail(value))
end
""".replace("PRESENCE_LOG", str(PRESENCE_LOG))

#: A key's sockets in this process changed to ARGV[4]; publish a join/leave event if the
#: key has no socket in any other live process. The dead processes' entries are removed
#: first, with their leaves, as a heartbeat removes them. KEYS: presence, procs, version, log.
#: ARGV: process, key, entry JSON without its count ("[key,user,info"), count, stale (ms),
#: publishing command, channel, event head (header + JSON up to the event's name), event
#: tail, expiry (ms), this process's anchor here (see ``holds``: the version of its last
#: write or heartbeat, and that change's SHA-1; "" for none), "1" if this process's last
#: write of the key had sockets (its entry is to be there) else "". Returns ``{event
#: published or "", 1 if this process had no heartbeat here (Redis lost the keys, or
#: another process found it dead and removed its entries; or its first entry here) else
#: 0, 1 if its anchor is gone else 0, the version after the write, its SHA-1}``.
PRESENT_SCRIPT = (
    _PRESENCE_PRELUDE
    + """
local kept = holds(ARGV[11], ARGV[12])
local unknown = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0
redis.call('HSET', KEYS[2], ARGV[1], now)
local field = ARGV[1] .. '|' .. ARGV[2]
local n = tonumber(ARGV[4])
-- Dead processes' entries go first, with their leaves, as a heartbeat removes them: so
-- each listener's events of a key alternate (a join here beside a dead entry was a
-- second join; a leave here, then the dead entry's, two leaves).
local dead, live = processes(tonumber(ARGV[5]))
if next(dead) then
  local fields = redis.call('HGETALL', KEYS[1])
  local told = {}
  for i = 1, #fields, 2 do
    local process, key = string.match(fields[i], '^([^|]*)|(.*)$')
    if process and dead[process] then
      bury(fields[i], fields[i + 1], key, live, told, ARGV[6], ARGV[7], ARGV[8])
    end
  end
end
local elsewhere = false
for _, other in ipairs(live) do
  if other ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], other .. '|' .. ARGV[2]) == 1 then
    elsewhere = true
    break
  end
end
local had = redis.call('HEXISTS', KEYS[1], field) == 1
if n > 0 then
  local value = ARGV[3] .. ',' .. n .. ']'
  redis.call('HSET', KEYS[1], field, value)
  changed(field, value)
elseif had then
  redis.call('HDEL', KEYS[1], field)
  changed(field, false)
end
expire(ARGV[10])
local event = false
if not elsewhere then
  -- A leave whose entry Redis lost (keys lost, or this process counted dead meanwhile)
  -- is still one: the listeners saw the key join. (Counted dead, it may be a second.)
  -- Not if this process never wrote the entry (ARGV[13]): a tab that opened and closed
  -- at once, its join's write overtaken, is no leave of a key the listeners never saw.
  if n > 0 and not had then
    event = 'join'
  elseif n == 0 and (had or (unknown and ARGV[13] == '1')) then
    event = 'leave'
  end
end
if event then redis.call(ARGV[6], ARGV[7], ARGV[8] .. event .. ARGV[9]) end
return {event or '', unknown and 1 or 0, kept and 0 or 1, head()}
"""
)

#: The heartbeat of this process in one group: its time renewed, dead processes' entries
#: removed (a leave event for each key left with no socket). With ARGV[7] "sync", also
#: its entries made what it says (written again after Redis lost them, removed if they
#: left while Redis was out of reach); without, if its entries may be gone -- the group's
#: keys are (Redis lost them), or this process's heartbeat is (Redis lost the keys and a
#: join made them again, or another process found this one dead and removed its
#: entries), or its anchor (ARGV[10], ARGV[11]: see ``holds``) is (Redis went back to an
#: older copy), or the hash is while this process has entries (ARGV[12] "1": an
#: eviction) -- nothing is done and "lost" returned: the caller syncs. With "reap" (a
#: process that only listens to the group's events), only the dead processes' entries
#: removed: this one is not made live. A sync also publishes the events this process
#: decided alone while its writes failed (ARGV[9] of them: key, event, tail), each
#: unless another live process has a socket of that key, with the head ARGV[8] (which
#: this process's reader skips: its listeners had them then). KEYS: presence, procs,
#: version, log. ARGV: process, stale (ms), expiry (ms), publishing command, channel,
#: event head, "sync", "reap" or "", the head of events delivered here already, how
#: many such events, the anchor's version and SHA-1, "1" if this process has entries
#: here, the events' key/event/tail triples, then (to sync) this process's field/value
#: pairs. Returns "lost", the number of live processes (a reaper), or ``{that number,
#: the version, its SHA-1}`` (the anchor from now on).
HEARTBEAT_SCRIPT = (
    _PRESENCE_PRELUDE
    + """
local sync = ARGV[7] == 'sync'
local reap = ARGV[7] == 'reap'
if reap then
  if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
elseif not sync and (redis.call('EXISTS', KEYS[3]) == 0
    or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0
    or (ARGV[12] == '1' and redis.call('EXISTS', KEYS[1]) == 0)
    or not holds(ARGV[10], ARGV[11])) then
  return 'lost'
else
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
local mine = {}
local decided = 13 + 3 * tonumber(ARGV[9])
if sync then
  for i = decided, #ARGV, 2 do
    mine[ARGV[i]] = ARGV[i + 1]
    if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      changed(ARGV[i], ARGV[i + 1])
    end
  end
end
local dead, live = processes(tonumber(ARGV[2]))
local fields = {}
if sync or next(dead) then fields = redis.call('HGETALL', KEYS[1]) end
local told = {}
for i = 1, #fields, 2 do
  local process, key = string.match(fields[i], '^([^|]*)|(.*)$')
  if sync and process == ARGV[1] and not mine[fields[i]] then
    redis.call('HDEL', KEYS[1], fields[i])
    changed(fields[i], false)
  elseif process and dead[process] then
    bury(fields[i], fields[i + 1], key, live, told, ARGV[4], ARGV[5], ARGV[6])
  end
end
for i = 13, decided - 1, 3 do
  local elsewhere = false
  for _, other in ipairs(live) do
    if other ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], other .. '|' .. ARGV[i]) == 1 then
      elsewhere = true
    end
  end
  if not elsewhere then redis.call(ARGV[4], ARGV[5], ARGV[8] .. ARGV[i + 1] .. ARGV[i + 2]) end
end
-- A reaper renews nothing: the keys of a group nobody is present in expire.
if not reap or next(dead) then expire(ARGV[3]) end
if reap then return #live end
return {#live, head()}
"""
)

#: What a reader needs to bring its copy of a group's presence up to date. KEYS:
#: presence, procs, version, log. ARGV: stale (ms), the epoch and ``n`` of the reader's
#: copy, and the SHA-1 of the change that made ``n`` (see ``holds``: a copy read before
#: Redis went back to an older copy is not current, whatever its ``n``). Returns
#: ``{version, live processes}`` if the copy is current; ``{version, processes, "log",
#: changes}`` if the log reaches back to it; else ``{version, processes, "full", JSON
#: object of every field, SHA-1 of the version's change}``.
PRESENCE_SCRIPT = (
    _PRESENCE_PRELUDE
    + """
local names = {}
local procs = redis.call('HGETALL', KEYS[2])
for i = 1, #procs, 2 do
  if now - tonumber(procs[i + 1]) <= tonumber(ARGV[1]) then names[#names + 1] = procs[i] end
end
table.sort(names)
local processes = table.concat(names, ',')
local version = redis.call('GET', KEYS[3]) or '0:0'
local epoch, n = string.match(version, '^(%d+):(%d+)$')
if ARGV[2] ~= '' and holds(ARGV[2] .. ':' .. ARGV[3], ARGV[4]) then
  local have = tonumber(ARGV[3])
  if tonumber(n) == have then return {version, processes} end
  -- Numbers in the log are consecutive, and holds() found have in it: have + 1 is at
  -- index have + 1 - first.
  local first = tonumber(string.match(redis.call('LINDEX', KEYS[4], 0), '^%d+'))
  return {version, processes, 'log', redis.call('LRANGE', KEYS[4], have + 1 - first, -1)}
end
local out = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do out[#out + 1] = cjson.encode(fields[i]) .. ':' .. fields[i + 1] end
local _, digest = head()
return {version, processes, 'full', '{' .. table.concat(out, ',') .. '}', digest}
"""
)

#: Remembers a group command for ``recent_controls``: sorted set ``{<group>}:control`` of
#: the command's message (header and payload: unique), scored by Redis time (ms); older
#: than ARGV[2] ms dropped. KEYS: the set. ARGV: the message, how long to keep it (ms).
REMEMBER_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: REMEMBER_SCRIPT, then the publication, for each of several groups' commands in one call
#: (:meth:`RedisLayer.control_many`): KEYS[i] the control key of group i, ARGV[1] the ms
#: to remember them, ARGV[2] the publishing command, ARGV[2 + i] the channel of group i,
#: ARGV[2 + n + i] its command.
CONTROL_MANY_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  redis.call('ZADD', KEYS[i], now, ARGV[2 + n + i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - ttl)
  redis.call('PEXPIRE', KEYS[i], ttl)
  redis.call(ARGV[2], ARGV[2 + i], ARGV[2 + n + i])
end
return n
"""

#: Groups per CONTROL_MANY_SCRIPT call: Redis serves no one else while a script runs
#: (some 4 commands per group, a few ms for this many).
CONTROL_BATCH = 500

#: The commands remembered for a group in the last ARGV[1] ms, oldest first: message, age
#: (ms), message, age, ...
RECENT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
for i = 2, #found, 2 do found[i] = tostring(now - tonumber(found[i])) end
return found
"""


def _controls(found: list[bytes]) -> list[tuple[bytes, float]]:
    """What RECENT_SCRIPT answered: ``(payload, seconds ago)``, oldest first."""
    return [(found[i][HEADER.size :], int(found[i + 1]) / 1000) for i in range(0, len(found), 2)]


#: Timeouts (seconds) unless the URL sets them (``?socket_timeout=0.5``).
DEFAULT_TIMEOUT = 2.0
#: Reconnection backoff of the reader: first delay, cap.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 5.0
#: Seconds of silence on the subscription before the reader checks it (KEEPALIVE_COMMAND).
KEEPALIVE = 10.0
#: The subscription's keepalive: an UNSUBSCRIBE of a channel never subscribed (a group's
#: begins with the layer's prefix, ``dwebsocket:<db>:``), answered by an "unsubscribe"
#: reply that names no group. Not a PING: while Redis loads its data (a restart, minutes
#: for a large dataset) it refuses that with LOADING, and goes on with pub/sub meanwhile;
#: the reader took the refusal for the connection's end and subscribed again at every
#: keepalive, losing what was published in between. The pub/sub commands are the ones
#: Redis runs while loading. A plain UNSUBSCRIBE on a Cluster's sharded subscriptions too:
#: it names no key, so no node redirects it.
KEEPALIVE_COMMAND = ("UNSUBSCRIBE", "dwebsocket:keepalive")
#: Messages the subscription's reader fans out together at most: all that arrived by the
#: time it looks, so that a member gets them in one write (bench/FINDINGS.md, section 14).
BATCH = 1000
#: Own messages remembered to deliver each exactly once (see ``RedisLayer._claim``).
CLAIMS = 4096
#: Groups whose epoch (and kept send arguments) a sender remembers (``RedisLayer._kept_group``).
EPOCHS = 4096
#: Connections ``send`` may use at once; more senders wait (up to ``socket_timeout``).
MAX_PUBLISH_CONNECTIONS = 32
#: What Redis answers when it is there but will not write: ``maxmemory`` reached under the
#: ``noeviction`` policy (OOM), an ACL user without the right to a command (NOPERM: ``-eval``,
#: ``-@write``), a restart still loading its data (LOADING: pub/sub works meanwhile). Not an
#: outage: a message it will not keep is still published (``RedisLayer._send_kept``). An
#: ACL refusing a key or a channel (NOPERM too) refuses one group's calls: see
#: :func:`_per_call`.
REFUSED = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.BusyLoadingError,
)


#: What Redis answers to every call, whatever its keys, while the server (or a Cluster's
#: shard) is in a state: no master (READONLY), a cluster down, a slot migrating, a script
#: running (BUSY), writes stopped (MASTERDOWN, NOREPLICAS, MISCONF), a login Redis cannot
#: take. An outage of that server, as a timeout is; what is not one of these (nor
#: :data:`REFUSED`) is refused for what one call asks of its keys (:func:`_per_call`).
_SERVER_STATES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
)
_SERVER_STATE_CODES = ("BUSY ", "MASTERDOWN ", "NOREPLICAS ", "MISCONF ")


#: NOPERM for a key or a channel, as Redis 6 and 7.0 say it ("... to access one of the
#: keys used as arguments") and 7.2 on, and Valkey ("No permissions to access a channel",
#: "... to access the 'x' key"), not for a command ("... to run the 'publish' command").
_ACL_KEY_OR_CHANNEL = re.compile(
    r"permissions to access (?:a|one of the) (?:key|channel)|"
    r"permissions to access the '.*' (?:key|channel)$",
    re.DOTALL,
)


def _per_call(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis, answering, refusing one call for what it asks of its keys:
    WRONGTYPE (a key of another type at a group's name -- another application's, one set
    by hand), NOPERM for a key or channel (an ACL user whose ``~`` keys or ``&`` channels
    leave the group out), a script's error (one that may not publish to the group's
    channel), NOSCRIPT again after loading it. That group's alone: no outage, which would
    hold back every group's calls to that server. (NOPERM for a command is every group's:
    :data:`REFUSED`.)"""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return _ACL_KEY_OR_CHANNEL.search(str(exc)) is not None
    return (
        isinstance(exc, redis.ResponseError)
        and not isinstance(exc, (*REFUSED, *_SERVER_STATES))
        and not str(exc).startswith(_SERVER_STATE_CODES)
    )


HELD_BACK = "Redis unreachable recently; not retried yet"


class HeldBack(redis.ConnectionError):
    """A call not made: its shard failed to answer moments ago, and is left alone for a
    while (``RedisLayer._held_back``) rather than each call waiting a timeout for it."""

    def __init__(self) -> None:
        super().__init__(HELD_BACK)


class BrokenAlone(redis.ConnectionError):
    """A command's (or a presence write's) connection broke, and the one it was sent
    again on too, while Redis answered a PING between the two (:func:`_again_if_broken`):
    not published, and no outage."""


def _again_if_broken(
    call: Callable[[], None], probe: Callable[[], bool], again: bool = True
) -> None:
    """``call()``, and once more if its connection broke (``redis.ConnectionError``, not a
    timeout: that took its time already) and ``probe()`` (a PING of its shard) finds
    Redis answering: for commands (kind 3) and presence writes only. A message is never
    sent again (see Faults in the module docstring), as Redis may have run it; a command
    may run twice -- a socket closed or checked again is nothing more -- and must not be
    lost to a broken connection: a ``users.disconnect`` would leave sockets open in the
    other processes; a presence write run twice finds its entry and publishes nothing.
    Redis not answering: the first error, an outage, with no second try. Answering, and
    the second try's connection broken too: :class:`BrokenAlone`, no outage. ``again``
    False (what runs twice would do twice): no second try, :class:`BrokenAlone` at once."""
    try:
        call()
        return
    except (HeldBack, *REFUSED):  # (BusyLoadingError is a ConnectionError)
        raise
    except redis.ConnectionError as exc:
        if not probe():
            raise
        if not again:
            raise BrokenAlone(f"connection broke, Redis answering: {exc}") from exc
    try:
        call()
    except (HeldBack, *REFUSED):
        raise
    except redis.ConnectionError as exc:
        raise BrokenAlone(f"connection broke twice, Redis answering: {exc}") from exc


def encode(message: str | BytesLike, origin: bytes, seq: int) -> bytes:
    """The published form of ``message`` (see the module docstring)."""
    if isinstance(message, str):
        return HEADER.pack(TEXT, origin, seq) + message.encode()
    return HEADER.pack(BINARY, origin, seq) + bytes(message)


class UnknownKind(ValueError):
    """A published message of a kind this version does not know (a newer process's)."""


def decode(data: bytes) -> tuple[bytes, int, Message]:
    """``(origin, seq, message)`` from a published message. Raises ``ValueError`` if
    ``data`` is not one (too short, unknown kind, text that is not UTF-8)."""
    return decode_positioned(data)[:3]


def decode_positioned(data: bytes) -> tuple[bytes, int, Message, Position | None]:
    """``(origin, seq, message, position)`` from a published message (``position`` None
    for kinds 1 and 2). Raises :class:`UnknownKind` for a kind this version does not know,
    ``ValueError`` if ``data`` is not a message (too short, text that is not UTF-8, ...)."""
    if len(data) < HEADER.size:
        raise ValueError("group message shorter than its header")
    kind, origin, seq = HEADER.unpack_from(data)
    start = HEADER.size
    position = None
    if kind in (TEXT_AT, BINARY_AT):
        if len(data) <= start:
            raise ValueError("group message without its position")
        end = start + 1 + data[start]
        position = Position.parse(data[start + 1 : end].decode("ascii", errors="replace"))
        if position is None or len(data) < end:
            raise ValueError("group message with a malformed position")
        start, kind = end, kind - 4
    payload = data[start:]
    if kind == TEXT:
        return origin, seq, payload.decode(), position
    if kind == BINARY:
        return origin, seq, payload, position
    raise UnknownKind(f"unknown group message kind {kind}")


#: The wrong WEBSOCKET_PRESENCE_HEARTBEAT values logged (see ``RedisLayer._times``).
_wrong_heartbeats: set[str] = set()


@dataclasses.dataclass(slots=True)
class _Kept:
    """What a kept send to a group repeats (``RedisLayer._kept_group``): its policy, and
    the script's arguments but the message's, as bytes."""

    policy: Policy
    stream: bytes
    size: bytes
    ttl: bytes
    #: The epoch the group's last message had ("0": none yet): the one to append in next
    #: time (the script corrects a stale one).
    epoch: bytes
    channel: bytes
    command: bytes


class RedisLayer:
    """Groups across processes through Redis pub/sub (``redis://host:port/db``).

    Redis pub/sub ignores the database number, so the channel names carry it
    (``dwebsocket:<db>:<group>``): two sites on one Redis server stay apart by using
    different databases.
    """

    def __init__(self, url: str, registry: Registry) -> None:
        self.url = url
        self.registry = registry
        self.origin = os.urandom(8)
        self._delivered = self.origin + DELIVERED.to_bytes(8, "big")
        self._seq = itertools.count(1)
        options: dict[str, Any] = {
            "socket_timeout": DEFAULT_TIMEOUT,
            "socket_connect_timeout": DEFAULT_TIMEOUT,
            "health_check_interval": 0,
            "max_connections": MAX_PUBLISH_CONNECTIONS,
            "timeout": DEFAULT_TIMEOUT,  # waiting for a free pooled connection
            # No retry: a command whose reply was lost (the connection broke, or timed
            # out, after Redis ran it) would run twice -- a message published twice, a
            # second entry in a stream. redis-py cannot tell it from one never sent. A
            # pooled connection Redis closed (a restart) is not one: the pool finds it
            # closed when it hands it out, and connects again before sending.
            "retry": Retry(NoBackoff(), 0),
            # RESP2, as the subscriptions speak (topology._subscriber_kwargs), so that
            # both authenticate alike: redis-py 8's RESP3 logs in by HELLO, which a Redis
            # without a password accepts with any, where the subscription's AUTH is refused.
            "protocol": 2,
        }
        if MaintNotificationsConfig is not None:  # redis-py >= 7: a CLIENT call saved
            options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        from dwebsocket.groups.topology import topology_for

        try:
            self.topology = topology_for(url, options)
        except ValueError as exc:
            from dwebsocket.conf import GROUPS_URL

            raise InvalidSetting(
                GROUPS_URL.name,
                redact(url),
                f"WEBSOCKET_GROUPS_URL {redact(url)!r}: {exc}",
                GROUPS_URL.check_id,
            ) from exc
        self._client = self.topology.client
        #: What publishes to a group's channel: PUBLISH, or SPUBLISH on a Cluster. A Lua
        #: script that publishes (history, presence) must use this command, and touch only
        #: keys with the group as hash tag (``dwebsocket:<db>:{<group>}:...``): on a
        #: Cluster the channel lives in that slot.
        self.publish_command = self.topology.publish_command
        self.timeout = float(self.topology.socket_timeout or DEFAULT_TIMEOUT)
        self.backoff_cap = self.topology.backoff_cap or BACKOFF_CAP
        self._prefix = f"dwebsocket:{self.topology.db}:"
        self._state_lock = threading.Lock()  # guards the fields below; never held over I/O
        #: Held over a change of ``_outage`` or ``_refusing`` and the line that says it, so
        #: that the lines come in the order of the changes (``report_down``). Reentrant: a
        #: logging handler that sends to a group, failing, reports in the same thread.
        self._report_lock = threading.RLock()
        self._outage = False
        self._refusing = False  # Redis refused a write (REFUSED) and took none since
        self._lost_logged = False  # a lost reply was logged at WARNING (_send_failed)
        #: (group, outcome) of the calls Redis refused for their keys, logged at ERROR
        #: (``_call_refused``).
        self._calls_refused: set[tuple[str, str]] = set()
        # Per shard (one key, None, but on a Cluster): a failing shard is not tried for a
        # while, the others are.
        self._failures: dict[str | None, int] = {}
        self._retry_at: dict[str | None, float] = {}
        self._claims: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._publish_kept = self._client.register_script(PUBLISH_SCRIPT)
        self._publish_kept_sha = self._publish_kept.sha.encode()
        self._kept: dict[str, _Kept] = {}  # group -> what its kept sends repeat
        self._read_kept = self._client.register_script(READ_SCRIPT)
        self._present = self._client.register_script(PRESENT_SCRIPT)
        self._heartbeat = self._client.register_script(HEARTBEAT_SCRIPT)
        self._presence = self._client.register_script(PRESENCE_SCRIPT)
        self._remember_control = self._client.register_script(REMEMBER_SCRIPT)
        self._control_many = self._client.register_script(CONTROL_MANY_SCRIPT)
        self._recent_controls = self._client.register_script(RECENT_SCRIPT)
        #: This process in the presence hashes (its origin, in hex).
        self.process = self.origin.hex()
        self._heartbeats: threading.Thread | None = None
        #: Groups whose entries Redis may not have right (a write failed).
        self._unsynced: set[str] = set()
        #: One write of a key's entry at a time (striped by group and key): see present.
        #: A syncing heartbeat holds them all.
        self._writing = [threading.Lock() for _ in range(64)]
        #: group -> field -> value of each entry of this process, as its last write made
        #: it (what a syncing heartbeat writes again): not the registry, which a join or a
        #: leave changes before its own write, and whose event that write decides.
        self._written: dict[str, dict[str, str]] = {}
        #: group -> key -> (event, tail) of the events this process decided alone while
        #: its writes failed, for the next sync to publish to the others.
        self._decided: dict[str, dict[str, tuple[str, str]]] = {}
        #: Those events, for this process's listeners (see ``present``).
        self._events = EventQueue(registry.presence)
        #: group -> (version, SHA-1) of a change Redis had once this process's last write
        #: there was made (its write's, or a later heartbeat's): gone from Redis, Redis
        #: went back to an older copy, and the next heartbeat syncs (``holds``). Kept for
        #: the groups of ``_written``.
        self._anchors: dict[str, tuple[str, str]] = {}
        for group in registry.presence.groups():  # taken over from another layer
            for key, user, info, sockets in registry.presence.entries(group):
                self._record(group, key, f"[{json.dumps(key)},{json.dumps(user)},{info}", sockets)
        #: group -> this process's copy of its presence (see ``presence.Mirror``).
        self._mirrors: dict[str, Mirror] = {}
        self.subscriber = self.topology.subscription(self)
        if registry.groups():  # members joined under another layer: take them over
            self.subscriber.start()
            for group in registry.groups():
                self.subscriber.request(group)

    # -- names ----------------------------------------------------------------------------

    def channel(self, group: str) -> bytes:
        return self.topology.channel(self._prefix, group)

    def group(self, channel: bytes) -> str | None:
        return self.topology.group(self._prefix, channel)

    def stream(self, group: str) -> str:
        """The key of ``group``'s history stream (its name a hash tag: see the docstring)."""
        return f"{self._prefix}{{{group}}}:history"

    def _kept_group(self, group: str, kept_by: Policy) -> _Kept:
        """What every kept send to ``group`` repeats, made at its first (again when its
        policy changed), as bytes: redis-py's packing has nothing left to encode."""
        kept = self._kept
        old = kept.get(group)
        if len(kept) >= EPOCHS:
            kept.clear()  # per-user groups are unbounded; a miss costs one lookup
        new = kept[group] = _Kept(
            kept_by,
            self.stream(group).encode(),
            str(kept_by.size).encode(),
            # ms: a second more than the newest entry needs
            str(int(kept_by.ttl * 1000) + 1000).encode(),
            old.epoch if old is not None else b"0",
            # PUBLISH, or SPUBLISH on a Cluster: the channel has the stream's hash tag, so
            # both live in the slot the script runs in.
            self.channel(group),
            self.publish_command.encode(),
        )
        return new

    # -- membership -----------------------------------------------------------------------

    def join(self, group: str, member: Member) -> None:
        """Add ``member``; on the group's first local member, subscribe to its channel and
        wait (up to ``socket_timeout``) until Redis confirms, so that every message sent
        after ``join`` returns reaches ``member``. While the subscription is down, waits
        for one attempt to reconnect (made at once, not at the end of the backoff): it
        returns subscribed if Redis is back, else as soon as the attempt failed."""
        first = self.registry.add(group, member)
        self.subscriber.start()
        # On a first member, ask even if the group looks subscribed: the reader may have
        # just sent UNSUBSCRIBE for the previous last member's leave.
        if first or group not in self.subscriber.subscribed:
            self.subscriber.request(group, wait=self.timeout)

    def leave(self, group: str, member: Member) -> None:
        if self.registry.remove(group, member):
            self.subscriber.request(group)

    def leave_all(self, member: Member) -> None:
        for group in self.registry.remove_all(member):
            self.subscriber.request(group)

    # -- sending --------------------------------------------------------------------------

    def send(self, group: str, message: Message, *, fail_silently: bool = True) -> str | None:
        """Publish ``message`` to ``group``'s members in every process; returns its
        position if the group keeps history (None if it does not, or Redis was down).

        Blocks at most ``socket_timeout`` (waiting for Redis), never on a member. If Redis
        cannot be reached the local members still get the message and, unless
        ``fail_silently`` is False (then :class:`GroupsUnavailable`), nothing is raised."""
        kept_by = policy(group)
        if kept_by is not None:
            return self._send_kept(group, message, kept_by, fail_silently)
        seq = next(self._seq)
        data = encode(message, self.origin, seq)
        delivered = False
        # Not (yet, or any more) subscribed although members are here: the message would
        # not come back to them, so deliver it now. _claim() keeps it from being delivered
        # again if the subscription does come up in time to bring it back.
        if group in self.registry and group not in self.subscriber.subscribed:
            delivered = self._claim(seq)
            if delivered:
                self._fan_out(group, message)
        error = self._publish(group, data)
        if error is None:
            return None
        if not delivered and group in self.registry and self._claim(seq):
            self._fan_out(group, message)
        if not fail_silently:
            raise GroupsUnavailable(f"group message not published: {error}") from error
        return None

    def _publish(self, group: str, data: bytes, remember: bool = False) -> Exception | None:
        """PUBLISH ``data`` on ``group``'s channel (``remember``: a command, kept for
        :meth:`recent_controls` first); the error if that failed, else None."""
        channel = self.channel(group)
        shard = self.topology.shard(channel)
        if self._held_back(shard):
            return HeldBack()
        try:
            if remember:
                _again_if_broken(
                    lambda: self._remember_and_publish(group, channel, data),
                    lambda: self.topology.probe(channel),
                )
            else:  # a message: the send path, no closure made for it
                self.topology.publish(channel, data)
        except (redis.RedisError, OSError) as exc:
            if remember:
                self._command_failed(exc, shard, group)
            else:
                self._send_failed(exc, channel, shard)
            return exc
        self._publish_ok(shard)
        return None

    def _remember_and_publish(self, group: str, channel: bytes, data: bytes) -> None:
        # The command kept before the PUBLISH: a member subscribed too late for it reads
        # the set after its subscription, so it finds the command there.
        refused = self._remember(group, data)
        self.topology.publish(channel, data)
        if refused is not None:  # said once it is published (if not, the PUBLISH's error)
            self._call_refused(
                refused, group, "its commands are published without being remembered"
            )

    def _remember(self, group: str, data: bytes) -> redis.ResponseError | None:
        """Keep command ``data`` for :meth:`recent_controls`. Redis refusing the write
        (:data:`REFUSED`) is logged, not raised: the command is published all the same
        (a ``users.disconnect`` must still reach every process), and only a socket that
        subscribes too late for it misses it. Refused for the group's key alone
        (:func:`_per_call`): returned, for the caller to say."""
        try:
            self._remember_control(
                keys=[self.control_key(group)], args=[data, int(control.MEMORY * 1000)]
            )
        except (redis.ResponseError, *REFUSED) as exc:
            if _per_call(exc):
                assert isinstance(exc, redis.ResponseError)
                return exc
            if not isinstance(exc, REFUSED):
                raise
            self._refused(exc)
        else:
            self._took_write()
        return None

    def control(self, group: str, payload: bytes, *, fail_silently: bool = True) -> None:
        """Publish command ``payload`` (:mod:`.control`) to ``group``'s members in every
        process (kind 3). Like :meth:`send`: exactly once here, local members served
        while Redis is unreachable (then :class:`GroupsUnavailable` unless
        ``fail_silently``)."""
        from dwebsocket.groups.control import dispatch

        seq = next(self._seq)
        delivered = False
        if group in self.registry and group not in self.subscriber.subscribed:
            delivered = self._claim(seq)
            if delivered:
                dispatch(self.registry, group, payload)
        error = self._publish(group, HEADER.pack(CONTROL, self.origin, seq) + payload, True)
        if error is None:
            return
        if not delivered and group in self.registry and self._claim(seq):
            dispatch(self.registry, group, payload)
        if not fail_silently:
            raise GroupsUnavailable(f"group command not published: {error}") from error

    def control_many(
        self, groups: Sequence[str], payload: bytes, *, fail_silently: bool = True
    ) -> None:
        """:meth:`control` of ``payload`` to each of ``groups`` (``clearsessions``
        revoking many sessions): on one Redis, one script call per :data:`CONTROL_BATCH`
        groups rather than two commands (two round trips) each; on a Cluster, whose
        groups live on several nodes, one :meth:`control` per group. Raises
        :class:`GroupsUnavailable` (unless ``fail_silently``) once, after trying them all,
        if some were not published."""
        error: Exception | None = None
        if len(groups) < 2 or not isinstance(self._client, redis.Redis):
            for group in groups:
                try:
                    self.control(group, payload, fail_silently=False)
                except GroupsUnavailable as exc:
                    error = exc
        else:
            for start in range(0, len(groups), CONTROL_BATCH):
                error = self._control_batch(groups[start : start + CONTROL_BATCH], payload) or error
        if error is not None and not fail_silently:
            raise GroupsUnavailable(f"group commands not published: {error}") from error

    def _control_batch(self, groups: Sequence[str], payload: bytes) -> Exception | None:
        """:meth:`control_many` of at most :data:`CONTROL_BATCH` groups on one Redis: the
        error if they were not published, else None."""
        from dwebsocket.groups.control import dispatch

        sent = [(group, next(self._seq)) for group in groups]
        delivered = set()
        for group, seq in sent:  # as control(): exactly once here, whatever Redis does
            unserved = group in self.registry and group not in self.subscriber.subscribed
            if unserved and self._claim(seq):
                delivered.add(seq)
                dispatch(self.registry, group, payload)
        data = [HEADER.pack(CONTROL, self.origin, seq) + payload for _, seq in sent]
        error = self._publish_controls([group for group, _ in sent], data)
        if error is not None:
            for group, seq in sent:
                if seq not in delivered and group in self.registry and self._claim(seq):
                    dispatch(self.registry, group, payload)
        return error

    def _publish_controls(self, groups: list[str], data: list[bytes]) -> Exception | None:
        """Remember and publish ``data[i]`` to ``groups[i]`` (CONTROL_MANY_SCRIPT); the
        error if that failed, else None. Redis refusing the writes (:data:`REFUSED`):
        published without being remembered, as :meth:`_remember` does."""
        if self._held_back(None):  # one shard: None
            return HeldBack()
        channels = [self.channel(group) for group in groups]
        keys = [self.control_key(group) for group in groups]
        args = [int(control.MEMORY * 1000), self.publish_command, *channels, *data]

        def publish() -> None:
            try:
                self._client.execute_command(
                    "EVALSHA", self._control_many.sha, len(keys), *keys, *args
                )
            except redis.exceptions.NoScriptError:  # Redis restarted, flushed: this loads it
                self._control_many(keys=keys, args=args)

        try:
            _again_if_broken(publish, lambda: self.topology.probe(channels[0]))
        except (redis.RedisError, OSError) as exc:
            if _per_call(exc):
                # A group's key holds another type (WRONGTYPE), or the ACL refuses a
                # group's key or channel (NOPERM: the script did not run, or stopped
                # there, the groups before it published). Each group on its own, as
                # control() sends it: that group's published without being remembered
                # (or not at all), and those before it once more (a command may run
                # twice, not be lost).
                again = None
                for group, one in zip(groups, data, strict=True):
                    again = self._publish(group, one, True) or again
                return again
            if not isinstance(exc, REFUSED):
                self._command_failed(exc, None, groups[0])
                return exc
            self._refused(exc)
            return self._publish_unremembered(groups, channels, data)
        self._took_write()
        self._publish_ok(None)
        return None

    def _publish_unremembered(
        self, groups: list[str], channels: list[bytes], data: list[bytes]
    ) -> Exception | None:
        """:meth:`_publish_controls` while Redis refuses writes: PUBLISH each, in one
        pipeline; the error if some were not published, else None."""
        pipe = self._client.pipeline(transaction=False)
        for channel, one in zip(channels, data, strict=True):
            pipe.publish(channel, one)
        try:
            answers = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            self._publish_failed(exc, None)
            return exc
        error: Exception | None = None
        for group, answer in zip(groups, answers, strict=True):
            if not isinstance(answer, Exception):
                continue
            error = answer
            if not _per_call(answer):  # a command refused for all (NOPERM for PUBLISH)
                self._publish_failed(answer, None)
                return answer
            self._call_refused(answer, group, "its command was not published")
        self._publish_ok(None)
        return error

    def recent_controls(self, group: str, within: float) -> list[tuple[bytes, float]]:
        """The commands sent to ``group`` in the last ``within`` seconds (at most
        ``control.MEMORY``), from every process: ``(payload, seconds ago)``, oldest first.
        Blocks on Redis (up to ``socket_timeout``); raises :class:`GroupsUnavailable` if it
        cannot be read (at once while a recent failure holds sends back)."""
        if self._held_back(self.topology.shard(self.channel(group))):
            raise GroupsUnavailable(f"commands of group {group!r} not read: Redis unreachable")
        try:
            found = self._recent_controls(
                keys=[self.control_key(group)], args=[int(within * 1000) + 1]
            )
        except (redis.RedisError, OSError) as exc:
            raise GroupsUnavailable(f"commands of group {group!r} not read: {exc}") from exc
        return _controls(found)

    def recent_controls_many(
        self, groups: list[str], within: float
    ) -> list[list[tuple[bytes, float]] | None]:
        """:meth:`recent_controls` of each of ``groups`` (None: it cannot be read), in one
        round trip on one Redis (a pipeline of the script, which does not need the keys in
        one slot); one call per group on a Cluster, whose groups live on several nodes."""
        if len(groups) < 2 or not isinstance(self._client, redis.Redis):
            return [self._recent_or_none(group, within) for group in groups]
        if self._held_back(None):  # one shard: None
            return [None] * len(groups)
        pipe = self._client.pipeline(transaction=False)
        for group in groups:
            pipe.evalsha(
                self._recent_controls.sha, 1, self.control_key(group), int(within * 1000) + 1
            )
        try:
            answers = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError):
            return [None] * len(groups)
        found: list[list[tuple[bytes, float]] | None] = []
        for group, answer in zip(groups, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError):
                # Redis does not know the script (restarted, flushed): this loads it.
                found.append(self._recent_or_none(group, within))
            else:
                found.append(None if isinstance(answer, Exception) else _controls(answer))
        return found

    def _recent_or_none(self, group: str, within: float) -> list[tuple[bytes, float]] | None:
        try:
            return self.recent_controls(group, within)
        except GroupsUnavailable:
            return None

    def _send_kept(
        self, group: str, message: Message, kept_by: Policy, fail_silently: bool
    ) -> str | None:
        """``send`` for a group that keeps history: one script keeps and publishes it.

        Members here that the subscription does not serve yet get it after the script ran,
        with its position (so a member recovering meanwhile puts it in its place); without
        Redis they get it without one, and it is not kept."""
        seq = next(self._seq)
        if isinstance(message, str):
            header, payload = HEADER.pack(TEXT_AT, self.origin, seq), message.encode()
        else:
            header, payload = HEADER.pack(BINARY_AT, self.origin, seq), message
        kept = self._kept.get(group)
        if kept is None or kept.policy is not kept_by:
            kept = self._kept_group(group, kept_by)
        error: Exception | None = None
        position: str | None = None
        # Which shard serves the group matters only while one failed (_retry_at and
        # _failures are empty otherwise; read unlocked, as ever): on a Cluster, a slot
        # lookup per send saved.
        if self._retry_at and self._held_back(self.topology.shard(kept.channel)):
            error = HeldBack()
        else:
            try:
                answer = self._evalsha(kept, header, payload)
            except (redis.RedisError, OSError) as exc:
                if _per_call(exc):
                    # Its stream's key holds another type (WRONGTYPE), or the ACL refuses
                    # it (NOPERM): the group's own problem, which no wait ends. Published
                    # without history, as refused below; said once it is (if not -- the
                    # channel refused too -- the PUBLISH's own error says why).
                    error = self._publish(group, encode(message, self.origin, seq))
                    if error is None:
                        self._call_refused(exc, group, "its messages are published without history")
                elif isinstance(exc, REFUSED):
                    # Redis is there but will not keep it: not an outage (held back, every
                    # group of the process would lose its messages elsewhere). Published
                    # without history, as a message of a group without one: no position.
                    self._refused(exc)
                    error = self._publish(group, encode(message, self.origin, seq))
                else:
                    error = exc
                    self._send_failed(exc, kept.channel, self.topology.shard(kept.channel))
            else:
                if self._failures:
                    self._publish_ok(self.topology.shard(kept.channel))
                if self._refusing:
                    self._took_write()
                # The script's own "epoch:offset", as it is (Position.parse would check it).
                position = answer.decode() if isinstance(answer, bytes) else str(answer)
                kept.epoch = position.partition(":")[0].encode()
        unserved = error is not None or group not in self.subscriber.subscribed
        if unserved and group in self.registry and self._claim(seq):
            self._fan_out_item(Item(group, message, Position.parse(position)))
        if error is not None and not fail_silently:
            raise GroupsUnavailable(f"group message not published: {error}") from error
        return position

    def _evalsha(self, kept: _Kept, header: bytes, payload: BytesLike) -> Any:
        """``PUBLISH_SCRIPT`` of ``header`` and ``payload`` to ``kept``'s group: EVALSHA
        straight through the client, every argument bytes (redis-py's ``Script`` call,
        and its encoding of each argument, cost a kept send a few µs more each time), and
        through ``Script`` when Redis does not know it (restarted, flushed, a new node),
        which loads it."""
        try:
            return self._client.execute_command(
                "EVALSHA",
                self._publish_kept_sha,
                b"1",
                kept.stream,
                kept.size,
                kept.ttl,
                kept.epoch,
                kept.channel,
                header,
                payload,
                kept.command,
            )
        except redis.exceptions.NoScriptError:
            args = [kept.size, kept.ttl, kept.epoch, kept.channel, header, payload, kept.command]
            return self._publish_kept(keys=[kept.stream], args=args)

    # -- presence ---------------------------------------------------------------------------

    def control_key(self, group: str) -> str:
        """The commands sent to ``group`` lately (in the group's slot)."""
        return f"{self._prefix}{{{group}}}:control"

    def presence_keys(self, group: str) -> list[str]:
        """The presence hash of ``group``, its processes' heartbeats and its version (all
        in the group's slot)."""
        key = f"{self._prefix}{{{group}}}:presence"
        return [key, key + ":procs", key + ":v", key + ":log"]

    def _record(self, group: str, key: str, head: str, sockets: int) -> bool:
        """Note the entry of ``key`` as written: ``head`` (``[key,user,info``) and its
        ``sockets`` here, or none (0: removed). Returns True if the key's last write
        before this one had sockets here."""
        field = f"{self.process}|{key}"
        with self._state_lock:
            fields = self._written.setdefault(group, {})
            if sockets > 0:
                had = fields.get(field) is not None
                fields[field] = f"{head},{sockets}]"
            else:
                had = fields.pop(field, None) is not None
                if not fields:
                    del self._written[group]
                    self._anchors.pop(group, None)
            return had

    def _anchor(self, group: str) -> tuple[str, str]:
        """The anchor of this process in ``group`` (``("", "")`` for none)."""
        with self._state_lock:
            return self._anchors.get(group, ("", ""))

    def _anchor_at(self, group: str, version: bytes, digest: bytes) -> None:
        """Take ``version`` (its change's SHA-1 ``digest``), which a write or heartbeat of
        this process in ``group`` answered, as its anchor if it is a later one."""
        new_version = version.decode()
        epoch, _, n = new_version.partition(":")
        if not n:
            return
        with self._state_lock:
            if group not in self._written:
                return  # no entry here: nothing to check
            old = self._anchors.get(group)
            if old is not None:
                old_epoch, _, old_n = old[0].partition(":")
                if old_epoch == epoch and int(old_n) >= int(n):
                    return  # a concurrent write's, answered before this one's
            self._anchors[group] = (new_version, digest.decode())

    @staticmethod
    def _times() -> tuple[float, int, int]:
        """The heartbeat (s), after how long a process is dead, when the keys expire (ms).
        A wrong ``WEBSOCKET_PRESENCE_HEARTBEAT`` is replaced by its default, as
        ``docs/settings.rst`` says, and logged at ERROR once per value (check
        ``dwebsocket.E032`` reports it): it raised InvalidSetting out of every present
        join and presence(), a traceback per session."""
        from dwebsocket.conf import PRESENCE_HEARTBEAT, settings

        try:
            heartbeat = settings.WEBSOCKET_PRESENCE_HEARTBEAT
        except InvalidSetting as exc:
            heartbeat = PRESENCE_HEARTBEAT.default
            if str(exc) not in _wrong_heartbeats:
                _wrong_heartbeats.add(str(exc))
                logger.error(
                    "%s: presence uses the default, %g s, until it is fixed", exc, heartbeat
                )
        return heartbeat, int(heartbeat * 2000), int(heartbeat * 3000) + 1000

    def present(self, group: str, entry: Local, count: int, info: str, joined: bool) -> None:
        """Write how many sockets of ``entry``'s key are present here in ``group`` now (the
        caller's change -- one ``joined``, else left or joined again -- made it ``count``,
        showing ``info``; a concurrent change of the same key may have changed it since,
        and writes of one key are in order); the script publishes the join or
        leave event if no other process has a socket of that key. Blocks up to
        ``socket_timeout``; while Redis is unreachable, the event is decided here, from
        the registry as it is and the key's last write here (so a key's events alternate
        and end on its state, as the script's do), delivered here only, in the order
        decided (with no lock held: this call may return before the listeners have it),
        and the next heartbeat writes the entries."""
        _, stale, expiry = self._times()
        seq = next(self._seq)
        # What the registry holds now, not what the caller saw: two changes of one key here
        # (two tabs closing) may reach this line in either order, and the last write wins.
        writing = self._writing[hash((group, entry.key)) % len(self._writing)]
        shard = self.topology.shard(self.channel(group))
        deliver = False
        with writing:
            now, shown = self.registry.presence.count(group, entry.key)
            head = f"[{json.dumps(entry.key)},{json.dumps(entry.user)},{shown or info}"
            # Before the write: if it fails, the next sync makes it.
            wrote = self._record(group, entry.key, head, now)
            try:
                if self._held_back(shard):
                    raise HeldBack()
                channel = self.channel(group)
                args = [
                    self.process,
                    entry.key,
                    head,
                    now,
                    stale,
                    self.topology.publish_command,
                    channel,
                    HEADER.pack(PRESENCE_EVENT, self.origin, seq) + event_prefix(group).encode(),
                    event_suffix(entry.key, entry.user, info),
                    expiry,
                    *self._anchor(group),
                    "1" if wrote else "",
                ]
                answer: list[Any] = []
                runs: list[None] = []

                def write() -> None:
                    runs.append(None)
                    answer[:] = self._present(keys=self.presence_keys(group), args=args)

                # Run once more if its connection broke while Redis answers, as a command
                # is: run twice, the script finds the entry as it says and publishes no
                # second event. (Decided here instead, the event was doubled when Redis
                # had run it: from Redis, then from here and the next heartbeat.)
                _again_if_broken(write, lambda: self.topology.probe(channel))
                _, unknown, gone, version, digest = answer
                if len(runs) > 1:
                    unknown = 1  # what the first run found is not known: sync
                self._decide(group, entry.key, None)  # Redis has the key's state again
                if gone or (unknown and len(self.registry.presence.entries(group)) > int(now > 0)):
                    # Redis had no heartbeat of this process here, yet it has other entries
                    # here: they may be gone (see PRESENT_SCRIPT), and this write made the
                    # heartbeat's own check pass; or Redis went back to an older copy, with
                    # entries this process removed since. The next heartbeat writes them all.
                    self._unsynced.add(group)
                self._anchor_at(group, version, digest)
                self._took_write()
            except (redis.RedisError, OSError) as exc:
                self._write_failed(exc, shard, group)
                self._unsynced.add(group)  # the next heartbeat writes every entry
                # From the key's last write here and the registry now, as the script
                # decides from the entry Redis has: not from the caller's count, which
                # another thread's change of the key, decided first, may have undone (a
                # join after the registry had the key leave, or the reverse).
                if (now > 0) != wrote:
                    event = "join" if now else "leave"
                    tail = event_suffix(entry.key, entry.user, (shown or info) if now else info)
                    self._decide(group, entry.key, (event, tail))
                    # Queued under the key's lock: its events go out in the order decided.
                    deliver = self._events.put(group, event_prefix(group) + event + tail)
        if deliver:
            self._events.deliver(group)
        self._start_heartbeats()

    def _decide(self, group: str, key: str, event: tuple[str, str] | None) -> None:
        """Note ``event`` (its name and tail) as decided here alone for ``key``, or None:
        Redis has the key's state, nothing to publish. A key's events alternate, so a
        second one undoes the first: the other processes saw neither."""
        with self._state_lock:
            decided = self._decided.get(group)
            if decided is None and event is None:
                return
            decided = self._decided.setdefault(group, {})
            if decided.pop(key, None) is None and event is not None:
                decided[key] = event
            if not decided:
                del self._decided[group]

    def listen(self, group: str) -> None:
        """A member here listens to ``group``'s events: the heartbeats run, so that the
        entries of a process found dead are removed, with their leave events, even if no
        member here is present in the group. Never blocks."""
        self._start_heartbeats()

    def presence(self, group: str) -> list[Present]:
        """Who is present in ``group`` in every live process, one entry per key. Blocks up
        to ``socket_timeout``; raises :class:`GroupsUnavailable` if Redis cannot answer
        (at once while a recent failure holds calls to it back)."""
        _, stale, _ = self._times()
        with self._state_lock:
            mirror = self._mirrors.get(group)
            if mirror is None:
                if len(self._mirrors) >= EPOCHS:
                    self._mirrors.clear()
                mirror = self._mirrors[group] = Mirror()
        with mirror.lock:
            asked = mirror.epoch, mirror.n, mirror.digest
        if self._held_back(self.topology.shard(self.channel(group))):
            raise GroupsUnavailable(f"presence of group {group!r} not read: {HELD_BACK}")
        try:
            answer = self._presence(keys=self.presence_keys(group), args=[stale, *asked])
        except (redis.RedisError, OSError) as exc:
            raise GroupsUnavailable(f"presence of group {group!r} not read: {exc}") from exc
        processes = answer[1].decode()
        live = frozenset(processes.split(",")) if processes else frozenset()
        with mirror.lock:
            mirror.update(
                asked,
                answer[0].decode(),
                live,
                answer[2].decode() if len(answer) > 2 else None,
                answer[3] if len(answer) > 2 else None,
                answer[4].decode() if len(answer) > 4 else "",
            )
            return mirror.answer()

    def _start_heartbeats(self) -> None:
        if self._heartbeats is not None:
            return
        with self._state_lock:
            if self._heartbeats is not None:
                return
            self._heartbeats = threading.Thread(
                target=self._beat, name="dwebsocket-presence", daemon=True
            )
        self._heartbeats.start()

    def _beat(self) -> None:
        """Every heartbeat: for each group with present members here, renew this process;
        for each group whose last one here left while a write failed, sync; for each
        other group with listeners here, remove the dead processes' entries (see
        ``HEARTBEAT_SCRIPT``). Ends once the layer is closed."""
        start = time.monotonic()
        while True:
            heartbeat, stale, expiry = self._times()
            # A heartbeat after the last round began, not ended: a round takes a while
            # with many groups, and a group's renewals must stay within twice the
            # heartbeat (a round of more than one made them more, and the process dead).
            deadline = start + heartbeat
            while (left := deadline - time.monotonic()) > 0:
                if self.subscriber._stopping:
                    return
                time.sleep(min(left, 0.5))
            if self.subscriber._stopping:
                return
            start = time.monotonic()
            self._beat_all(stale, expiry)

    def _beat_all(self, stale: int, expiry: int) -> None:
        """One round of :meth:`_beat`."""
        present = self.registry.presence.groups()
        for group in present:
            if self.subscriber._stopping:
                return
            self.heartbeat(group, stale, expiry)
        for group in self._unsynced - set(present):
            if self.subscriber._stopping:
                return
            # Its last member here left while Redis was away (or refused the write): its
            # entry may be there still, and the leaves decided here reached no other
            # process. A sync removes the one and publishes the others. (Left to go as a
            # dead process's entries, they came back to life with this process's next
            # join there, and were then removed without a leave.)
            self.heartbeat(group, stale, expiry, sync=True)
        for group in self.registry.presence.listened():
            if self.subscriber._stopping:
                return
            if group not in present:
                # No heartbeat of this process there to remove the dead ones: their
                # users' leaves would reach no one here.
                self._beat_once(group, stale, expiry, "reap", [])

    def heartbeat(self, group: str, stale: int, expiry: int, sync: bool = False) -> None:
        """One heartbeat of this process in ``group`` (see ``HEARTBEAT_SCRIPT``): a few
        commands, unless ``sync`` -- asked for after a write failed, or when the script
        finds the group's keys gone -- writes every entry of this process. Never raises."""
        sync = sync or group in self._unsynced
        with contextlib.ExitStack() as held:
            fields: list[str] = []
            decided: list[str] = []
            if sync:
                # No entry of this process is written while the sync runs: a join's write
                # landing between taking the entries and the script would be removed by it
                # as gone, a leave's undone (and either's event already decided).
                for lock in self._writing:  # in order; a write takes only one
                    held.enter_context(lock)
                with self._state_lock:
                    fields = [
                        part for item in self._written.get(group, {}).items() for part in item
                    ]
                    decided = [
                        part
                        for key, (event, tail) in self._decided.get(group, {}).items()
                        for part in (key, event, tail)
                    ]
            mode = "sync" if sync else ""
            answer = self._beat_once(group, stale, expiry, mode, fields, decided)
            if answer is not None and sync:
                # Under the locks: a write that fails now asks for the next sync. (Not
                # without sync: one that failed meanwhile asked for the next one.)
                self._unsynced.discard(group)
                with self._state_lock:
                    self._decided.pop(group, None)
        if answer == b"lost":
            self.heartbeat(group, stale, expiry, sync=True)
        elif isinstance(answer, list):
            self._anchor_at(group, answer[1], answer[2])

    def _beat_once(
        self,
        group: str,
        stale: int,
        expiry: int,
        mode: str,
        fields: list[str],
        decided: Sequence[str] = (),
    ) -> Any:
        """Run ``HEARTBEAT_SCRIPT`` once (``mode``: "", "sync" or "reap"; ``decided``: the
        events to publish, see ``_decided``); its answer, or None if it failed (logged)."""
        seq = next(self._seq)
        anchor = self._anchor(group)
        with self._state_lock:
            has_entries = "1" if self._written.get(group) else ""
        channel = self.channel(group)
        shard = self.topology.shard(channel)
        args = [
            self.process,
            stale,
            expiry,
            self.topology.publish_command,
            channel,
            HEADER.pack(PRESENCE_EVENT, self.origin, seq) + event_prefix(group).encode(),
            mode,
            HEADER.pack(PRESENCE_EVENT, self.origin, DELIVERED) + event_prefix(group).encode(),
            len(decided) // 3,
            *anchor,
            has_entries,
            *decided,
            *fields,
        ]
        answers: list[Any] = []

        def beat() -> None:
            answers.append(self._heartbeat(keys=self.presence_keys(group), args=args))

        try:
            if self._held_back(shard):
                raise HeldBack()
            # A broken connection while Redis answers is no outage. Sent once more unless
            # a sync: that publishes its decided events, so twice would publish them twice
            # (the next heartbeat syncs instead); run twice, any other changes nothing more.
            _again_if_broken(beat, lambda: self.topology.probe(channel), again=mode != "sync")
            answer = answers[-1]
        except (redis.RedisError, OSError) as exc:
            self._write_failed(exc, shard, group)
            if mode != "reap":
                self._unsynced.add(group)
            return None
        except Exception:  # pragma: no cover - a bug: say so, keep beating
            logger.exception("Presence heartbeat of group %r failed", group)
            return None
        self._took_write()
        return answer

    def read(self, group: str, after: int, count: int) -> Page:
        """The history of ``group`` after offset ``after``: at most ``count`` messages and
        about :data:`~dwebsocket.groups.history.PAGE_BYTES`, none older than its ``ttl``
        nor outside its last ``size``. Blocks up to
        ``socket_timeout``; raises :class:`GroupsUnavailable` if Redis cannot answer, and
        ``ValueError`` for a group without history."""
        kept_by = policy(group)
        if kept_by is None:
            raise ValueError(f"group {group!r} keeps no history (WEBSOCKET_GROUPS_HISTORY)")
        try:
            epoch, head, now, found = self._read_kept(
                keys=[self.stream(group)],
                args=[after, count, int(kept_by.ttl * 1000) + 1000, PAGE_BYTES],
            )
        except (redis.RedisError, OSError) as exc:
            raise GroupsUnavailable(f"history of group {group!r} not read: {exc}") from exc
        oldest = max(int(head) - kept_by.size, 0)  # offsets <= oldest are past the size
        expired = int(now) - int(kept_by.ttl * 1000)
        entries: list[tuple[int, Message]] = []
        for entry_id, flat in found:
            offset = int(entry_id.split(b"-", 1)[1])
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if offset <= oldest or int(fields[b"t"]) < expired:
                continue
            data = fields[b"d"]
            entries.append((offset, data.decode() if fields[b"k"] == bytes([TEXT_AT]) else data))
        return Page(epoch.decode(), int(head), entries)

    def receive(self, channel: bytes, data: bytes) -> None:
        """Deliver a message that came through the subscription."""
        self.receive_all([(channel, data)])

    def receive_all(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Deliver messages that came through the subscription together, in order (the
        reader calls this with all it has read at once): consecutive messages of one group
        go to each member in one ``deliver_batch``."""
        run: list[Item] = []
        for channel, data in messages:
            group = self.group(channel)
            if group is None:
                continue
            if run and run[0].group != group:
                self._fan_out_items(run)
                run = []
            if data[:1] == b"\x04" and len(data) >= HEADER.size:
                self._fan_out_items(run)  # what came before goes first
                run = []
                if data[1:].startswith(self._delivered):
                    continue  # this process's listeners had it when it was decided
                try:
                    text = data[HEADER.size :].decode()
                except UnicodeDecodeError:
                    logger.warning("Dropping a malformed presence event on group %r", group)
                    continue
                deliver_event(self.registry.presence, group, text)
                continue
            if data[:1] == b"\x03" and len(data) >= HEADER.size:
                self._fan_out_items(run)
                run = []
                _, origin, seq = HEADER.unpack_from(data)
                if origin != self.origin or self._claim(seq):
                    from dwebsocket.groups.control import dispatch

                    dispatch(self.registry, group, data[HEADER.size :])
                continue
            try:
                origin, seq, message, position = decode_positioned(data)
            except UnknownKind as exc:
                logger.debug("Ignoring a message on group %r: %s (a newer version's?)", group, exc)
                continue
            except ValueError as exc:
                logger.warning("Dropping a malformed message on group %r: %s", group, exc)
                continue
            if origin == self.origin and not self._claim(seq):
                continue
            # Through the followers even without a position (a sender that keeps no history
            # for this group, or that could not reach Redis): still once, still in order.
            run.append(Item(group, message, position))
        self._fan_out_items(run)

    def _fan_out(self, group: str, message: Message) -> None:
        for emptied in fan_out(self.registry, group, message):
            self.subscriber.request(emptied)

    def _fan_out_item(self, item: Item) -> None:
        self._fan_out_items([item])

    def _fan_out_items(self, items: list[Item]) -> None:
        if items:
            for emptied in fan_out_items(self.registry, items[0].group, Items(items)):
                self.subscriber.request(emptied)

    def _claim(self, seq: int) -> bool:
        """Own message ``seq`` is delivered locally by whichever of the sender (fallback)
        and the reader (subscription) asks first: True for the first, False after.
        Remembers the last ``CLAIMS`` claims, so memory stays bounded."""
        with self._state_lock:
            if seq in self._claims:
                del self._claims[seq]
                return False
            self._claims[seq] = None
            if len(self._claims) > CLAIMS:
                self._claims.popitem(last=False)
            return True

    # -- health -----------------------------------------------------------------------------

    def _held_back(self, shard: str | None) -> bool:
        """Whether calls to ``shard`` (None: the only one) wait out a recent failure to
        reach it (:meth:`_publish_failed`) instead of each paying a timeout."""
        retry_at = self._retry_at  # empty unless something failed: no clock read then
        return bool(retry_at) and time.monotonic() < retry_at.get(shard, 0.0)

    def _publish_failed(self, exc: BaseException, shard: str | None = None) -> None:
        # Stop trying that shard for a while, so that views do not each pay a timeout while
        # it is down; the reader's reconnection (or this delay running out) lets sends try
        # again.
        if not self.topology.serves(shard):
            # A Cluster's master replaced while the call waited for it (a failover, seen
            # by a reader's refresh meanwhile): the shard is served elsewhere now, and
            # nothing goes to this address any more, so no success would ever end an
            # outage recorded under it (one said for good, after the new master's reader
            # had ended it).
            logger.debug("Redis at %s failed (%s) after its slots moved", shard, exc)
            return
        with self._state_lock:
            failures = self._failures[shard] = self._failures.get(shard, 0) + 1
            delay = min(self.backoff_cap, BACKOFF_BASE * 2 ** (failures - 1))
            self._retry_at[shard] = time.monotonic() + delay
        self.report_down(exc, shard)
        if shard is not None:
            # A Cluster's master: have the slots learned again, or a process with no
            # reader there would keep calling a master that hangs after its replica took
            # over (only a refused connection has redis-py learn them by itself).
            self.subscriber.shard_failed()

    def _send_failed(self, exc: BaseException, channel: bytes, shard: str | None) -> None:
        """A message to ``channel`` (on ``shard``) was not sent, or its reply was lost.

        A broken connection (a ``redis.ConnectionError``, not a timeout) may be that
        connection's alone -- ``CLIENT KILL``, a proxy or load balancer resetting it,
        Redis closing it just after the pool checked it -- while Redis is up: then holding
        the shard's sends back (:meth:`_publish_failed`) would lose the next ones for the
        other processes, for nothing. So the shard is asked at once (a PING, through the
        same pool, on a connection made again): if it answers, this message failed alone
        and is not sent again (it may have run); if not, it is the outage it seemed.

        The probe's cost to a real outage: a ``ConnectionError`` that is not a timeout is
        Redis's side ending the connection (refused, reset, closed), not a wait, and a
        Redis that is down does the same at once to the probe, which adds a round trip.
        Only a Redis that went silent between the two may keep the probe up to one socket
        timeout (connect or read), once: the sends after it are held back as before. A
        timeout, already waited, is taken for the outage without a probe."""
        if _per_call(exc):
            self._call_refused(exc, self.group(channel) or "?", "its message was not published")
            return
        if (
            isinstance(exc, redis.ConnectionError)
            and not isinstance(exc, (HeldBack, *REFUSED))
            and self.topology.probe(channel)
        ):
            self._publish_ok(shard)  # it answers: an outage it was in has ended
            with self._state_lock:
                first, self._lost_logged = not self._lost_logged, True
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "Redis at %s: a group message's connection broke before its reply came "
                "(%s); Redis answers, so this is no outage, and the message, which may "
                "have reached other processes, was not sent again: it counts as not sent",
                redact(self.url),
                exc,
            )
            return
        self._publish_failed(exc, shard)

    def _command_failed(self, exc: BaseException, shard: str | None, group: str) -> None:
        """A command (:func:`_again_if_broken`) to ``group`` on ``shard`` was not
        published: an outage, unless Redis refused it for that group alone
        (:func:`_per_call`: an ACL refusing its channel) or answered between its two
        broken connections (:class:`BrokenAlone`: logged, and the calls after it go out as
        ever)."""
        if _per_call(exc):
            self._call_refused(exc, group, "its command was not published")
            return
        if not isinstance(exc, BrokenAlone):
            self._publish_failed(exc, shard)
            return
        self._publish_ok(shard)
        logger.warning(
            "Redis at %s: a group command was not published (%s); Redis answers, so this "
            "is no outage",
            redact(self.url),
            exc,
        )

    def _publish_ok(self, shard: str | None = None) -> None:
        failures = self._failures  # empty unless something failed: nothing more to do then
        if not failures:
            return
        self._shard_up(shard)

    def _shard_up(self, shard: str | None) -> None:
        """``shard`` (a Cluster's master; None for one server) answered: its calls are
        not held back any more, and the outage ends unless another shard is down -- its
        calls failed, or its subscription is not made again yet. (Any shard answering
        ended it: on a Cluster with one master down, each subscription made at another
        said "reachable again" and let the down one's sends each wait a timeout.)"""
        with self._state_lock:
            for up in {shard, None}:  # a master answering: the cluster is known again
                self._failures.pop(up, None)
                self._retry_at.pop(up, None)
            # A Cluster's master that failed and was replaced (its slots moved to the
            # replica the cluster promoted): its failures end with it, as nothing is sent
            # there any more; else the outage would last as long as the process.
            for gone in [s for s in self._failures if not self.topology.serves(s)]:
                self._failures.pop(gone, None)
                self._retry_at.pop(gone, None)
            others = bool(self._failures)
        if not others and not self.subscriber.down_besides(shard):
            self.report_up()

    def report_down(self, exc: BaseException, shard: str | None = None) -> None:
        """Log the start of an outage, once; ``shard``: the Cluster's master that failed
        (the others may be up, and their groups' messages go out as ever).

        The change and its line are made under ``_report_lock``, as ``report_up``'s are:
        else a send failing while the reader ends the outage could log "unreachable"
        after "reachable again" (the log then saying Redis is down for good), or the
        reverse. Not under ``_state_lock``, which the send path takes: a logging handler
        that blocks (a slow disk, a remote log) holds back only the threads that report a
        change meanwhile, as the handler's own lock does. An outage already said is
        not waited for: every send held back during it reports it."""
        if self._outage:
            return  # said, or being said by the thread that holds _report_lock
        with self._report_lock:
            with self._state_lock:
                first, self._outage = not self._outage, True
            if first:
                self._say_down(exc, shard)

    def _say_down(self, exc: BaseException, shard: str | None) -> None:
        if shard is None:
            logger.warning(
                "Redis at %s is unreachable (%s): group messages reach this process's "
                "members only, and those sent meanwhile are lost for other processes, "
                "until it is back",
                redact(self.url),
                exc,
            )
        else:
            logger.warning(
                "Redis at %s: its master at %s is unreachable (%s): messages of the groups "
                "it serves reach this process's members only, and those sent meanwhile are "
                "lost for other processes, until it is back",
                redact(self.url),
                shard,
                exc,
            )

    def report_up(self) -> None:
        """Log the end of an outage and let ``send`` publish again at once (in the order
        of the changes: see ``report_down``)."""
        with self._report_lock:
            with self._state_lock:
                was, self._outage = self._outage, False
                self._failures.clear()
                self._retry_at.clear()
            if was:
                logger.warning(
                    "Redis at %s is reachable again: groups span processes again",
                    redact(self.url),
                )

    def _refused(self, exc: BaseException) -> None:
        """Log, once until Redis takes a write again, that it refuses them (REFUSED); in
        the order of the changes, as ``report_down`` does."""
        if self._refusing:
            return
        with self._report_lock:
            with self._state_lock:
                first, self._refusing = not self._refusing, True
            if not first:
                return
            logger.warning(
                "Redis at %s refuses to write (%s): group messages are published without "
                "history (not kept, no position), commands without being remembered, and "
                "presence is not updated, until it takes writes again",
                redact(self.url),
                exc,
            )

    def _call_refused(self, exc: BaseException, group: str, outcome: str) -> None:
        """Log that Redis refused a call of ``group`` for what it asks of its keys
        (:func:`_per_call`): at ERROR the first time for that group and ``outcome``, then
        at DEBUG (a busy group would log each message)."""
        with self._state_lock:
            first = (group, outcome) not in self._calls_refused
            if first:
                if len(self._calls_refused) >= EPOCHS:
                    self._calls_refused.clear()
                self._calls_refused.add((group, outcome))
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "Redis at %s refused a call of group %r (%s): %s. Redis answers, so this is "
            "no outage: the other groups go on",
            redact(self.url),
            group,
            exc,
            outcome,
        )

    def _write_failed(self, exc: BaseException, shard: str | None, group: str) -> None:
        """A write without a fallback (presence of ``group``) to ``shard`` failed: Redis
        refused it (all writes, or this one: :func:`_per_call`), or is down (then calls
        to that shard are held back a while, as after a send), or its connections broke
        while Redis answered (:class:`BrokenAlone`: no outage)."""
        if _per_call(exc):
            self._call_refused(exc, group, "its presence is not written")
        elif isinstance(exc, REFUSED):
            self._refused(exc)
        elif isinstance(exc, BrokenAlone):
            self._publish_ok(shard)  # Redis answered between its two broken connections
        elif not isinstance(exc, HeldBack):
            self._publish_failed(exc, shard)

    def _took_write(self) -> None:
        """Redis took a write: log the end of a refusal, if one was logged."""
        if self._refusing:
            with self._report_lock:
                with self._state_lock:
                    was, self._refusing = self._refusing, False
                if was:
                    logger.warning("Redis at %s takes writes again", redact(self.url))

    @property
    def outage(self) -> bool:
        """True between a failure to reach Redis and the next success."""
        return self._outage

    def make_connection(self, address: str | None = None) -> redis.Connection:
        """A new, unconnected connection for a subscription (to ``address``, a
        ``host:port``, on a Cluster)."""
        return self.topology.make_connection(address)

    def close(self) -> None:
        """Stop the reader and close every connection (waits up to ``socket_timeout``)."""
        self.subscriber.stop()
        self.topology.close()


def _command(connection: redis.Connection, *args: str | bytes) -> None:
    connection.send_command(*args, check_health=False)  # type: ignore[no-untyped-call]


class Subscriber:
    """The process's subscription connection and the reader that owns it.

    Only the reader touches the connection. Others ask for a group's subscription to be
    brought up to date (:meth:`request`), which wakes the reader through a socket pair; it
    then compares the registry with what it has asked Redis for. So the subscription state
    changes in one place, in order, and no lock is held while anything waits on I/O.
    """

    #: Pub/sub commands and replies: plain here; sharded (SSUBSCRIBE...) on a Cluster.
    SUBSCRIBE, UNSUBSCRIBE = "SUBSCRIBE", "UNSUBSCRIBE"
    MESSAGE, SUBSCRIBED, UNSUBSCRIBED = b"message", b"subscribe", b"unsubscribe"

    def __init__(self, layer: RedisLayer, address: str | None = None) -> None:
        self.layer = layer
        #: Where this subscription connects (``host:port``), if the topology says
        #: (a Cluster's shards); else wherever the layer's connections go.
        self.address = address
        #: Groups surely subscribed: Redis confirmed every SUBSCRIBE sent for them and no
        #: UNSUBSCRIBE was sent since. Read from any thread; replaced, never mutated, by
        #: the reader, so nobody sees it half-changed.
        self.subscribed: frozenset[str] = frozenset()
        self.connected = False
        #: True from a failed connection attempt until the next success: joins do not wait.
        self.down = False
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._waiters: dict[str, list[threading.Event]] = {}
        self._requested: set[str] = set()  # reader only: subscribed, or asked to be
        self._in_flight: dict[str, int] = {}  # reader only: SUBSCRIBEs not confirmed yet
        #: Reader only: the groups of each SUBSCRIBE sent on the current connection and not
        #: answered whole, in the order sent: what an error reply answers (``refused``).
        self._subscribing: collections.deque[list[str]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = False
        #: Redis answered a command on the current connection (reader only): only then does
        #: the reconnection backoff start over.
        self._answered = False
        #: Reader only: what ended a connection Redis had answered on (it closed it:
        #: ``CLIENT KILL``, a subscriber past its output buffer limit, Sentinel demoting
        #: the master), not taken for an outage unless the next attempt fails too; said
        #: once the subscription is made again.
        self._closed: BaseException | None = None
        #: Reader only: when the current connection was last heard from; after it was lost,
        #: since when commands may have been published to no one here (the earliest of
        #: the losses not recovered yet); the groups to recover once Redis confirms their
        #: subscription again, each with its own such time; those confirmed.
        self._last_heard: float | None = None
        self._gap_from: float | None = None
        self._recover: dict[str, float] = {}
        self._recovered: list[tuple[str, float]] = []

    # -- called from any thread -------------------------------------------------------------

    def start(self) -> None:
        """Start the reader if it is not running. Idempotent."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_w.setblocking(False)
            self._thread = threading.Thread(
                target=self._run, name="dwebsocket-groups-redis", daemon=True
            )
            self._thread.start()

    def request(self, group: str, wait: float | None = None) -> None:
        """Have the reader subscribe to ``group`` if it has local members, unsubscribe
        otherwise. With ``wait``, block up to that many seconds until Redis confirms the
        subscription; while disconnected, until the reader's next attempt to reconnect,
        which a waiter has it make at once, ends (confirmed, or failed)."""
        event = None
        with self._lock:
            self._pending.add(group)
            down = self.down
            if wait is not None and not self._stopping:
                event = threading.Event()
                self._waiters.setdefault(group, []).append(event)
        self._wake()
        if event is not None and not event.wait(wait) and not down:
            # (While down, the outage was logged once already.)
            logger.warning(
                "Redis did not confirm the subscription to group %r in %s s", group, wait
            )

    def stop(self) -> None:
        """Stop the reader (waits up to ``socket_timeout`` for it), release its sockets."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.layer.timeout + 1)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _wake(self) -> None:
        sock = self._wake_w
        if sock is None:
            return
        # Buffer full: the reader is woken already; closed: stopping.
        with contextlib.suppress(OSError):
            sock.send(b"\0")

    # -- the reader -------------------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_BASE
        while not self._stopping:
            connection = None
            self._answered = False
            try:
                connection = self.layer.make_connection(self.address)
                connection.connect()  # type: ignore[no-untyped-call]
                self._serve(connection)
            except Exception as exc:
                if self._stopping:
                    break
                self._lost()
                self._gap()
                if self._stopping:
                    # _lost() had a Cluster's slots learned again, which moved this
                    # reader's groups to another and stopped it: a reader that serves
                    # nothing reports nothing (its "unreachable" could follow the new
                    # reader's "reachable again", an outage then said for good).
                    break
                if isinstance(exc, redis.ConnectionError) and self._answered:
                    # Redis closed a connection it answered on: maybe that one alone,
                    # Redis up. The next attempt (at once: answered) tells.
                    self._closed = exc
                    logger.debug("Redis subscription closed (%s); subscribing again", exc)
                elif isinstance(exc, (redis.RedisError, OSError)):
                    self._closed = None  # the outage's WARNING says it
                    self.layer.report_down(exc, self.address)
                    logger.debug("Redis subscription lost (%s); retry in %.2f s", exc, delay)
                else:  # pragma: no cover - a bug: say so, and keep serving
                    logger.exception("Redis group reader failed; restarting it")
            finally:
                if connection is not None:
                    connection.disconnect()  # type: ignore[no-untyped-call]
            if self._answered:
                # Not a mere connection: one whose SUBSCRIBE Redis refuses (an ACL user
                # without the command) would have every process reconnect ten times a second.
                delay = BACKOFF_BASE
            # Equal jitter: many processes losing the same Redis do not return in step.
            self._sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, self.layer.backoff_cap)
        self._lost()

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopped or a joiner waits for a subscription."""
        assert self._wake_r is not None
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            if select.select([self._wake_r], [], [], left)[0]:
                self._drain_wake()
                with self._lock:
                    waited = bool(self._waiters)
                if waited:
                    # A join now: Redis may be back while the backoff still runs, and
                    # what other processes publish meanwhile would miss its member, with
                    # nothing to tell it so. Try at once; the joiner waits for the answer.
                    return

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        self._wake_r.setblocking(False)
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _serve(self, connection: redis.Connection) -> None:
        """Subscribe to every current group, then read until stopped or disconnected
        (raises redis-py's ``ConnectionError``/``TimeoutError`` then)."""
        assert self._wake_r is not None
        with self._lock:
            self._pending.clear()
        groups = {group for group in self.layer.registry.groups() if self.wants(group)}
        gap, self._gap_from = self._gap_from, None
        self._recover = dict.fromkeys(groups, gap) if gap is not None else {}
        self._recovered = []
        self._subscribing = collections.deque()
        if groups:
            self._subscribing.extend(self.subscribe(connection, groups))
        self._requested = set(groups)
        self._in_flight = dict.fromkeys(groups, 1)
        with self._lock:
            self.connected, self.down = True, False
        if not groups:
            self._closed = None  # nothing was subscribed: nothing missed
            self.layer._shard_up(self.address)
        sock = connection._sock  # redis-py has no public accessor; needed to select() on
        assert sock is not None
        last_heard = self._last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self._stopping:
            received: list[tuple[bytes, bytes]] = []
            read = 0
            try:
                while read < BATCH and connection.can_read(timeout=0):
                    read += 1
                    try:
                        response = connection.read_response(disconnect_on_error=False)
                    except redis.ResponseError as exc:
                        self.refused(exc)
                    else:
                        self._answered = True
                        if isinstance(response, list) and response and response[0] == self.MESSAGE:
                            received.append((response[1], response[2]))
                        else:
                            self.layer.receive_all(received)  # what came before goes first
                            received = []
                            self._handle(response)
                    last_heard, ping_sent = time.monotonic(), None
            except (redis.RedisError, OSError):
                # The connection broke (a restart, a failover, a cut) or Redis refused a
                # command after these had arrived whole: they are the members' all the
                # same (a history group's would show as a gap and have every member whose
                # client speaks dws reconnect).
                self.layer.receive_all(received)
                raise
            self._last_heard = last_heard
            if self._recovered:
                self._recover_commands()
            if received:
                self.layer.receive_all(received)
                # Under gevent this thread is a greenlet, and select() below returns at
                # once while messages keep coming: let the hub run the others (a
                # reconnecting client's handshake) between batches.
                time.sleep(0)
            self._sync(connection)
            now = time.monotonic()
            if ping_sent is not None and now - ping_sent > self.layer.timeout:
                raise redis.TimeoutError("Redis did not answer the subscription's keepalive")
            if ping_sent is None and now - last_heard >= KEEPALIVE:
                _command(connection, *KEEPALIVE_COMMAND)
                ping_sent = now
            if read >= BATCH:
                # redis-py reads the socket in chunks: the replies after a batch may all
                # be in its buffer already, none in the socket, and select() would wait
                # for the next message (or the keepalive) to hand them on.
                continue
            wait = ping_sent + self.layer.timeout if ping_sent else last_heard + KEEPALIVE
            readable = select.select([sock, self._wake_r], [], [], max(0.0, wait - now))[0]
            if self._wake_r in readable:
                self._drain_wake()

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or not response:
            return  # b"PONG" outside subscribed mode
        kind = response[0]
        if kind == self.MESSAGE:
            self.layer.receive(response[1], response[2])
        elif kind == self.SUBSCRIBED:
            # Redis answers again: the outage ends before the group counts as subscribed,
            # so that whoever sees it subscribed (a join() waiting for it) finds sends
            # published again, not still held back by the outage's backoff.
            if self.layer.outage:
                self.layer._shard_up(self.address)
            if self._closed is not None:
                closed, self._closed = self._closed, None
                logger.warning(
                    "Redis at %s closed this process's group subscription (%s) and "
                    "answers: subscribed again; group messages published in between did "
                    "not reach this process's members",
                    redact(self.layer.url),
                    closed,
                )
            group = self.layer.group(response[1])
            self._answers(group)
            if group is not None:
                left = self._in_flight.pop(group, 1) - 1
                if left > 0:
                    self._in_flight[group] = left
                elif group in self._requested:
                    # Redis has carried out every SUBSCRIBE sent and no UNSUBSCRIBE since.
                    self.subscribed = self.subscribed | {group}
                    self._release(group)
                    gap = self._recover.pop(group, None)
                    if gap is not None:
                        self._recovered.append((group, gap))
        elif kind == self.UNSUBSCRIBED:
            # The confirmation of an UNSUBSCRIBE needs nothing: the group left
            # ``subscribed`` when it was sent. One for a group still requested was not
            # asked for: Redis dropped it (a Cluster's slot moved away).
            group = self.layer.group(response[1])
            if group is not None and group in self._requested and group not in self._in_flight:
                self._requested.discard(group)
                self.subscribed = self.subscribed - {group}
                self.dropped(group)

    def _answers(self, group: str | None) -> None:
        """A SUBSCRIBE confirmed ``group``: its command has one answer fewer to come.
        Replies come in the order sent, so the commands before the first that holds it
        were answered (by an error no ``refused`` took for theirs)."""
        subscribing = self._subscribing
        if group is None:
            return
        while subscribing and group not in subscribing[0]:
            subscribing.popleft()
        if subscribing:
            subscribing[0].remove(group)
            if not subscribing[0]:
                subscribing.popleft()

    def _sync(self, connection: redis.Connection) -> None:
        """Bring the subscription in line with the registry for the groups asked about.

        A joiner that asked waits until its group is subscribed for sure: released here if
        nothing needs changing, else by the confirmation of the SUBSCRIBE sent for it.
        Its request and its waiter are taken together, so a join that comes in while this
        runs is left, whole, to the next round."""
        with self._lock:
            todo, self._pending = self._pending, set()
            waiting = {group: self._waiters.pop(group) for group in todo if group in self._waiters}
        if not todo:
            return
        wanted = {group for group in todo if self.wants(group)}
        subscribe = wanted - self._requested
        unsubscribe = (todo - wanted) & self._requested
        if subscribe:
            self._subscribing.extend(self.subscribe(connection, subscribe))
            self._requested |= subscribe
            for group in subscribe:
                self._in_flight[group] = self._in_flight.get(group, 0) + 1
        if unsubscribe:
            self.subscribed = self.subscribed - unsubscribe
            self.unsubscribe(connection, unsubscribe)
            self._requested -= unsubscribe
        for group, events in waiting.items():
            if group not in wanted or group in self.subscribed:
                for event in events:
                    event.set()
            else:
                with self._lock:
                    self._waiters.setdefault(group, []).extend(events)

    # -- what a topology may change (a Cluster's shards do: .cluster.ShardSubscriber) ----

    def wants(self, group: str) -> bool:
        """Whether this subscription should carry ``group``: it has members here."""
        return group in self.layer.registry

    def subscribe(self, connection: redis.Connection, groups: set[str]) -> list[list[str]]:
        """Send the SUBSCRIBEs of ``groups``; the groups of each command, in order.

        One command per group (all in one write): Redis refuses a SUBSCRIBE whole, with
        one error, if its ACL user may not use one of its channels, and that error must
        name the group it refuses, not hold back every other (``refused``)."""
        ordered = list(groups)
        connection.send_packed_command(  # type: ignore[no-untyped-call]
            connection.pack_commands(  # type: ignore[no-untyped-call]
                [(self.SUBSCRIBE, self.layer.channel(group)) for group in ordered]
            ),
            check_health=False,
        )
        return [[group] for group in ordered]

    def unsubscribe(self, connection: redis.Connection, groups: set[str]) -> None:
        _command(connection, self.UNSUBSCRIBE, *map(self.layer.channel, groups))

    def refused(self, error: redis.ResponseError) -> None:
        """Redis answered a command on the subscription with an error. Refused for a
        group's channel (an ACL user's ``&`` patterns leave it out: :func:`_per_call`),
        the oldest SUBSCRIBE not answered: those groups are not subscribed, their joiners
        return, their members get this process's messages only (as while unsubscribed),
        one ERROR per group, and the other groups go on. Anything else: start again."""
        acl = isinstance(error, redis.exceptions.NoPermissionError) and _per_call(error)
        if not self._subscribing or not acl:
            raise error
        self._answered = True
        for group in self._subscribing.popleft():
            left = self._in_flight.pop(group, 1) - 1
            if left > 0:
                self._in_flight[group] = left  # asked again since: that one answers
            elif group in self._requested:
                # Not requested any more: asked again at its next join (or reconnection),
                # not at each round; nothing to UNSUBSCRIBE at its last leave.
                self._requested.discard(group)
                self._recover.pop(group, None)
                self.layer._call_refused(
                    error,
                    group,
                    "it is not subscribed, and its members here get this process's messages only",
                )
                self._release(group)
        if self.layer.outage:
            self.layer._shard_up(self.address)  # it answers

    def dropped(self, group: str) -> None:
        """Redis ended the subscription to ``group`` by itself (see ``_handle``)."""

    def shard_failed(self) -> None:
        """A call to one shard failed (a Cluster's: :class:`.cluster.ClusterSubscription`
        learns the slots again); one server has nothing to learn."""

    def down_besides(self, address: str | None) -> bool:
        """Whether a subscription to another shard than ``address`` is down: none, with
        one server (a Cluster's: :class:`.cluster.ClusterSubscription`)."""
        return False

    def _release(self, group: str) -> None:
        with self._lock:
            events = self._waiters.pop(group, ())
        for event in events:
            event.set()

    def _gap(self) -> None:
        """The connection was lost (reader only): what was published since it was last
        heard from reached no one here; the groups subscribed again are recovered from
        then (:meth:`_recover_commands`)."""
        times = [*self._recover.values(), *(gap for _, gap in self._recovered)]
        for at in (self._last_heard, self._gap_from):
            if at is not None:
                times.append(at)
        self._gap_from = min(times) if times else None
        self._last_heard = None
        self._recover, self._recovered = {}, []

    def _recover_commands(self) -> None:
        """Hand the groups subscribed again after a loss to ``control.missed`` (reader
        only; its listeners do not block): the commands sent to them while nothing here
        was subscribed (a ``users.disconnect``, a logout in another process) were
        published to no one here. One second more than the gap: a command that was
        handled already is handled again (a close is idempotent, a check costs a
        lookup) rather than one missed."""
        from dwebsocket.groups import control

        now = time.monotonic()
        by_gap: dict[float, list[str]] = {}
        for group, gap in self._recovered:
            by_gap.setdefault(gap, []).append(group)
        self._recovered = []
        for gap, groups in by_gap.items():
            control.missed(self.layer.registry, groups, now - gap + 1.0)

    def _lost(self) -> None:
        """The connection is gone: nothing is subscribed, nobody waits for it."""
        self.subscribed = frozenset()
        self._requested = set()
        self._in_flight = {}
        self._subscribing = collections.deque()
        with self._lock:
            self.connected, self.down = False, True
            waiters, self._waiters = self._waiters, {}
        for events in waiters.values():
            for event in events:
                event.set()
