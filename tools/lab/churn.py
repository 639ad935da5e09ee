"""A churn soak: resident agents whose peer set is replaced again and again by agents on new
addresses, as pod-IP churn does (a rolling restart, nodes replaced), and the figures that show
whether the state an agent keeps per peer and per node stays bounded.

All agents run in this process and event loop on 127.0.0.1 (gossip_agent.agent.Agent: real
gRPC, memory maps, one flock lease in `workdir`). The residents (node-r0...) live through the
whole soak and one of them leads; its scaler (scaler.loop.Scaler over memory workloads, no
Kubernetes) keeps the cluster's traffic facts, fed by the summaries every agent reports
(blind ones: memory maps count nothing) every REPORT_INTERVAL. Each replacement, as in a
cluster:
  1. the previous visitors stop (their pods are gone: addresses that refuse connections);
  2. `per_round` new visitors start on new ports, list the residents as peers, pull the
     leader's snapshot (their first digest round) and report their summaries to the leader;
  3. discovery changes: every resident's STATIC peer set becomes the residents plus the new
     visitors (what a DNS refresh of the headless Service does, through the same
     Membership.set_discovered);
  4. every resident exchanges digests with each new visitor, and the leader publishes a change
     that it pushes to them: channels and push streams open toward every new address.

Sample() reads, per resident, the transport's channels and streams, the membership's entries
and the metric series exposed; the leader's traffic facts; and for the process, its open file
descriptors and resident memory. Used by tests/integration/test_churn.py and tools/soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gossip_agent import agent as agent_mod
from gossip_agent import config
from gossip_agent.core import peers, scaling, snapshots, traffic
from gossip_agent.scaling import loop as scaler_loop
from gossip_agent.scaling import memory as workloads_memory
from gossip_agent.scaling import scaler as scaler_service
from gossip_agent.sources import base as source_base
from lab import localcluster

SERVICE = snapshots.parse_ip("10.96.7.7")
# Seconds: the visitors' summaries and the leader's scale-down rounds (which forget the facts
# of nodes that left) run this often, so a replacement waits little for either.
REPORT_INTERVAL = 0.05
# Seconds to wait for anything one replacement sets in motion (a few RPCs and a report),
# many times over on a loaded 2-core machine.
STEP_DEADLINE = 10.0


@dataclasses.dataclass(frozen=True)
class Sample:
    replacements: int
    channels: tuple[int, ...]  # per resident: addresses its transport keeps a channel for
    members: tuple[int, ...]  # per resident: membership entries
    series: tuple[int, ...]  # per resident: metric series it exposes
    facts: int  # nodes whose traffic summary the leader keeps
    fds: int  # open file descriptors of this process
    rss_kb: int  # resident memory of this process

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def until(what: str, check: Callable[[], bool], *, timeout: float = STEP_DEADLINE) -> None:
    """Polls `check` until it holds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


class Visitor:
    """One short-lived agent."""

    def __init__(self, agent: agent_mod.Agent) -> None:
        self.agent = agent
        self.address = agent.cfg.node.advertise_addr
        self.node = agent.cfg.node.name

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self) -> None:
        await self.agent.stop()


