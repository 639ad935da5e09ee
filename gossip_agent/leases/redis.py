"""The redis lease: a TTL key with a fencing counter, over redis-py's asyncio client.

The only module that imports redis (an import-linter contract keeps it so); every redis or
socket failure leaves it as errors.LeaseUnavailable with a sentence naming the server.

Keys, under REDIS_KEY_PREFIX (default "ebpf:", the seed's names), readable with redis-cli:
    <prefix>leader          string: the holder "<node>#<pid>-<random>", PX LEASE_TTL.
                            Absent = nobody leads. `DEL` forces a new election.
    <prefix>leader_record   hash: term (the fencing counter, never expires), holder (""
                            once released), acquired_unix_ms (the holder's wall clock, for
                            people only: expiry is judged by the key's TTL and the holder's
                            monotonic clock, never by comparing clocks).
    <prefix>service_list    string: the leader's latest snapshot as JSON (gossip.mirror).
    <prefix>coordination    hash: node -> JSON {heartbeat_unix_ms (Redis's clock), term,
                            seq, leader} (gossip.mirror). What operators read (HGETALL).
    <prefix>coordination_times
                            sorted set: node -> heartbeat_unix_ms (the score), written in
                            the same script as the hash: the index that finds stale entries
                            without reading the others. It may list a node the hash lost
                            (removed when stale); never rely on it for anything else.

Invariants:
- The term is taken in the same Lua script as the SET, so the counter and the holder can never
  disagree, and it is max(counter + 1, min_term): the caller passes min_term above every term
  it has seen in gossip, so a Redis that lost its data (restart without persistence, FLUSHALL,
  a Sentinel failover to a lagging replica) cannot rewind terms.
- renew / bump / release / mirror writes are compare-and-act scripts: they touch the keys only
  while <prefix>leader still names this holder.
- Heartbeats (task `lease.mirror`, every LEASE_RENEW_INTERVAL on every agent) cost O(log N)
  each, not O(N): HSET and ZADD of the node's own entry, one ZRANGEBYSCORE ... LIMIT for at
  most PRUNE_PER_HEARTBEAT entries silent for STALE_HEARTBEATS periods, and their HDEL / ZREM.
  No heartbeat reads the other nodes' entries: an HGETALL per renewal made the cluster's
  heartbeats O(N^2) per period. Measured here (Redis time per heartbeat, commandstats): 17 us
  at N = 0, 2,000 or 5,000 entries, against 1.7 ms at 1,000, 3.0 ms at 2,000 and 8.7 ms at
  5,000 with the HGETALL: at 5,000 nodes and a 1 s period, 85 ms of Redis per period instead
  of 43 s (more than the server has).
  A node that left leaves HGETALL once it has been silent STALE_HEARTBEATS periods, at the
  first heartbeat whose batch reaches it (the oldest go first; N live agents expire up to
  N x PRUNE_PER_HEARTBEAT entries per period).
- The leader's right to act is measured on its own monotonic clock: valid until the START of
  its last successful renewal + LEASE_RENEW_DEADLINE (< LEASE_TTL). The server set the key's
  expiry after that start, so the holder stops before the key can expire on the server, and
  a renewal that hangs is cut off at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.asyncio.connection as aioredis_connection
import redis.asyncio.retry as aioredis_retry
import redis.asyncio.sentinel as aioredis_sentinel
import redis.backoff as redis_backoff
import redis.exceptions as redis_errors

from gossip_agent import errors
from gossip_agent.leases import base

T = TypeVar("T")
log = logging.getLogger("gossip_agent.lease.redis")

# A renewal that failed on a broken connection is retried until the deadline, this often: a
# Redis that restarted or a connection the pool had kept open for a dead peer costs one
# reconnect, not the lease.
RENEW_RETRY_PAUSE = 0.05

# Heartbeats in <prefix>coordination older than this many heartbeat periods are dropped by
# the heartbeat scripts that follow (a node that left; judged on Redis's own clock).
STALE_HEARTBEATS = 30
# Entries one heartbeat may expire (and, while entries without a time exist, adopt): the
# script's work stays constant whatever the cluster's size. Every live agent heartbeats once
# per period, so N agents expire up to N x 16 entries per period; even a lone survivor of a
# mass departure clears 5,000 entries within 313 periods. Each removal costs the script about
# a microsecond, so a full batch stays far below a millisecond of Redis time.
PRUNE_PER_HEARTBEAT = 16

# KEYS[1] leader, KEYS[2] record; ARGV holder, ttl_ms, min_term, now_ms.
# Returns {term, ""} when this holder now has the lease, {0, current holder} otherwise.
# A holder that still finds its own name (it stepped down after a renewal it could not
# confirm) takes a NEW term: every acquisition increments the counter.
ACQUIRE_LUA = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {0, current}
end
if current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
local term = redis.call('HINCRBY', KEYS[2], 'term', 1)
local floor = tonumber(ARGV[3])
if term < floor then
  term = floor
end
redis.call('HSET', KEYS[2], 'term', term, 'holder', ARGV[1], 'acquired_unix_ms', ARGV[4])
return {term, ''}
"""

