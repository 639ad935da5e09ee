"""A simulated cluster: real engines and leadership over memnet, memory maps and a memory lease.

Everything but the sockets and the kernel is the production code path. The tests (tests/sim/)
run it on the ordinary event loop with fast timers; tools/simulate.py runs it on virtual time
(lab/vtime.py) with the DaemonSet's timers and memnet's cost model, at thousands of agents.
Engines read the loop's clock, so both work.
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
from gossip_agent.observability import telemetry as telemetry_mod
from gossip_agent.sources import memory as api_source

TIMING = leader_mod.Timing(
    retry_interval=0.05, renew_interval=0.05, coalesce_window=0.0, write_ack_timeout=0.3
)
GOSSIP_INTERVAL = 0.05


def loop_clock() -> float:
    """The running loop's clock: real time on asyncio's loop, virtual on lab.vtime's."""
    return asyncio.get_running_loop().time()


class _Adoptions(telemetry_mod.Recorder):
    """Tells the cluster when its agent adopted something (the engine holds it by then)."""

    def __init__(self, cluster: SimCluster, agent: SimAgent) -> None:
        super().__init__()
        self._cluster, self._agent = cluster, agent

    def adopted(self, *, via: str, age_seconds: float, apply_seconds: float) -> None:
        super().adopted(via=via, age_seconds=age_seconds, apply_seconds=apply_seconds)
        if self._cluster.on_adopted is not None:
            self._cluster.on_adopted(self._agent)


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
            membership=self.membership, rpc_timeout=0.2, rng=rng, clock=loop_clock,
            telemetry=_Adoptions(cluster, self),
        )
        self.lease = memory_lease.MemoryLease(cluster.lease_store, node=self.node)
        self.leadership = leader_mod.Leadership(
            engine=self.engine, lease=self.lease, source=api_source.ApiSource(),
            timing=cluster.timing,
        )
        cluster.network.register(self.address, self.engine)
        self.gossip_interval = cluster.gossip_interval
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, *, campaign: bool) -> None:
        self.engine.load()
        self.tasks.append(asyncio.create_task(
            antientropy.run(self.engine, interval=self.gossip_interval, rng=self.rng),
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
        costs: memnet.Costs | None = None, timing: leader_mod.Timing = TIMING,
        gossip_interval: float = GOSSIP_INTERVAL,
        on_adopted: Callable[[SimAgent], None] | None = None,
    ) -> None:
        self.seed = seed
        self.max_entries = max_entries
        self.timing = timing
        self.gossip_interval = gossip_interval
        self.on_adopted = on_adopted  # called on every adoption by any agent
        self.network = memnet.MemoryNetwork(rng=random.Random(seed), loss=loss, delay=delay,
                                            costs=costs)
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
