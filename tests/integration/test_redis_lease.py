"""The redis lease against a real redis-server (tests/redisserver.py): competition, fencing
terms, renew deadline, operator commands (DEL, FLUSHALL, restart), and every error class.

Keys are read back with the real redis-cli, as an operator would. Each test uses its own
redis-server on a free loopback port and its own key prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio

from gossip_agent import errors
from gossip_agent.leases import redis as redis_lease
from lab import localredis as redisserver
from tests.conftest import require

pytestmark = pytest.mark.integration

TTL = 3.0
DEADLINE = 1.5
TIMEOUT = 0.5
RETRY = 0.2


def settings(url: str, prefix: str, **overrides: object) -> redis_lease.Settings:
    values: dict[str, object] = dict(
        url=url, key_prefix=prefix, ttl=TTL, renew_deadline=DEADLINE, timeout=TIMEOUT,
        retry_base=RETRY, retry_cap=TTL)
    values.update(overrides)
    return redis_lease.Settings(**values)  # type: ignore[arg-type]


def redis_cli(server: redisserver.RedisServer, *args: str) -> str:
    require(shutil.which("redis-cli") is not None, "redis-cli (Debian package redis-tools)")
    out = subprocess.run(["redis-cli", "-h", server.host, "-p", str(server.port), *args],
                         capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip()


Factory = Callable[..., redis_lease.RedisLease]


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest_asyncio.fixture
async def leases(
    redis_server: redisserver.RedisServer, prefix: str
) -> AsyncIterator[Factory]:
    made: list[redis_lease.RedisLease] = []

    def make(node: str = "node-a", url: str = "", **overrides: object) -> redis_lease.RedisLease:
        lease = redis_lease.RedisLease(
            settings=settings(url or redis_server.url, prefix, **overrides), node=node)
        made.append(lease)
        return lease

    try:
        yield make
    finally:
        for lease in made:
            await lease.close()


async def unavailable(call: Awaitable[object]) -> tuple[str, float]:
    """The LeaseUnavailable message a call raises, and how long it took."""
    started = time.monotonic()
    with pytest.raises(errors.LeaseUnavailable) as caught:
        await call
    return str(caught.value), time.monotonic() - started


# --- competition and terms -------------------------------------------------------------------


async def test_one_of_five_competing_agents_wins_each_round_and_terms_strictly_increase(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    competitors = [leases(f"node-{i}") for i in range(5)]
    terms: list[int] = []
    for _ in range(10):
        grants = await asyncio.gather(*(c.try_acquire(min_term=1) for c in competitors))
        winners = [(c, g) for c, g in zip(competitors, grants, strict=True) if g is not None]
        assert len(winners) == 1, f"{len(winners)} holders at once: {grants}"
        winner, grant = winners[0]
        assert redis_cli(redis_server, "GET", f"{prefix}leader") == winner.holder
        assert redis_cli(redis_server, "HGET", f"{prefix}leader_record", "term") == str(
            grant.term)
        terms.append(grant.term)
        await winner.release()
    assert terms == sorted(set(terms)), f"terms did not strictly increase: {terms}"


async def test_the_record_holder_term_and_ttl_are_readable_with_redis_cli(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    lease = leases("node-a")
    before = time.time()
    grant = await lease.try_acquire(min_term=1)
    assert grant is not None
    pttl = int(redis_cli(redis_server, "PTTL", f"{prefix}leader"))
    assert 0 < pttl <= TTL * 1000
    fields = redis_cli(redis_server, "HGETALL", f"{prefix}leader_record").split("\n")
    record = dict(zip(fields[::2], fields[1::2], strict=True))
    assert record["holder"] == lease.holder and record["term"] == str(grant.term)
    assert before - 1 <= int(record["acquired_unix_ms"]) / 1000 <= time.time() + 1
    read = await lease.read()
    assert read is not None and (read.holder, read.term, read.node) == (
        lease.holder, grant.term, "node-a")


async def test_the_term_is_lifted_to_min_term_when_the_counter_is_behind(
    leases: Factory,
) -> None:
    grant = await leases("node-a").try_acquire(min_term=42)
    assert grant is not None and grant.term == 42


async def test_renew_keeps_the_key_alive_past_its_ttl(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    lease = leases("node-a", ttl=1.0, renew_deadline=0.8, timeout=0.3)
    assert await lease.try_acquire(min_term=1) is not None
    until = time.monotonic() + 2.5  # 2.5 TTLs: the key would be gone without renewals
    while time.monotonic() < until:
        assert await lease.renew(), "renewal failed while nobody else touched the key"
        await asyncio.sleep(0.2)
    assert redis_cli(redis_server, "GET", f"{prefix}leader") == lease.holder


# --- the operator's commands and lost data ----------------------------------------------------


async def test_del_of_the_leader_key_makes_the_holder_step_down_and_the_next_term_higher(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    old, new = leases("node-a"), leases("node-b")
    first = await old.try_acquire(min_term=1)
    assert first is not None
    redis_cli(redis_server, "DEL", f"{prefix}leader")
    assert not await old.renew()
    second = await new.try_acquire(min_term=1)
    assert second is not None and second.term > first.term
    await old.release()  # the old holder's release must not delete the new holder's key
    assert redis_cli(redis_server, "GET", f"{prefix}leader") == new.holder


async def test_flushall_is_survived_the_term_still_increases_through_min_term(
    leases: Factory, redis_server: redisserver.RedisServer
) -> None:
    old, new = leases("node-a"), leases("node-b")
    first = await old.try_acquire(min_term=7)
    assert first is not None and first.term == 7
    redis_cli(redis_server, "FLUSHALL")
    assert not await old.renew()
    with pytest.raises(errors.LeaseLost):
        await old.bump(min_term=8)
    # The counter restarted at 0; the agent passes the highest term it saw in gossip + 1.
    second = await new.try_acquire(min_term=first.term + 1)
    assert second is not None and second.term == first.term + 1


async def test_a_redis_restart_without_persistence_loses_the_lease_and_terms_still_increase(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    old, new = leases("node-a"), leases("node-b")
    first = await old.try_acquire(min_term=1)
    assert first is not None
    redis_server.restart()
    assert redis_cli(redis_server, "EXISTS", f"{prefix}leader_record") == "0"
    assert not await old.renew(), "the holder kept a lease the restarted Redis forgot"
    second = await new.try_acquire(min_term=first.term + 1)
    assert second is not None and second.term > first.term
    assert redis_cli(redis_server, "GET", f"{prefix}leader") == new.holder


async def test_renew_gives_up_at_the_deadline_while_redis_hangs_before_the_key_expires(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    lease = leases("node-a")
    assert await lease.try_acquire(min_term=1) is not None
    assert redis_server.process is not None
    acquired = time.monotonic()
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        assert not await lease.renew()
        gave_up = time.monotonic() - acquired
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    # It stopped acting no later than its deadline (plus scheduling margin)...
    assert gave_up <= DEADLINE + 0.5, f"renew gave up {gave_up:.2f}s after the acquisition"
    # ...while the server still had the key: no moment with two holders acting.
    pttl = int(redis_cli(redis_server, "PTTL", f"{prefix}leader"))
    assert pttl > 0, f"the key expired ({pttl}) before the holder stopped acting"
    assert not await lease.renew(), "a holder that gave up must acquire anew, not renew"


async def test_bump_moves_the_term_above_min_term_and_the_counter_keeps_it(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    lease = leases("node-a")
    grant = await lease.try_acquire(min_term=1)
    assert grant is not None
    assert await lease.bump(min_term=1) == grant.term + 1
    assert await lease.bump(min_term=20) == 20
    await lease.release()
    again = await leases("node-b").try_acquire(min_term=1)
    assert again is not None and again.term == 21
    assert redis_cli(redis_server, "HGET", f"{prefix}leader_record", "term") == "21"


# --- errors: a clear message, within the timeout, and backoff ---------------------------------


async def test_a_wrong_password_is_reported_as_refused_credentials(leases: Factory) -> None:
    require(redisserver.available(), "redis-server")
    server = redisserver.RedisServer(password="s3cret").start()
    try:
        wrong = f"redis://:nope@{server.address}/0"
        message, took = await unavailable(leases(url=wrong).try_acquire(min_term=1))
        assert "refused the credentials" in message and server.address in message
        assert "nope" not in message, "the password leaked into the message"
        message, _ = await unavailable(leases(url=f"redis://{server.address}/0")
                                       .try_acquire(min_term=1))
        assert "requires a password" in message
        assert took < TIMEOUT * 3
        assert await leases(url=server.url).try_acquire(min_term=1) is not None
    finally:
        server.cleanup()


async def test_a_port_with_nothing_listening_is_reported_as_unreachable(
    leases: Factory,
) -> None:
    port = redisserver.localcluster.free_ports(1)[0]
    message, took = await unavailable(
        leases(url=f"redis://127.0.0.1:{port}/0").try_acquire(min_term=1))
    assert message.startswith(f"cannot reach Redis at redis://127.0.0.1:{port}/0")
    assert took < TIMEOUT * 3


async def test_a_non_redis_server_is_reported_within_the_timeout(leases: Factory) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        message, took = await unavailable(
            leases(url=f"redis://127.0.0.1:{port}/0").try_acquire(min_term=1))
    finally:
        server.close()
        await server.wait_closed()
    assert f"127.0.0.1:{port}" in message
    assert "does not answer like a Redis server" in message, message
    assert took < TIMEOUT * 3


async def test_a_silent_server_times_out_and_failed_attempts_back_off(leases: Factory) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lease = leases(url=f"redis://127.0.0.1:{port}/0", retry_base=1.0, retry_cap=1.0)
    try:
        message, took = await unavailable(lease.try_acquire(min_term=1))
        assert "did not answer in time" in message
        assert TIMEOUT * 0.9 <= took < TIMEOUT * 3
        assert len(accepted) == 1
        # Within the backoff the same error comes back without touching the server.
        again, quick = await unavailable(lease.try_acquire(min_term=1))
        assert again == message and quick < 0.1 and len(accepted) == 1
        await asyncio.sleep(1.0)
        await unavailable(lease.try_acquire(min_term=1))
        assert len(accepted) == 2, "no new attempt after the backoff"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_key_of_the_wrong_type_is_reported_naming_the_key(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    redis_cli(redis_server, "HSET", f"{prefix}leader", "node", "x")
    message, _ = await unavailable(leases().try_acquire(min_term=1))
    assert "wrong type" in message and f"{prefix}leader" in message
    redis_cli(redis_server, "DEL", f"{prefix}leader")
    assert await leases().try_acquire(min_term=1) is not None


async def test_a_read_only_replica_is_reported_as_readonly(
    leases: Factory, redis_server: redisserver.RedisServer
) -> None:
    replica = redisserver.RedisServer(
        extra_args=["--replicaof", redis_server.host, str(redis_server.port)]).start()
    try:
        message, _ = await unavailable(leases(url=replica.url).try_acquire(min_term=1))
    finally:
        replica.cleanup()
    assert "read-only replica (READONLY)" in message and replica.address in message


# --- the mirror keys --------------------------------------------------------------------------


async def test_only_the_holder_mirrors_and_the_mirror_never_goes_back(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    holder, other = leases("node-a"), leases("node-b")
    grant = await holder.try_acquire(min_term=1)
    assert grant is not None

    def doc(seq: int) -> str:
        return json.dumps({"term": grant.term, "seq": seq, "services": []})

    assert await holder.mirror_snapshot(term=grant.term, seq=2, document=doc(2))
    assert not await holder.mirror_snapshot(term=grant.term, seq=1, document=doc(1))
    assert not await other.mirror_snapshot(term=grant.term, seq=3, document=doc(3))
    await other.try_acquire(min_term=1)  # held by node-a: no grant, nothing written
    assert json.loads(redis_cli(redis_server, "GET", f"{prefix}service_list"))["seq"] == 2
    assert await holder.read_mirror() == doc(2)


async def test_heartbeats_are_stamped_with_redis_time_and_stale_ones_are_dropped(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    a, b = leases("node-a"), leases("node-b")
    await a.heartbeat(term=3, seq=4, leader="node-a", period=0.01)  # stale after 0.3 s
    await b.heartbeat(term=3, seq=4, leader="node-a", period=10)
    fields = redis_cli(redis_server, "HGETALL", f"{prefix}coordination").split("\n")
    entries = {k: json.loads(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
    assert set(entries) == {"node-a", "node-b"}
    redis_now_ms = int(redis_cli(redis_server, "TIME").split("\n")[0]) * 1000
    for entry in entries.values():
        assert {k: entry[k] for k in ("term", "seq", "leader")} == {
            "term": 3, "seq": 4, "leader": "node-a"}
        assert abs(entry["heartbeat_unix_ms"] - redis_now_ms) < 5000
    await asyncio.sleep(0.4)
    await b.heartbeat(term=3, seq=5, leader="node-a", period=0.01)
    fields = redis_cli(redis_server, "HGETALL", f"{prefix}coordination").split("\n")
    assert fields[::2] == ["node-b"], "node-a's stale heartbeat was kept"


# Other nodes' entries in <prefix>coordination for the cost tests: a cluster of 2,000 nodes.
OTHER_NODES = 2000
# Entries one heartbeat may remove: a batch far below OTHER_NODES (the script's own limit,
# leases.redis.PRUNE_PER_HEARTBEAT, is smaller still; the test does not depend on its value).
BOUNDED_BATCH = 64


def fill_coordination(server: redisserver.RedisServer, key: str, *, age_ms: int) -> None:
    """OTHER_NODES entries in the documented layout (node -> heartbeat JSON, as HGETALL shows
    them), heartbeats `age_ms` old on Redis's clock, written in one server-side call."""
    redis_cli(server, "EVAL", """
        local t = redis.call('TIME')
        local at = tonumber(t[1]) * 1000 - tonumber(ARGV[2])
        for i = 1, tonumber(ARGV[1]) do
          redis.call('HSET', KEYS[1], 'other-' .. i, cjson.encode({
            heartbeat_unix_ms = at, term = 3, seq = 4, leader = 'node-a'}))
        end""", "1", key, str(OTHER_NODES), str(age_ms))


