"""End to end with COORDINATION_BACKEND=redis: agent processes, real pinned BPF maps, and a real
redis-server (tests/redisserver.py) that the tests kill, restart, flush and freeze.

Safety is asserted strictly on every sample: at most one node per term (GetLeader from every
agent, and the lease record read with redis-cli), no version ever going backwards in any
agent's GetState or pinned meta (so nothing from an older term is adopted after a newer one),
and maps never going blank. Deadlines are liveness bounds; the one timing requirement is the
failover after SIGKILL: LEASE_TTL + LEASE_RETRY_INTERVAL (plus polling slack).

PROFILE=local timers: LEASE_TTL 2 s, LEASE_RENEW_DEADLINE 1.4 s, LEASE_RENEW_INTERVAL 0.5 s,
LEASE_RETRY_INTERVAL 0.2 s, REDIS_TIMEOUT 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import mirror
from lab import localcluster
from lab import localredis as redisserver
from tests.conftest import require
from tests.e2e.test_local_cluster import (
    Agent,
    Clients,
    Sampler,
    agent_at,
    assert_never_backwards,
    key,
    leader_after_a_first_change,
    log_tail,
    pin_table,
    pins_hold,
    until,
    version,
    version_recorder,
    wait_exit,
    wait_serving,
)

pytestmark = pytest.mark.e2e

TTL = 2.0  # PROFILE=local's LEASE_TTL
RETRY = 0.2  # PROFILE=local's LEASE_RETRY_INTERVAL
SLACK = 1.0  # polling every 10 ms across agents, on a loaded 2-core machine


@pytest.fixture
def redis_env(redis_server: redisserver.RedisServer) -> Iterator[dict[str, str]]:
    require(shutil.which("redis-cli") is not None, "redis-cli (Debian package redis-tools)")
    yield {"COORDINATION_BACKEND": "redis", "REDIS_URL": redis_server.url,
           "REDIS_KEY_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}:"}


def cli(server: redisserver.RedisServer, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-h", server.host, "-p", str(server.port), *args],
                         capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip()


def redis_lease(server: redisserver.RedisServer, prefix: str) -> tuple[str, int]:
    """(holder's node, term) as an operator reads them with redis-cli."""
    holder = cli(server, "GET", f"{prefix}leader")
    term = cli(server, "HGET", f"{prefix}leader_record", "term")
    return holder.split("#", 1)[0], int(term or 0)


def leader_recorder(clients: Clients, agents: Sequence[Agent]) -> Sampler:
    """Samples every agent's GetLeader: (node that says it leads, term) pairs."""

    async def probe() -> set[tuple[str, int]]:
        # 2 s: GetLeader reads the record from Redis, which a test may have slowed down.
        replies = await asyncio.gather(*(clients.get_leader(a.address, 2.0) for a in agents))
        return {(a.node, r.term) for a, r in zip(agents, replies, strict=True)
                if r is not None and r.is_self}

    return Sampler("e2e.leader-recorder", probe, interval=0.02)


def assert_one_leader_per_term(recorder: Sampler) -> dict[int, str]:
    """No term was ever claimed by two nodes, and no two nodes claimed to lead at once with
    the same term. Returns term -> node."""
    owner: dict[int, str] = {}
    for _, claims in recorder.samples:
        for node, term in claims:
            assert owner.setdefault(term, node) == node, (
                f"term {term} claimed by {owner[term]} and {node}")
    return owner


async def sigkill_failover(
    cluster: localcluster.LocalCluster, clients: Clients, server: redisserver.RedisServer,
    prefix: str,
) -> None:
    leader_address, before, _ = await leader_after_a_first_change(cluster, clients)
    old = agent_at(cluster, leader_address)
    survivors = [a for a in cluster.agents if a is not old]
    async with version_recorder(clients, cluster.agents) as versions, \
            leader_recorder(clients, survivors) as leaders:
        old.signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def new_holder() -> tuple[bool, object]:
            replies = await asyncio.gather(
                *(clients.get_leader(a.address, 0.5) for a in survivors))
            for reply in replies:
                if reply is not None and reply.is_self and reply.term > before.term:
                    return True, (time.monotonic(), reply)
            return False, [(r.leader_node, r.term) if r else None for r in replies]

        seen_at, holder = await until("a survivor to lead at a higher term", new_holder,
                                      timeout=3 * (TTL + RETRY), interval=0.01)
        failover = seen_at - killed_at
        print(f"redis failover: SIGKILL -> {holder.leader_node} term {holder.term} "
              f"in {failover:.3f}s")
        assert failover < TTL + RETRY + SLACK, f"failover took {failover:.3f}s"
        assert await wait_exit(old, timeout=5) == -signal.SIGKILL
        node, term = redis_lease(server, prefix)
        assert node == holder.leader_node and term >= holder.term
        new = next(a for a in survivors if a.node == holder.leader_node)
        second = await clients.set_service(new.address, "10.96.0.2", 2)
        assert second.version.term > before.term
        await until("every surviving map to hold the change made through the new leader",
                    pins_hold(survivors, {key("10.96.0.1"): 1, key("10.96.0.2"): 2},
                              version(second.version)), timeout=15, running=survivors)
    assert_never_backwards(versions)
    assert_one_leader_per_term(leaders)
    assert pin_table(old.pin_dir) == {key("10.96.0.1"): 1}, "the dead leader's map changed"


async def test_redis_sigkill_of_the_leader_moves_the_lease_within_ttl_plus_retry(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    cluster = start_cluster(4, redis_env)
    await sigkill_failover(cluster, clients, redis_server, redis_env["REDIS_KEY_PREFIX"])


async def test_redis_sigstopped_leader_steps_down_on_waking_and_its_stale_writes_are_refused(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    cluster = start_cluster(3, redis_env)
    leader_address, before, _ = await leader_after_a_first_change(cluster, clients)
    old = agent_at(cluster, leader_address)
    survivors = [a for a in cluster.agents if a is not old]
    async with version_recorder(clients, survivors) as versions, \
            leader_recorder(clients, cluster.agents) as leaders:
        old.signal(signal.SIGSTOP)
        try:
            new_address, after = await localcluster.find_leader(
                [a.address for a in survivors], timeout=3 * (TTL + RETRY))
            assert after.term > before.term
            second = await clients.set_service(new_address, "10.96.0.2", 2)
            await until("the survivors to hold the new leader's change",
                        pins_hold(survivors, {key("10.96.0.1"): 1, key("10.96.0.2"): 2},
                                  version(second.version)), timeout=15, running=survivors)
            # A write queued at the frozen leader: on waking it may run before the leader
            # notices it lost the lease. Whatever it does, no survivor may adopt it.
            stale = asyncio.create_task(
                clients.set_service(old.address, "10.96.0.3", 3), name="e2e.stale-write")
            await asyncio.sleep(0)
        finally:
            old.signal(signal.SIGCONT)
        (outcome,) = await asyncio.gather(stale, return_exceptions=True)
        print("write through the woken leader:", outcome if isinstance(outcome, BaseException)
              else f"{version(outcome.version)} by {outcome.leader}; new term {after.term}")
        if not isinstance(outcome, BaseException):  # it was confirmed: never at the old term
            assert outcome.version.term >= after.term, (
                f"the woken leader confirmed a write at {version(outcome.version)}, "
                f"below the new leader's term {after.term}")

        async def stepped_down() -> tuple[bool, object]:
            reply = await clients.get_leader(old.address)
            seen = None if reply is None else (reply.is_self, reply.leader_node, reply.term)
            return reply is not None and not reply.is_self, seen

        await until("the woken leader to report that it no longer leads", stepped_down,
                    timeout=3 * TTL, running=[old])
    assert_never_backwards(versions)
    owners = assert_one_leader_per_term(leaders)
    assert owners.get(before.term, old.node) == old.node
    for survivor in survivors:
        table = pin_table(survivor.pin_dir)
        if key("10.96.0.3") in table:  # forwarded to the new leader: then it has its term
            state = await clients.get_state(survivor.address)
            assert state is not None and state.version.term >= after.term
    assert "stepping down" in log_tail(old.log_path, 200)


async def test_redis_restart_without_persistence_recovers_one_leader_at_a_higher_term(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    cluster = start_cluster(3, redis_env)
    prefix = redis_env["REDIS_KEY_PREFIX"]
    _, before, first = await leader_after_a_first_change(cluster, clients)
    expected = {key("10.96.0.1"): 1}
    async with version_recorder(clients, cluster.agents) as versions, \
            leader_recorder(clients, cluster.agents) as leaders:
        redis_server.kill()

        async def nobody_leads() -> tuple[bool, object]:
            replies = await asyncio.gather(
                *(clients.get_leader(a.address, 2.0) for a in cluster.agents))
            claims = [(r.leader_node, r.term) if r else None for r in replies]
            return all(r is not None and not r.is_self for r in replies), claims

        # Unreachable Redis: the leader steps down at its renew deadline; every agent keeps
        # serving and enforcing the last state.
        await until("the leader to step down while Redis is down", nobody_leads,
                    timeout=3 * TTL, running=cluster.agents)
        states = await asyncio.gather(*(clients.get_state(a.address) for a in cluster.agents))
        assert all(s is not None and version(s.version) >= version(first.version)
                   for s in states)
        await until("every map to keep the last state", pins_hold(
            cluster.agents, expected, version(first.version)), timeout=5)

        redis_server.start()  # same port, empty: the term counter starts from 0
        new_address, after = await localcluster.find_leader(cluster.addresses, timeout=20)
        assert after.term > before.term, (
            f"term went from {before.term} to {after.term} after Redis lost its counter")
        assert redis_lease(redis_server, prefix)[1] == after.term
        second = await clients.set_service(new_address, "10.96.0.2", 2)
        expected[key("10.96.0.2")] = 2
        await until("every map to hold the change after the restart",
                    pins_hold(cluster.agents, expected, version(second.version)), timeout=15,
                    running=cluster.agents)
    assert_never_backwards(versions)
    assert_one_leader_per_term(leaders)
    assert "cannot reach Redis" in "".join(log_tail(a.log_path, 400) for a in cluster.agents)


async def test_redis_del_and_flushall_force_new_elections_at_higher_terms_maps_never_blank(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    cluster = start_cluster(3, redis_env)
    prefix = redis_env["REDIS_KEY_PREFIX"]
    _, before, first = await leader_after_a_first_change(cluster, clients)
    expected = {key("10.96.0.1"): 1}
    terms = [before.term]
    async with version_recorder(clients, cluster.agents) as versions, \
            leader_recorder(clients, cluster.agents) as leaders:
        for command in (["DEL", f"{prefix}leader"], ["FLUSHALL"]):
            cli(redis_server, *command)

            async def higher(floor: int = terms[-1]) -> tuple[bool, object]:
                replies = await asyncio.gather(
                    *(clients.get_leader(a.address, 0.5) for a in cluster.agents))
                claims = [(r.leader_node, r.term) for r in replies if r and r.is_self]
                return any(term > floor for _, term in claims), claims

            claims = await until(f"a leader above term {terms[-1]} after {command[0]}",
                                 higher, timeout=3 * (TTL + RETRY), running=cluster.agents)
            terms.append(max(term for _, term in claims))
            assert all(pin_table(a.pin_dir) == expected for a in cluster.agents)
        new_address, after = await localcluster.find_leader(cluster.addresses, timeout=10)
        second = await clients.set_service(new_address, "10.96.0.2", 2)
        expected[key("10.96.0.2")] = 2
        await until("every map to hold a change after FLUSHALL",
                    pins_hold(cluster.agents, expected, version(second.version)), timeout=15,
                    running=cluster.agents)
    assert terms == sorted(set(terms)), f"terms did not increase: {terms}"
    assert_never_backwards(versions)
    assert_one_leader_per_term(leaders)
    assert version(second.version) > version(first.version)


async def test_a_cold_cluster_warm_starts_from_the_redis_mirror_above_its_term(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    """New nodes (no pins) and a Redis that kept only the mirror (no lease keys, no fencing
    counter): the first leader publishes the mirrored table, at a term above the mirror's, and
    never an empty one first (the election and the warm-start read race at start-up); no agent
    refuses the mirrored snapshot when a peer relays it."""
    document = mirror.document_of(snapshots.build(
        version=versions.Version(6, 3), leader="old", leader_address="",
        entries={key("10.96.0.7"): 5, key("10.96.0.8"): 0}, names={}))
    cli(redis_server, "SET", f"{redis_env['REDIS_KEY_PREFIX']}service_list", document)
    cluster = start_cluster(3, redis_env)
    await wait_serving(clients, cluster.agents, timeout=60)
    async with version_recorder(clients, cluster.agents) as versions_seen:
        address, reply = await localcluster.find_leader(
            [a.address for a in cluster.agents], timeout=30)
        assert reply.term > 6, f"{address} leads at term {reply.term}, not above the mirror's"
        await until("every map to hold the mirror's table", pins_hold(
            cluster.agents, {key("10.96.0.7"): 5, key("10.96.0.8"): 0}, (7, 1)), timeout=15)
    assert_never_backwards(versions_seen)
    for agent in cluster.agents:  # the mirrored table, never an empty one, in every map
        assert pin_table(agent.pin_dir) == {key("10.96.0.7"): 5, key("10.96.0.8"): 0}
        # A peer relaying the mirrored snapshot before this agent read the mirror itself is
        # proven by the mirror, not refused as an unproven term (an ERROR line per peer).
        refusals = [x for x in log_tail(agent.log_path, 400).splitlines() if "refused" in x]
        assert not refusals, refusals


async def test_redis_mirror_shows_the_leaders_snapshot_and_every_nodes_heartbeat(
    redis_server: redisserver.RedisServer, redis_env: dict[str, str],
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    cluster = start_cluster(3, redis_env)
    prefix = redis_env["REDIS_KEY_PREFIX"]
    leader_address, _, first = await leader_after_a_first_change(cluster, clients)
    leader = agent_at(cluster, leader_address)

    def mirrored() -> tuple[bool, object]:
        text = cli(redis_server, "GET", f"{prefix}service_list")
        document = json.loads(text) if text else None
        done = document is not None and (document["term"], document["seq"]) == version(
            first.version)
        return done, document

    document = await until("GET service_list to show the first change", mirrored, timeout=10)
    assert document["leader"] == leader.node
    assert document["services"] == [{"ip": "10.96.0.1", "replicas": 1, "name": "e2e/10.96.0.1"}]

    def heartbeats() -> tuple[bool, object]:
        fields = cli(redis_server, "HGETALL", f"{prefix}coordination").split("\n")
        entries = {k: json.loads(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
        done = set(entries) == {a.node for a in cluster.agents} and all(
            (e["term"], e["seq"]) == version(first.version) and e["leader"] == leader.node
            for e in entries.values())
        return done, entries

    await until("HGETALL coordination to list every node at the first version", heartbeats,
                timeout=10)
    assert cli(redis_server, "GET", f"{prefix}leader").startswith(f"{leader.node}#")


async def test_redis_with_a_wrong_password_agents_keep_serving_report_once_and_never_lead(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,
) -> None:
    server = redisserver.RedisServer(password="right").start()
    try:
        cluster = start_cluster(2, {"COORDINATION_BACKEND": "redis",
                                    "REDIS_URL": f"redis://:wrong@{server.address}/0"})

        def reported() -> tuple[bool, object]:
            logs = [log_tail(a.log_path, 400) for a in cluster.agents]
            return all("refused the credentials" in text for text in logs), logs

        await until("every agent to report the refused credentials", reported, timeout=15,
                    running=cluster.agents)

        def connections() -> int:
            stats = cli(server, "--no-auth-warning", "-a", "right", "INFO", "stats")
            return int(stats.split("total_connections_received:")[1].split()[0])

        start = connections()

        def retried() -> tuple[bool, object]:
            seen = connections() - start
            return seen >= 6, seen

        await until("the agents to retry several times", retried, timeout=20,
                    running=cluster.agents)
        # Still running, still serving, nobody leads, and the error was logged once per agent
        # however often it was retried.
        replies = await asyncio.gather(*(clients.get_leader(a.address, 2.0)
                                         for a in cluster.agents))
        assert all(r is not None and not r.is_self for r in replies), replies
        assert all(r is not None and "lease unreadable" in r.note for r in replies)
        states = await asyncio.gather(*(clients.get_state(a.address) for a in cluster.agents))
        assert all(s is not None for s in states)
        assert all(a.running for a in cluster.agents)
        for agent in cluster.agents:
            lease_errors = [line for line in log_tail(agent.log_path, 400).splitlines()
                            if "lease backend redis" in line]
            assert len(lease_errors) == 1, lease_errors
            mirror_errors = [line for line in log_tail(agent.log_path, 400).splitlines()
                             if "mirror:" in line]
            assert len(mirror_errors) <= 1, mirror_errors
            assert "wrong" not in log_tail(agent.log_path, 400), "the password leaked"
    finally:
        server.cleanup()
