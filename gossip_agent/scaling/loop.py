"""The leader's scaling loop (task `scaler.loop`): the only place workloads are scaled.

Thin over the pure core (core.scaling for the rules, core.policy for the order):
- While this agent leads it keeps the cluster's traffic facts (ClusterFacts), fresh from the
  moment it took office: nothing a previous leader knew is trusted, and the first scale-down
  waits one full report window.
- Scale-up requests (Source.scale_up via the inbox) are queued and handled at once: once per
  SCALE_UP_COOLDOWN per service, dependencies first; a workload is written only when its /scale
  shows 0 replicas (a map value of 0 may also mean "not ready yet"), from 0 to 1, with the read
  resourceVersion as a precondition. Its HPA, if one was suspended, is restored afterwards (also
  when the workload was already up: a leader that died between the two steps left it saved).
  A leader fresh in office whose source has not listed every Service yet holds the requests
  (it polls every HELD_POLL) rather than dropping those for a Service it does not know yet: the
  reporting node's request was acknowledged and would not come again.
- Every report window, a scale-down round: Services that are idle on every live node (the
  rule in core.scaling) go to 0, dependents first, never under an awake dependent; an HPA is
  suspended (its spec saved on the workload) before. The round first forgets the facts of
  nodes that are no longer live, so the leader keeps one summary per live node, not one per
  node ever seen (O(N) per round).
- Before every write the lease must be proven (Lease.proven(): held with time to spare): a
  deposed leader that has not noticed yet writes nothing.
Failures are logged once per distinct message and counted; the next request or round retries.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from gossip_agent import errors
from gossip_agent.core import policy, scaling, snapshots, traffic
from gossip_agent.observability import telemetry
from gossip_agent.scaling import base as workloads_mod
from gossip_agent.sources import base as source_base

log = logging.getLogger("gossip_agent.scaler")

RECEIVED, SCALED, COALESCED, FAILED = "received", "scaled", "coalesced", "failed"
# Seconds between looks at the source while requests are held for its first complete list: a
# wake-up waits at most this much beyond the list itself.
HELD_POLL = 0.05


@dataclasses.dataclass(frozen=True)
class Target:
    """An opted-in Service the leader may scale."""

    key: int  # its SERVICE_LIST key
    name: str  # "namespace/name"
    ref: workloads_mod.WorkloadRef
    idle_ns: int  # scale-to-zero/scale-down-time
    policy: policy.Policy


@dataclasses.dataclass(frozen=True)
class Timing:
    cooldown_ns: int  # SCALE_UP_COOLDOWN
    window_ns: int  # report window: a live node's summary must be newer than this
    round_interval: float  # seconds between scale-down rounds


class Scaler:
    def __init__(
        self,
        *,
        targets: Callable[[], Mapping[int, Target]],
        targets_known: Callable[[], bool],
        ready: Callable[[], Mapping[int, int]],
        live_nodes: Callable[[], Iterable[str]],
        leading: Callable[[], bool],
        proven: Callable[[], bool],
        workloads: workloads_mod.Workloads,
        timing: Timing,
        telemetry: telemetry.Telemetry,
        status: scaling.Status,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.targets = targets
        self.targets_known = targets_known  # the source has listed every Service this term
        self.ready = ready  # the held snapshot: service key -> ready replicas
        self.live_nodes = live_nodes
        self.leading = leading
        self.proven = proven
        self.workloads = workloads
        self.timing = timing
        self.telemetry = telemetry
        self.status = status  # the last round's verdicts, for operators
        self.clock = clock
        self.facts: scaling.ClusterFacts | None = None
        self.cooldown = scaling.CoolDown(cooldown_ns=timing.cooldown_ns)
        self.scale_downs = 0
        self._requests: collections.deque[int] = collections.deque()
        self._wake = asyncio.Event()
        self._last_error = ""
        self._warm = False  # the API client has made one call since this agent took office

    # -- inputs (called from the inbox, never blocking) ------------------------------------------

    def record(self, node: str, facts: tuple[traffic.Fact, ...], blind: str = "") -> None:
        """A node's whole summary (as a node's first one is)."""
        if self._in_office():
            assert self.facts is not None
            self.facts.record(node=node, facts=facts, now_ns=self.clock(), blind=blind)

    def apply(self, node: str, incarnation: int, summary: traffic.Summary) -> bool:
        """A node's summary, full or a delta; False asks the node for a full one (the facts of
        this term do not hold the generation the delta follows)."""
        if not self._in_office():
            return True  # nothing is kept out of office; the next leader asks for its own
        assert self.facts is not None
        return self.facts.apply(node=node, incarnation=incarnation, summary=summary,
                                now_ns=self.clock())

    def scale_up(self, request: source_base.ScaleUp) -> None:
        self.telemetry.scale_requested(result=RECEIVED)
        if request.service_ip in self._requests:
            # One waiting request per service (so held ones cannot pile up): this one is
            # answered by the one already queued.
            self.telemetry.scale_requested(result=COALESCED)
            return
        self._requests.append(request.service_ip)
        self._wake.set()

    # -- scaler.loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        next_round = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if self._in_office():
                if not self._warm:
                    await self._attempt(self._warm_up())
                await self._handle_requests()
                if loop.time() >= next_round:
                    next_round = loop.time() + self.timing.round_interval
                    await self._attempt(self._scale_down_round())
            else:
                self._requests.clear()  # the reporters re-raise what still drops packets
                # Look at the lease again one round from now (or when a request wakes the loop):
                # a follower's deadline must move on, or the loop would spin on a zero timeout.
                next_round = loop.time() + self.timing.round_interval
            held = bool(self._requests)  # waiting for the source's first complete list
            await self._sleep_until(min(next_round, loop.time() + HELD_POLL) if held
                                    else next_round)

    async def _handle_requests(self) -> None:
        if self._requests and not self.targets_known():
            return  # held, not dropped: see the module docstring
        while self._requests:
            await self._attempt(self._wake_service(self._requests.popleft()))

    async def _sleep_until(self, deadline: float) -> None:
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(min(timeout, self.timing.round_interval)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _in_office(self) -> bool:
        """Leading now; facts start afresh on taking office and are dropped on leaving it."""
        if not self.leading():
            if self.facts is not None:
                log.info("scaler: no longer leading; dropping the cluster's traffic facts")
            self.facts = None
            self.status.outlooks = ()
            return False
        if self.facts is None:
            self._warm = False
            self.facts = scaling.ClusterFacts(window_ns=self.timing.window_ns,
                                              took_office_ns=self.clock())
            self.cooldown = scaling.CoolDown(cooldown_ns=self.timing.cooldown_ns)
            log.info("scaler: leading; first scale-down after one report window (%.1fs)",
                     self.timing.window_ns / scaling.NS)
        return True

    async def _attempt(self, step: asyncio.Future[None] | object) -> None:
        try:
            await step  # type: ignore[misc]
        except errors.ScaleFailed as exc:
            self.telemetry.scale_requested(result=FAILED)
            if str(exc) != self._last_error:  # one line per distinct trouble
                log.error("scaling: %s (retried on the next request or round)", exc)
            self._last_error = str(exc)

    async def _warm_up(self) -> None:
        """One read of a target's /scale as soon as there is one: the client, its connection
        and its model classes are ready before the first wake-up needs them (the first call
        of a fresh client costs hundreds of milliseconds)."""
        targets = self.targets()
        if targets:
            self._warm = True
            await self.workloads.get_scale(next(iter(targets.values())).ref)

    def _check_lease(self, what: str) -> None:
        if not self.leading() or not self.proven():
            raise errors.ScaleFailed(f"{what}: this agent's lease is not proven; not writing")

    # -- scale-up ---------------------------------------------------------------------------------

    async def _wake_service(self, key: int) -> None:
        targets = self.targets()
        target = targets.get(key)
        if target is None:
            self.telemetry.scale_requested(result=FAILED)
            log.warning("scale-up request for %s: no opted-in Service has that ClusterIP",
                        snapshots.format_ip(key))
            return
        if not self.cooldown.take(service=key, now_ns=self.clock()):
            self.telemetry.scale_requested(result=COALESCED)
            return
        by_name = {t.name: t for t in targets.values()}
        policies = {t.name: t.policy for t in targets.values()}
        for name in policy.wake_order(target.name, policies):
            await self._wake_one(by_name[name], asked_for=target.name)

    async def _wake_one(self, target: Target, *, asked_for: str) -> None:
        scale = await self.workloads.get_scale(target.ref)
        if scale.replicas != 0:
            self.telemetry.scale_requested(result=COALESCED)  # up (or waking) already
        else:
            self._check_lease(f"scale {target.ref} up")
            await self.workloads.set_scale(target.ref, replicas=1,
                                           resource_version=scale.resource_version)
            self.telemetry.scale_requested(result=SCALED)
            log.info("scaled %s from 0 to 1 for %s (traffic to %s)", target.ref, target.name,
                     asked_for)
        if self.facts is not None:
            self.facts.note_scaled_up(service=target.key, now_ns=self.clock())
        if target.policy.hpa_name:
            self._check_lease(f"restore HPA of {target.ref}")
            if await self.workloads.resume_hpa(target.ref, hpa=target.policy.hpa_name):
                log.info("restored HPA %s of %s", target.policy.hpa_name, target.ref)

    # -- scale-down -------------------------------------------------------------------------------

    async def _scale_down_round(self) -> None:
        facts = self.facts
        assert facts is not None
        targets = {t.name: t for t in self.targets().values()}
        policies = {name: t.policy for name, t in targets.items()}
        ready = self.ready()
        awake = {name for name, t in targets.items() if ready.get(t.key, 0) > 0}
        live = list(self.live_nodes())
        facts.retain(live)
        now = self.clock()
        due: dict[str, scaling.Verdict] = {}
        outlooks = []
        for name in sorted(awake):
            target = targets[name]
            verdict = facts.scale_down(service=target.key, idle_ns=target.idle_ns,
                                       live_nodes=live, now_ns=now)
            outlooks.append(scaling.Outlook(name, target.key, verdict))
            if verdict.allowed:
                due[name] = verdict
        self.status.outlooks = tuple(outlooks)
        for name in policy.sleep_order(due, policies):
            if policy.held_up_by(name, policies, awake=awake):
                continue  # a dependent is still up: it goes first, this one a later round
            if await self._sleep_one(targets[name], due[name]):
                awake.discard(name)

    async def _sleep_one(self, target: Target, verdict: scaling.Verdict) -> bool:
        scale = await self.workloads.get_scale(target.ref)
        if scale.replicas == 0:
            return True
        if target.policy.hpa_name:
            self._check_lease(f"suspend HPA of {target.ref}")
            if await self.workloads.suspend_hpa(target.ref, hpa=target.policy.hpa_name):
                log.info("suspended HPA %s of %s (spec saved on the workload)",
                         target.policy.hpa_name, target.ref)
                scale = await self.workloads.get_scale(target.ref)  # the save changed it
        self._check_lease(f"scale {target.ref} down")
        await self.workloads.set_scale(target.ref, replicas=0,
                                       resource_version=scale.resource_version)
        self.scale_downs += 1
        log.info("scaled %s from %d to 0 for %s: %s", target.ref, scale.replicas, target.name,
                 verdict.reason)
        return True
