"""A simulated cluster: real engines and leadership over memnet, memory maps and a memory lease.

Everything but the sockets and the kernel is the production code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from gossip_agent.core import peers
from gossip_agent.dataplane import memory as memory_dataplane
from gossip_agent.gossip import antientropy
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import memory as memnet
from gossip_agent.leases import memory as memory_lease
from gossip_agent.sources import memory as api_source

TIMING = leader_mod.Timing(
    retry_interval=0.05, renew_interval=0.05, coalesce_window=0.0, write_ack_timeout=0.3
)
GOSSIP_INTERVAL = 0.05


class SimAgent:
    def __init__(self, cluster: SimCluster, index: int, peer_addresses: list[str]) -> None:
        self.node = f"node-{index}"
        self.address = f"sim-{index}:1"
        rng = random.Random(cluster.seed * 1000 + index)
        self.rng = rng
        self.dataplane = memory_dataplane.MemoryDataPlane(max_entries=cluster.max_entries)
        self.membership = peers.Membership(
            self_address=self.address,
            policy=peers.BackoffPolicy(base=0.02, cap=0.2, forget_after=3600),
            rng=rng,
        )
        self.membership.set_discovered(peers.STATIC, peer_addresses)
        self.engine = engine_mod.Engine(
            node=self.node, address=self.address, boot_id="sim-boot",
            dataplane=self.dataplane, transport=cluster.network.transport_for(self.address),
            membership=self.membership, rpc_timeout=0.2, rng=rng,
        )
        self.lease = memory_lease.MemoryLease(cluster.lease_store, node=self.node)
        self.leadership = leader_mod.Leadership(
            engine=self.engine, lease=self.lease, source=api_source.ApiSource(), timing=TIMING,
        )
        cluster.network.register(self.address, self.engine)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, *, campaign: bool) -> None:
        self.engine.load()
        self.tasks.append(asyncio.create_task(
            antientropy.run(self.engine, interval=GOSSIP_INTERVAL, rng=self.rng),
            name=f"{self.node}.anti-entropy"))
        if campaign:
            self.tasks.append(asyncio.create_task(self.leadership.run(), name=f"{self.node}.elect"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []


class SimCluster:
    def __init__(
        self, n: int, *, seed: int = 1, loss: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0), max_entries: int = 1024,
    ) -> None:
        self.seed = seed
        self.max_entries = max_entries
        self.network = memnet.MemoryNetwork(rng=random.Random(seed), loss=loss, delay=delay)
        self.lease_store = memory_lease.MemoryLeaseStore()
        addresses = [f"sim-{i}:1" for i in range(n)]
        self.agents = [SimAgent(self, i, addresses) for i in range(n)]

    def start(self, *, campaigners: int | None = None) -> None:
        for index, agent in enumerate(self.agents):
            agent.start(campaign=campaigners is None or index < campaigners)

    async def stop(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents))

    def leaders(self) -> list[SimAgent]:
        return [a for a in self.agents if a.leadership.leading]

    async def wait_for(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)

    async def leader(self, timeout: float = 5.0) -> SimAgent:
        await self.wait_for("a leader", lambda: len(self.leaders()) == 1 and
                            self.leaders()[0].engine.held.version.term > 0, timeout)
        return self.leaders()[0]

    def tables(self) -> list[dict[int, int]]:
        return [a.dataplane.read() for a in self.agents]


@contextlib.asynccontextmanager
async def running(cluster: SimCluster, **kwargs: int):  # type: ignore[no-untyped-def]
    cluster.start(**kwargs)
    try:
        yield cluster
    finally:
        await cluster.stop()
