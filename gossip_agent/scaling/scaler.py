"""The scaling loop wired into one agent. agent.py builds the Scaler first (build_scaler, with
SOURCE=kubernetes: the leader's inbox hands it reports as its delegate), then one Scaling, and
spawns its tasks().

- Every agent summarises what its XDP program counted for the leader every
  TRAFFIC_REPORT_INTERVAL (task `scaler.traffic`, through the scale-up reporter's stop-and-wait
  report). A node whose program cannot count its traffic is blind (no program of ours loaded:
  maps only or no BPF data plane; or an interface matching XDP_INTERFACES failed or carries
  another program): it sends no facts and says why, so the leader blocks scale-downs rather
  than taking "saw nothing" for idleness. The reason shows in GetState, the console and
  metrics (core.scaling.Status).
- With SOURCE=kubernetes the agent also runs the Scaler (task `scaler.loop`), which acts only
  while this agent leads; its targets are the opted-in Services the leader's source watches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from gossip_agent import config as config_mod
from gossip_agent import errors
from gossip_agent.core import peers, policy, scaling, services, traffic
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.scaling import base, loop
from gossip_agent.scaling import reporter as reporter_mod

log = logging.getLogger("gossip_agent.scaler")


class HasInventory(Protocol):
    """What the scaler reads of the Kubernetes source: the Services it currently watches, and
    whether that view is complete yet (every list done since this agent took office)."""

    inventory: services.Inventory

    @property
    def synced(self) -> bool: ...


class Policies:
    """Each Service's core.policy.Policy, parsed once per annotation set; a malformed one is
    logged once and the Service is scaled without that feature."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], policy.Policy] = {}

    def of(self, entry: services.Entry) -> policy.Policy:
        key = (entry.name, entry.opt_in.workload_name, entry.annotations)
        found = self._cache.get(key)
        if found is None:
            try:
                found = policy.parse(dict(entry.annotations), name=entry.name,
                                     workload=entry.opt_in.workload_name)
            except errors.PolicyInvalid as exc:
                log.warning("Service %s: %s; scaled without dependencies, priority or HPA",
                            entry.name, exc)
                found = policy.Policy(name=entry.name)
            if len(self._cache) > 4 * 1024:  # Services come and go: keep the memory bounded
                self._cache.clear()
            self._cache[key] = found
        return found


def targets_of(source: HasInventory) -> Callable[[], dict[int, loop.Target]]:
    policies = Policies()

    def targets() -> dict[int, loop.Target]:
        result: dict[int, loop.Target] = {}
        for view in source.inventory.services.values():
            if isinstance(view, services.Entry) and view.key not in result:
                result[view.key] = loop.Target(
                    key=view.key, name=view.name,
                    ref=base.WorkloadRef(view.opt_in.workload_kind,
                                              view.opt_in.workload_namespace,
                                              view.opt_in.workload_name),
                    idle_ns=view.opt_in.scale_down_seconds * scaling.NS,
                    policy=policies.of(view))
        return result

    return targets


def live_nodes_of(engine: engine_mod.Engine) -> Callable[[], list[str]]:
    """This node and every peer membership has not declared dead; a peer whose node name is
    not known yet is named by its address (it has not reported, so it blocks: the safe side)."""

    def live() -> list[str]:
        nodes = [engine.node]
        for peer in engine.membership.peers():
            if peer.state is not peers.PeerState.DEAD:
                nodes.append(peer.node or peer.address)
        return nodes

    return live


def ready_of(engine: engine_mod.Engine) -> Callable[[], Mapping[int, int]]:
    def ready() -> Mapping[int, int]:
        held = engine.held.snapshot
        return held.entries() if held is not None else {}

    return ready


def counters_of(stats: Callable[[], Mapping[int, Iterable[tuple[int, int, int]]]]
                ) -> Callable[[], dict[int, traffic.Counts]]:
    """SERVICE_STATS (per CPU: passed, dropped, fail_open) summed into totals per service."""

    def counters() -> dict[int, traffic.Counts]:
        result = {}
        for service, per_cpu in stats().items():
            cpus = list(per_cpu)
            result[service] = traffic.Counts(passed=sum(c[0] for c in cpus),
                                             dropped=sum(c[1] for c in cpus))
        return result

    return counters


def build_scaler(
    *,
    cfg: config_mod.ScalingConfig,
    engine: engine_mod.Engine,
    leadership: leader_mod.Leadership,
    source: HasInventory,
    workloads: base.Workloads,
) -> loop.Scaler:
    """The leader's scaler over the opted-in Services `source` watches; it acts only while
    this agent leads."""
    return loop.Scaler(
        targets=targets_of(source), targets_known=lambda: source.synced,
        ready=ready_of(engine),
        live_nodes=live_nodes_of(engine), leading=lambda: leadership.leading,
        proven=leadership.lease.proven, workloads=workloads,
        timing=loop.Timing(cooldown_ns=int(cfg.scale_up_cooldown * scaling.NS),
                           window_ns=int(cfg.report_window * scaling.NS),
                           round_interval=cfg.report_interval),
        telemetry=engine.telemetry, status=scaling.Status())


class Scaling:
    def __init__(
        self,
        *,
        cfg: config_mod.ScalingConfig,
        reporter: reporter_mod.Reporter,
        scaler: loop.Scaler | None,
        stats: Callable[[], Mapping[int, Iterable[tuple[int, int, int]]]] | None,
        blind: Callable[[], str],
        listed: Callable[[], Iterable[int]],
    ) -> None:
        """reporter: this agent's (scaling.scaleups), which carries the summaries to the
        leader; scaler: the leader's, with SOURCE=kubernetes (build_scaler), else None."""
        self.cfg = cfg
        self.reporter = reporter
        self.stats = stats
        self.blind = blind
        self.listed = listed
        self.scaler = scaler
        # The scaler's status, or one that carries only this node's blindness.
        self.status = scaler.status if scaler is not None else scaling.Status()

    def _sight(self) -> str:
        reason = self.blind()
        if reason != self.status.blind:
            if reason:
                log.warning("this node is blind: %s; the leader scales nothing down until it "
                            "sees again", reason)
            else:
                log.info("this node counts its traffic again (was blind: %s)", self.status.blind)
        self.status.blind = reason
        return reason

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("scaler.traffic", self.reporter.summarise(
                counters=counters_of(self.stats) if self.stats is not None else dict,
                listed=self.listed, blind=self._sight, interval=self.cfg.report_interval))]
        if self.scaler is not None:
            tasks.append(("scaler.loop", self.scaler.run()))
        return tasks