# KEYS[1] leader; ARGV holder, ttl_ms. 1 = still held (expiry pushed out), 0 = lost.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] leader, KEYS[2] record; ARGV holder, min_term. The new term, or 0 when not held.
BUMP_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local term = redis.call('HINCRBY', KEYS[2], 'term', 1)
local floor = tonumber(ARGV[2])
if term < floor then
  term = floor
  redis.call('HSET', KEYS[2], 'term', term)
end
return term
"""

# KEYS[1] leader, KEYS[2] record; ARGV holder. Deletes the key only if this holder has it; the
# counter stays. 1 = released, 0 = it was not held.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'holder', '')
return 1
"""

# KEYS[1] leader, KEYS[2] service_list; ARGV holder, term, seq, document. Writes the mirror
# only while this holder has the lease AND the stored version is lower: the mirror never goes
# back, whoever writes. An unreadable stored value is replaced. 1 = written, 0 = not.
MIRROR_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local old = redis.call('GET', KEYS[2])
if old then
  local ok, stored = pcall(cjson.decode, old)
  if ok and type(stored) == 'table' and type(stored.term) == 'number'
      and type(stored.seq) == 'number' then
    local term, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
    if stored.term > term or (stored.term == term and stored.seq >= seq) then
      return 0
    end
  end
end
redis.call('SET', KEYS[2], ARGV[4])
return 1
"""

# KEYS[1] coordination, KEYS[2] coordination_times; ARGV node, term, seq, leader, stale_ms,
# limit. Stamps this node's heartbeat with Redis's clock (one clock for every node) in both
# keys, then expires at most `limit` entries silent for more than stale_ms: the oldest, found
# through the sorted set's order, never by reading the other nodes' entries. Returns now.
#
# Entries the sorted set does not list (written by an older agent that kept no times, or by
# hand) are adopted a few at a time: while the hash holds more fields than the set (HLEN and
# ZCARD are O(1)), `limit` random fields are indexed under their own heartbeat time, or 0 when
# their value is not a heartbeat, so the next prune removes them like any stale entry.
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({
  heartbeat_unix_ms = now, term = tonumber(ARGV[2]), seq = tonumber(ARGV[3]),
  leader = ARGV[4]}))
redis.call('ZADD', KEYS[2], now, ARGV[1])
if redis.call('HLEN', KEYS[1]) > redis.call('ZCARD', KEYS[2]) then
  local sample = redis.call('HRANDFIELD', KEYS[1], limit, 'WITHVALUES')
  for i = 1, #sample, 2 do
    if not redis.call('ZSCORE', KEYS[2], sample[i]) then
      local ok, entry = pcall(cjson.decode, sample[i + 1])
      local at = 0
      if ok and type(entry) == 'table' and type(entry.heartbeat_unix_ms) == 'number' then
        at = entry.heartbeat_unix_ms
      end
      redis.call('ZADD', KEYS[2], at, sample[i])
    end
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf',
  '(' .. (now - tonumber(ARGV[5])), 'LIMIT', 0, limit)
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
  redis.call('ZREM', KEYS[2], unpack(stale))
end
return now
"""


@dataclasses.dataclass(frozen=True)
class Keys:
    leader: str
    record: str
    service_list: str
    coordination: str
    coordination_times: str

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(f"{prefix}leader", f"{prefix}leader_record", f"{prefix}service_list",
                   f"{prefix}coordination", f"{prefix}coordination_times")


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str  # "" with sentinels: they name the master
    key_prefix: str
    ttl: float
    renew_deadline: float
    timeout: float  # connect and per-command
    retry_base: float  # first pause after a failed acquisition attempt
    retry_cap: float  # longest pause
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = "mymaster"


