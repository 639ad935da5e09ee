"""The redis lease through Redis Sentinel (the seed's HA mode): a master, a replica and a real
redis-sentinel (Debian's package), all on free loopback ports. The master is killed under a
running cluster; Sentinel promotes the replica and the agents follow it.

A replica may lag, so the promoted master's term counter can be behind (like a restart without
persistence): the new leader must still take a higher term. Asserted strictly: at most one node
per term and no version going backwards, throughout.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from lab import localcluster
from lab import localredis as redisserver
from tests.conftest import require
from tests.e2e.test_local_cluster import (
    Clients,
    assert_never_backwards,
    key,
    leader_after_a_first_change,
    pins_hold,
    until,
    version,
    version_recorder,
)
from tests.e2e.test_redis_cluster import assert_one_leader_per_term, leader_recorder

pytestmark = pytest.mark.e2e

MASTER = "gossipmaster"


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip()


class Sentinelled:
    """master + replica + sentinel, torn down by PID."""

    def __init__(self) -> None:
        self.master = redisserver.RedisServer().start()
        self.replica = redisserver.RedisServer(
            extra_args=["--replicaof", "127.0.0.1", str(self.master.port)]).start()
        self.sentinel: redisserver.SentinelServer | None = None

    def cleanup(self) -> None:
        if self.sentinel is not None:
            self.sentinel.cleanup()
        self.replica.cleanup()
        self.master.cleanup()


@pytest.fixture
def sentinelled() -> Iterator[Sentinelled]:
    require(redisserver.available(), "redis-server (Debian package redis-server)")
    require(shutil.which("redis-sentinel") is not None, "redis-sentinel (Debian package)")
    require(shutil.which("redis-cli") is not None, "redis-cli (Debian package redis-tools)")
    setup = Sentinelled()
    try:
        yield setup
    finally:
        setup.cleanup()


async def test_sentinel_failover_under_a_running_cluster_keeps_one_leader_and_terms_rising(
    sentinelled: Sentinelled, start_cluster: Callable[..., localcluster.LocalCluster],
    clients: Clients,
) -> None:
    setup = sentinelled

    def replica_synced() -> tuple[bool, object]:
        info = cli(setup.replica.port, "INFO", "replication")
        return "master_link_status:up" in info, info.splitlines()[:4]

    await until("the replica to sync with the master", replica_synced, timeout=20)
    setup.sentinel = redisserver.SentinelServer(master=setup.master, name=MASTER).start()
    sentinel_port = setup.sentinel.port

    def sentinel_knows_replica() -> tuple[bool, object]:
        replicas = cli(sentinel_port, "SENTINEL", "REPLICAS", MASTER)
        return str(setup.replica.port) in replicas, replicas

    await until("the sentinel to discover the replica", sentinel_knows_replica, timeout=30)

    cluster = start_cluster(3, {"COORDINATION_BACKEND": "redis",
                                "REDIS_SENTINELS": setup.sentinel.address,
                                "REDIS_SENTINEL_MASTER": MASTER,
                                "REDIS_KEY_PREFIX": "sentinel:"})
    _, before, first = await leader_after_a_first_change(cluster, clients)
    assert cli(setup.master.port, "GET", "sentinel:leader").startswith(before.leader_node)
    async with version_recorder(clients, cluster.agents) as versions, \
            leader_recorder(clients, cluster.agents) as leaders:
        setup.master.kill()

        def promoted() -> tuple[bool, object]:
            address = cli(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return address.endswith(str(setup.replica.port)), address

        await until("Sentinel to promote the replica", promoted, timeout=30)

        async def higher_leader() -> tuple[bool, object]:
            leader = await asyncio.wait_for(
                localcluster.find_leader(cluster.addresses, timeout=1.0), 5.0)
            return leader[1].term > before.term, (leader[1].leader_node, leader[1].term)

        async def probe() -> tuple[bool, object]:
            try:
                return await higher_leader()
            except TimeoutError as exc:
                return False, str(exc)

        await until("a leader at a higher term on the promoted master", probe, timeout=30)
        new_address, after = await localcluster.find_leader(cluster.addresses, timeout=5)
        holder = cli(setup.replica.port, "GET", "sentinel:leader")
        assert holder.startswith(f"{after.leader_node}#")
        assert int(cli(setup.replica.port, "HGET", "sentinel:leader_record", "term")) \
            == after.term
        second = await clients.set_service(new_address, "10.96.0.2", 2)
        await until("every map to hold a change made after the failover",
                    pins_hold(cluster.agents, {key("10.96.0.1"): 1, key("10.96.0.2"): 2},
                              version(second.version)), timeout=15, running=cluster.agents)
    assert version(second.version) > version(first.version)
    assert_never_backwards(versions)
    assert_one_leader_per_term(leaders)
