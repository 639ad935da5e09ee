"""The contract term proofs rest on (gossip/proof.py), for every lease backend: the record
read() returns names the holder at the EFFECTIVE term of its grant and of each bump, not the
backend's raw counter. A backend that broke it would have every snapshot refused as unproven.
(When a backend is added, add it to BACKENDS.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes import config as kube_config

from gossip_agent.core import beats
from gossip_agent.leases import base, bpffs, kube, memory
from gossip_agent.leases import redis as redis_lease
from lab import localredis as redisserver

pytestmark = pytest.mark.integration

BACKENDS = ("memory", "bpffs", "redis", "configmap", "lease")
# Lease timing for the Kubernetes backends (client-go's rule holds); nothing here waits on it.
KUBE_TIMING = kube.KubeTiming(duration=15, renew_deadline=10, retry_interval=2, renew_interval=2)
Make = Callable[[str], base.Lease]


@pytest_asyncio.fixture(params=BACKENDS)
async def make_lease(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Make]:
    made: list[base.Lease] = []
    store = memory.MemoryLeaseStore()
    server: redisserver.RedisServer | None = None
    kubeconfig = ""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
    elif request.param in ("configmap", "lease"):
        kubeconfig = request.getfixturevalue("kubeconfig")  # the fake API server over HTTP

    def make(node: str) -> base.Lease:
        lease: base.Lease
        if request.param == "memory":
            lease = memory.MemoryLease(store, node=node)
        elif request.param == "bpffs":
            lease = bpffs.BpffsLease(lease_dir=str(tmp_path), node=node)
        elif kubeconfig:
            lease = kube.KubeLease(
                kind=request.param, api=kube_config.new_client_from_config(config_file=kubeconfig),
                namespace="default", name="ebpf-service-list", node=node, timing=KUBE_TIMING,
                beats=beats.BeatBoard())
        else:
            assert server is not None
            lease = redis_lease.RedisLease(settings=redis_lease.Settings(
                url=server.url, key_prefix="contract:", ttl=5.0, renew_deadline=3.0,
                timeout=1.0, retry_base=0.05, retry_cap=1.0), node=node)
        made.append(lease)
        return lease

    try:
        yield make
    finally:
        for lease in made:
            await lease.close()
            if isinstance(lease, kube.KubeLease):
                lease.api.close()


async def test_the_record_shows_the_holder_at_the_effective_term_of_grant_and_bump(
    make_lease: Make,
) -> None:
    leader = make_lease("node-a")
    grant = await leader.try_acquire(min_term=50)  # above the counter: min_term wins
    assert grant is not None and grant.term == 50
    record = await leader.read()
    assert record is not None and (record.node, record.term) == ("node-a", 50)
    assert await leader.bump(min_term=80) == 80
    record = await leader.read()
    assert record is not None and (record.node, record.term) == ("node-a", 80)
    await leader.release()
    record = await leader.read()
    assert record is not None and (record.holder, record.term) == ("", 80)
    follower = make_lease("node-b")
    grant = await follower.try_acquire(min_term=1)
    assert grant is not None and grant.term == 81  # above the recorded term, never below
    record = await follower.read()
    assert record is not None and (record.node, record.term) == ("node-b", 81)