def describe_url(url: str) -> str:
    """The server as people should see it in messages: no password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or ''}"


def explain(exc: BaseException, *, server: str, keys: Keys) -> str:
    """A plain sentence for a redis or socket failure, naming the server and what to check."""
    text = str(exc) or type(exc).__name__
    if "NOAUTH" in text or "Authentication required" in text:
        return f"Redis at {server} requires a password ({text}): set it in REDIS_URL"
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.NoPermissionError):
        return f"Redis at {server} refused the credentials ({text}): check REDIS_URL's password"
    if isinstance(exc, redis_errors.AuthenticationWrongNumberOfArgsError):
        return f"Redis at {server} refused the credentials ({text}): check REDIS_URL"
    if isinstance(exc, redis_errors.ReadOnlyError):
        return (f"Redis at {server} is a read-only replica (READONLY): point REDIS_URL at the "
                "master, or use REDIS_SENTINELS")
    if isinstance(exc, redis_errors.ResponseError) and "WRONGTYPE" in text:
        return (f"Redis at {server}: {keys.leader} or {keys.record} holds a value of the "
                f"wrong type ({text}); delete the key, or change REDIS_KEY_PREFIX")
    if isinstance(exc, redis_errors.InvalidResponse):
        return f"{server} does not answer like a Redis server ({text}): check REDIS_URL's port"
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        return f"Redis at {server} did not answer in time"
    if isinstance(exc, aioredis_sentinel.MasterNotFoundError):
        return f"no Redis master from the sentinels: {text}"
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return f"cannot reach Redis at {server}: {text}"
    return f"Redis at {server}: {text}"


def _client(settings: Settings) -> tuple[aioredis.Redis, str]:
    """A client that fails fast (no library retries: the callers retry on their own timers).

    The socket read timeout is only a backstop (the renew deadline): each call has its own
    budget (RedisLease._run), so a renewal slowed by a lossy path may take as long as the
    leader's deadline allows, while other calls give up after REDIS_TIMEOUT.
    """
    common: dict[str, Any] = {
        "socket_timeout": settings.renew_deadline,
        "socket_connect_timeout": settings.timeout,
        "retry": aioredis_retry.Retry(redis_backoff.NoBackoff(), 0),
        "decode_responses": True,
    }
    if not settings.sentinels:
        return aioredis.Redis.from_url(settings.url, **common), describe_url(settings.url)
    from_url = aioredis_connection.parse_url(settings.url) if settings.url else {}
    auth: dict[str, Any] = {
        k: from_url[k] for k in ("username", "password", "db") if from_url.get(k)}
    if from_url.get("connection_class") is aioredis_connection.SSLConnection:
        auth["ssl"] = True
    sentinel = aioredis_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        [_host_port(address) for address in settings.sentinels],
        sentinel_kwargs={"socket_timeout": settings.timeout,
                         "socket_connect_timeout": settings.timeout},
        **common,
    )
    client = sentinel.master_for(settings.sentinel_master, **common, **auth)
    where = f"master {settings.sentinel_master!r} of sentinels {','.join(settings.sentinels)}"
    return client, where


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class RedisLease:
    """leases.base.Lease (and gossip.mirror.Sink) over one Redis; see the module docstring."""

    backend = "redis"
    note = ""

    def __init__(self, *, settings: Settings, node: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.holder = base.holder_identity(node)
        self.node = node
        self.settings = settings
        self.keys = Keys.under(settings.key_prefix)
        self._clock = clock
        self._client, self.server = _client(settings)
        self._ttl_ms = max(1, round(settings.ttl * 1000))
        self._acquire = self._client.register_script(ACQUIRE_LUA)
        self._renew = self._client.register_script(RENEW_LUA)
        self._bump = self._client.register_script(BUMP_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        self._mirror = self._client.register_script(MIRROR_LUA)
        self._heartbeat = self._client.register_script(HEARTBEAT_LUA)
        self._valid_until: float | None = None  # monotonic; None = not held
        self._term = 0
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: errors.LeaseUnavailable | None = None

    # -- the Lease protocol -------------------------------------------------------------------

    async def try_acquire(self, *, min_term: int) -> base.Grant | None:
        """One attempt (subject to the backoff, see _backed_off)."""
        now = self._clock()
        reply = await self._backed_off(lambda: self._acquire(
            keys=[self.keys.leader, self.keys.record],
            args=[self.holder, self._ttl_ms, max(1, min_term), int(time.time() * 1000)]))
        term = int(reply[0])
        if term == 0:
            self._valid_until = None
            return None
        self._term = term
        self._valid_until = now + self.settings.renew_deadline
        return base.Grant(self.holder, term)

    async def _backed_off(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs a follower's call (acquire, heartbeat, warm start) unless recent calls failed:
        then the last error is raised again, without touching Redis, until the backoff has
        passed (retry_base doubling up to retry_cap). One backoff per agent, so N agents cost
        an unreachable or recovering Redis at most N connections per retry_cap."""
        now = self._clock()
        if self._last_error is not None and now < self._retry_at:
            raise self._last_error
        try:
            result = await self._run(make())
        except errors.LeaseUnavailable as exc:
            self._back_off(exc, now=now)
            raise
        self._failures, self._last_error = 0, None
        return result

    def _back_off(self, exc: errors.LeaseUnavailable, *, now: float) -> None:
        delay = min(self.settings.retry_cap, self.settings.retry_base * 2 ** self._failures)
        self._failures += 1
        self._retry_at = now + delay
        self._last_error = exc

    async def renew(self) -> bool:
        """True when Redis confirmed, within the renew deadline, that this holder still has the
        key (and pushed its expiry out). False, at once and for good, otherwise: the caller
        steps down and must acquire anew."""
        if self._valid_until is None:
            return False
        while True:
            started = self._clock()
            remaining = self._valid_until - started
            if remaining <= 0:
                self._valid_until = None
                return False
            try:
                still = await self._run(self._renew(
                    keys=[self.keys.leader], args=[self.holder, self._ttl_ms]), budget=remaining)
            except errors.LeaseUnavailable as exc:
                log.info("renewal attempt failed, retrying until the deadline: %s", exc)
                await asyncio.sleep(min(RENEW_RETRY_PAUSE, max(0.0, remaining)))
                continue
            if int(still) != 1:
                self._valid_until = None
                return False
            self._valid_until = started + self.settings.renew_deadline
            return True

    def proven(self) -> bool:
        """Held, and the renew deadline has not passed on the monotonic clock."""
        return self._valid_until is not None and self._clock() < self._valid_until

    async def bump(self, *, min_term: int) -> int:
        if self._valid_until is None or self._clock() >= self._valid_until:
            self._valid_until = None
            raise errors.LeaseLost(f"lease {self.keys.leader} is not held by {self.holder}")
        term = int(await self._run(self._bump(
            keys=[self.keys.leader, self.keys.record], args=[self.holder, min_term])))
        if term == 0:
            self._valid_until = None
            raise errors.LeaseLost(f"lease {self.keys.leader} lost at term {self._term}")
        self._term = term
        return term

    async def release(self) -> None:
        """Deletes the key if this holder still has it, so a follower takes over at once."""
        if self._valid_until is None:
            return
        self._valid_until = None
        await self._run(self._release(
            keys=[self.keys.leader, self.keys.record], args=[self.holder]))

    async def read(self) -> base.LeaseRecord | None:
        async def both() -> tuple[Any, Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.leader)
                pipe.hgetall(self.keys.record)
                holder, record = await pipe.execute()
            return holder, record

        holder, record = await self._run(both())
        if holder is None and not record:
            return None
        record = record or {}
        try:
            return base.LeaseRecord(
                holder or "", int(record.get("term", 0)),
                int(record.get("acquired_unix_ms", 0)) / 1000)
        except ValueError as exc:
            raise errors.LeaseUnavailable(
                f"Redis at {self.server}: {self.keys.record} is not a lease record: {exc}"
            ) from exc

    async def close(self) -> None:
        """Releases (a follower takes over at once) and closes the sockets. A Redis that
        cannot be reached now only delays the next leader to the key's expiry: logged."""
        try:
            await self.release()
        except errors.LeaseUnavailable as exc:
            log.warning("could not release the lease: %s", exc)
        finally:
            with contextlib.suppress(Exception):  # closing sockets: nothing left to report
                await self._client.aclose()

    # -- gossip.mirror.Sink -------------------------------------------------------------------

    async def mirror_snapshot(self, *, term: int, seq: int, document: str) -> bool:
        """Writes <prefix>service_list if this holder leads and the stored version is lower."""
        if self._valid_until is None:
            return False
        written = await self._run(self._mirror(
            keys=[self.keys.leader, self.keys.service_list],
            args=[self.holder, term, seq, document]))
        return int(written) == 1

    async def heartbeat(self, *, term: int, seq: int, leader: str, period: float) -> None:
        """Stamps this node's entry in <prefix>coordination (Redis's clock) and expires a
        bounded batch of stale ones (HEARTBEAT_LUA)."""
        stale_ms = max(1, round(period * STALE_HEARTBEATS * 1000))
        await self._backed_off(lambda: self._heartbeat(
            keys=[self.keys.coordination, self.keys.coordination_times],
            args=[self.node, term, seq, leader, stale_ms, PRUNE_PER_HEARTBEAT]))

    async def read_mirror(self) -> str | None:
        value = await self._backed_off(lambda: self._client.get(self.keys.service_list))
        return None if value is None else str(value)

    # -- the boundary -------------------------------------------------------------------------

    async def _run(self, call: Awaitable[T], *, budget: float | None = None) -> T:
        """Awaits one Redis call within `budget` seconds (default REDIS_TIMEOUT); every
        failure, the timeout included, leaves as LeaseUnavailable. A call cut off by the
        timeout makes redis-py drop that connection, so no late reply is ever misread."""
        async with self._boundary():
            async with asyncio.timeout(self.settings.timeout if budget is None else budget):
                return await call

    @contextlib.asynccontextmanager
    async def _boundary(self) -> AsyncIterator[None]:
        try:
            yield
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise errors.LeaseUnavailable(
                explain(exc, server=self.server, keys=self.keys)) from exc