class Soak:
    def __init__(self, workdir: str, *, residents: int = 3, per_round: int = 2) -> None:
        self.workdir = workdir
        self.per_round = per_round
        self.replacements = 0
        self._ports = localcluster.free_ports(residents)
        self._resident_addresses = [f"127.0.0.1:{port}" for port in self._ports]
        self.residents: list[agent_mod.Agent] = []
        self.visitors: list[Visitor] = []
        self.leader: agent_mod.Agent | None = None
        self.scaler: scaler_loop.Scaler | None = None
        self._scaler_task: asyncio.Task[None] | None = None
        self._made = 0

    def _env(self, node: str, port: int, peer_addresses: list[str], **extra: str
             ) -> dict[str, str]:
        return {
            "PROFILE": "local", "NODE_NAME": node, "DATAPLANE": "memory",
            "LISTEN_ADDR": f"127.0.0.1:{port}", "ADVERTISE_ADDR": f"127.0.0.1:{port}",
            "PEERS": ",".join(a for a in peer_addresses if a != f"127.0.0.1:{port}"),
            "BPF_PIN_DIR": f"{self.workdir}/pin-{node}", "BPF_LEASE_DIR": self.workdir,
            "TRAFFIC_REPORT_INTERVAL": str(REPORT_INTERVAL),
            "SCALE_REPORT_WINDOW": str(2 * REPORT_INTERVAL),
            "LOG_LEVEL": "warning", **extra,
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Soak]:
        """The residents, started and led; everything stopped on the way out."""
        try:
            await self._start_residents()
            yield self
        finally:
            await self._stop_all()

    async def _start_residents(self) -> None:
        metrics_ports = localcluster.free_ports(len(self._ports))
        for index, (port, metrics_port) in enumerate(zip(self._ports, metrics_ports,
                                                         strict=True)):
            env = self._env(f"node-r{index}", port, self._resident_addresses,
                            METRICS_HOST="127.0.0.1", METRICS_PORT=str(metrics_port))
            self.residents.append(agent_mod.Agent(config.from_env(env), reports=self))
        for resident in self.residents:
            await resident.start()
        await until("a resident in office", lambda: any(
            r.leadership.leading for r in self.residents))
        self.leader = next(r for r in self.residents if r.leadership.leading)
        self._start_scaler(self.leader)
        await self._publish()

    def _start_scaler(self, leader: agent_mod.Agent) -> None:
        """The leader's scaler as agent.open_scaler builds it with SOURCE=kubernetes, over
        memory workloads and no targets: only its traffic facts matter here."""
        self.scaler = scaler_loop.Scaler(
            targets=dict, targets_known=lambda: True,
            ready=scaler_service.ready_of(leader.engine),
            live_nodes=scaler_service.live_nodes_of(leader.engine),
            leading=lambda: leader.leadership.leading, proven=leader.lease.proven,
            workloads=workloads_memory.MemoryWorkloads(),
            timing=scaler_loop.Timing(cooldown_ns=scaling.NS, window_ns=scaling.NS,
                                      round_interval=REPORT_INTERVAL),
            telemetry=leader.engine.telemetry, status=scaling.Status())
        self._scaler_task = asyncio.create_task(self.scaler.run(), name="soak.scaler")

    # The residents' inbox delegate (agent.Agent's `reports`): the leader's summaries go to the
    # soak's scaler once it is built; before, they are dropped as by an agent without one.

    def apply(self, node: str, incarnation: int, summary: traffic.Summary) -> bool:
        return self.scaler.apply(node, incarnation, summary) if self.scaler is not None else True

    def scale_up(self, request: source_base.ScaleUp) -> None:
        pass  # the soak raises no scale-up requests

    async def _publish(self) -> snapshots.Snapshot:
        """A change from the leader (the replica count flips), pushed to every member."""
        assert self.leader is not None
        result = await self.leader.leadership.write(
            updates={SERVICE: (1 + self.replacements % 2, "soak/web")}, deletes=())
        held = self.leader.engine.held.snapshot
        assert held is not None and held.version == result.version
        return held

    async def replace(self) -> None:
        """One replacement of the visitors (steps 1-4 of the module docstring)."""
        old, self.visitors = self.visitors, []
        await asyncio.gather(*(v.stop() for v in old))
        ports = localcluster.free_ports(self.per_round)
        for port in ports:
            self._made += 1
            env = self._env(f"node-v{self._made}", port, self._resident_addresses)
            self.visitors.append(Visitor(agent_mod.Agent(config.from_env(env))))
        for visitor in self.visitors:
            await visitor.start()
        members = self._resident_addresses + [v.address for v in self.visitors]
        for resident in self.residents:
            resident.membership.set_discovered(peers.STATIC, members)
        await asyncio.gather(*(r.engine.exchange_with(v.address)
                               for r in self.residents for v in self.visitors))
        self.replacements += 1
        published = await self._publish()
        await until("the new visitors holding the leader's change", lambda: all(
            v.agent.engine.held.version >= published.version for v in self.visitors))
        await until("the new visitors' traffic summaries at the leader", lambda: all(
            self._facts_of(v.node) for v in self.visitors))

    def _facts_of(self, node: str) -> bool:
        facts = self.scaler.facts if self.scaler is not None else None
        return facts is not None and facts.summary_of(node) is not None

    def sample(self) -> Sample:
        facts = self.scaler.facts if self.scaler is not None else None
        return Sample(
            replacements=self.replacements,
            channels=tuple(len(r.transport.kept()) for r in self.residents),
            members=tuple(len(r.membership.addresses()) for r in self.residents),
            series=tuple(_series(r) for r in self.residents),
            facts=len(facts.reported()) if facts is not None else 0,
            fds=open_fds(), rss_kb=rss_kb())

    def bounded(self, sample: Sample) -> bool:
        """Whether the per-peer state is what the current peer set needs, nothing more: each
        resident keeps channels and entries for the other residents and the current visitors,
        and the leader keeps facts for at most those nodes and itself."""
        peers_now = len(self.residents) - 1 + len(self.visitors)
        return (all(c <= peers_now for c in sample.channels)
                and all(m == peers_now for m in sample.members)
                and sample.facts <= len(self.residents) + len(self.visitors))

    async def settled(self, *, timeout: float = STEP_DEADLINE) -> Sample:
        """A sample once the per-peer state is bounded (the residents close departed peers'
        channels once per GOSSIP_INTERVAL, the leader forgets facts every round)."""
        try:
            await until("per-peer state to match the current peer set",
                        lambda: self.bounded(self.sample()), timeout=timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({len(self.residents) - 1 + len(self.visitors)} peers "
                               f"each); still: {self.sample().row()}") from None
        gc.collect()  # memory as the agents hold it, not garbage awaiting the collector
        return self.sample()

    async def _stop_all(self) -> None:
        if self._scaler_task is not None:
            self._scaler_task.cancel()
            await asyncio.gather(self._scaler_task, return_exceptions=True)
        await asyncio.gather(*(v.stop() for v in self.visitors))
        await asyncio.gather(*(r.stop() for r in self.residents))


def exposition(agent: agent_mod.Agent) -> str:
    """What the agent's /metrics shows (text format); "" without metrics."""
    metrics = agent.observer.metrics
    return metrics.render()[0].decode() if metrics is not None else ""


def _series(agent: agent_mod.Agent) -> int:
    """Metric series (one per metric and label set) the agent exposes on /metrics. A histogram
    counts once per label set, not once per bucket line: a label value it meets for the first
    time (an adoption via "pull" on a loaded machine) is one new series, not twenty."""
    return len({_series_key(line) for line in exposition(agent).splitlines()
                if line and not line.startswith("#")})


def _series_key(line: str) -> tuple[str, str]:
    name, _, rest = line.partition("{")
    labels = rest.rpartition("}")[0] if rest else ""
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        name = name.split(" ")[0].removesuffix(suffix)
    kept = ",".join(part for part in labels.split(",") if not part.startswith("le="))
    return name, kept