def command_calls(server: redisserver.RedisServer) -> dict[str, int]:
    """INFO commandstats as {command: calls}: commands a Lua script runs are counted too."""
    calls = {}
    for line in redis_cli(server, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            calls[name.removeprefix("cmdstat_")] = int(fields.split(",")[0].split("=")[1])
    return calls


async def test_a_heartbeat_never_reads_the_other_nodes_entries(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    """O(1) per heartbeat, not O(N): with 2,000 live nodes' entries present, a heartbeat runs
    no command that reads the whole hash (the seed's HGETALL per renewal made the cluster's
    heartbeats O(N^2)), and keeps every live entry."""
    key = f"{prefix}coordination"
    fill_coordination(redis_server, key, age_ms=0)
    lease = leases("node-a")
    redis_cli(redis_server, "CONFIG", "RESETSTAT")
    for _ in range(3):
        await lease.heartbeat(term=3, seq=4, leader="node-a", period=10)
    calls = command_calls(redis_server)
    wholesale = {c: calls[c] for c in ("hgetall", "hkeys", "hvals", "hscan") if c in calls}
    assert not wholesale, f"a heartbeat read the whole {key} hash: {wholesale}"
    assert int(redis_cli(redis_server, "HLEN", key)) == OTHER_NODES + 1


async def test_stale_entries_are_removed_in_bounded_batches_until_none_is_left(
    leases: Factory, redis_server: redisserver.RedisServer, prefix: str
) -> None:
    """2,000 nodes that left (heartbeats an hour old): each heartbeat removes at most a small
    batch of them, never all at once, and repeated heartbeats remove every one of them while
    the live node's own entry stays."""
    key = f"{prefix}coordination"
    fill_coordination(redis_server, key, age_ms=3_600_000)
    lease = leases("node-a")
    left = OTHER_NODES + 1
    removed: list[int] = []
    for _ in range(OTHER_NODES):  # ample: one entry per heartbeat would do
        await lease.heartbeat(term=3, seq=4, leader="node-a", period=1)
        now = int(redis_cli(redis_server, "HLEN", key))
        removed.append(left - now)
        left = now
        if left == 1:
            break
    assert max(removed) <= BOUNDED_BATCH, (
        f"one heartbeat removed {max(removed)} entries: the work grows with the cluster")
    assert left == 1, f"{left - 1} stale entries left after {len(removed)} heartbeats"
    assert redis_cli(redis_server, "HKEYS", key) == "node-a"


@pytest.fixture
def unreachable_host() -> Iterator[str]:
    """An address nothing answers, not even with a reset: the far end of a veth pair whose
    namespace (ga5-*, made and removed here) blackholes every reply. A SYN gets no answer."""
    require(shutil.which("ip") is not None and os.geteuid() == 0, "iproute2 and root")
    suffix = uuid.uuid4().hex[:6]
    netns, host_dev, ns_dev = f"ga5-{suffix}", f"ga5h{suffix}", f"ga5n{suffix}"
    third = int(suffix[:2], 16)
    host_ip, ns_ip = f"10.55.{third}.1", f"10.55.{third}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", netns)
        ip("link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
        ip("link", "set", ns_dev, "netns", netns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_dev)
        ip("link", "set", host_dev, "up")
        ip("-n", netns, "addr", "add", f"{ns_ip}/30", "dev", ns_dev)
        ip("-n", netns, "link", "set", ns_dev, "up")
        ip("-n", netns, "route", "add", "blackhole", f"{host_ip}/32")
        yield ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)


async def test_an_unreachable_host_is_reported_within_the_connect_timeout(
    leases: Factory, unreachable_host: str
) -> None:
    message, took = await unavailable(
        leases(url=f"redis://{unreachable_host}:6379/0").try_acquire(min_term=1))
    assert f"{unreachable_host}:6379" in message
    assert "did not answer in time" in message, message  # no reset: only the timeout tells
    assert took < TIMEOUT * 3, f"reported after {took:.2f}s"
    print(f"{message} ({took:.2f}s)")
