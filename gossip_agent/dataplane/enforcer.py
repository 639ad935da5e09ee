"""The XDP side of one agent: the loaded program, the interfaces it is on, the fail-open
heartbeat and the scale-up event reader. agent.py builds one per BPF data plane.

Lifecycle:
- build(): puts this agent's FAIL_OPEN_AFTER on the heartbeat record without refreshing it
  (own_threshold, below); if XDP_INTERFACES is set, compiles and loads the program and pins
  it.
- tasks(): `xdp.interfaces` (attach to matching interfaces as they appear), `xdp.events`
  (ring -> EventHub), `xdp.heartbeat` (the heartbeat, below).
- close(): frees this process's handles only. The program stays attached and the maps stay
  pinned: the data plane keeps enforcing the last state while the agent is down or
  restarting, until FAIL_OPEN_AFTER passes. `gossip-agent detach` removes both.

The heartbeat vouches for a live agent (dataplane/liveness.py). Once the agent is up
(serving, its loops started) it is on probation for probation(FAIL_OPEN_AFTER) seconds: no
refresh. Only if it stayed alive all that time (the loops it watches, `lease.elect` and
`xdp.events`, still run and no task crashed) does it write its first refresh, then one every
heartbeat_interval() while it stays alive. Once it stops being alive the heartbeat stops for
good, and FAIL_OPEN_AFTER after the last refresh the program passes everything. The health of
dependencies does not count: a lease backend that cannot be reached leaves `lease.elect`
retrying, and the node keeps enforcing.

Why a probation: this reverses an earlier rule, "write a fresh heartbeat first, before anything
else, so a program that replaces an old one never starts failed open". That rule let a crash
loop defeat fail-open: every attempt Kubernetes restarted refreshed the heartbeat, and the node
kept dropping traffic to services at zero with no agent reading scale-up events, for as long as
the loop lasted. Writing the first refresh once the agent is up closed that for attempts that
die during start-up, but not for an agent that gets up and crashes soon after, every time
(CrashLoopBackOff: restarts at most 5 minutes apart, well inside the default FAIL_OPEN_AFTER of
10 minutes). With the probation such an attempt never refreshes, however often it restarts, and
FAIL_OPEN_AFTER takes effect.

The threshold is this agent's from the start: build() puts its FAIL_OPEN_AFTER on the record
and keeps the predecessor's last refresh (own_threshold). Otherwise a record that says "never
fail open" would keep a crash loop enforcing forever: one left by an agent run with
FAIL_OPEN_AFTER=0, or one never written (all zero) on a new or rebooted node, whose agents may
adopt zeros from gossip while on probation. A record never written has no last refresh to
keep: the first agent on the node starts the clock there, so the node enforces from its first
start as it always did, and a crash loop from the first start on fails open FAIL_OPEN_AFTER
later. That one stamp is not a vouch: it is written once per node, never again.

What it costs: an agent started after its predecessor's heartbeat aged past FAIL_OPEN_AFTER (it
was down that long) leaves the node failed open until its own first refresh, that is for its
start-up time (compiling the program, about 3 s of CPU, then binding and starting its loops)
plus the probation. That is bounded, it only happens after the node had already failed open
for FAIL_OPEN_AFTER, and passing traffic is the safe side: it is exactly the state the node was
in a moment before. A normal restart never fails open (see probation() for the bound).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from gossip_agent.dataplane import bpfmap, events, interfaces, xdp
from gossip_agent.dataplane import liveness as liveness_mod

log = logging.getLogger("gossip_agent.xdp")

HEARTBEAT_MAX_INTERVAL = 10.0  # seconds; a refresh is one map write
# The probation's cap (probation()): a minute of the agent's own work before it vouches.
PROBATION_MAX = 60.0  # seconds
# The start of every "blind" reason of a node with no program of ours (GetState, logs).
NO_PROGRAM = "no counting program"


def heartbeat_interval(fail_open_after: float) -> float:
    """A quarter of FAIL_OPEN_AFTER (three missed refreshes still do not fail open), capped."""
    if fail_open_after <= 0:
        return HEARTBEAT_MAX_INTERVAL
    return max(0.01, min(HEARTBEAT_MAX_INTERVAL, fail_open_after / 4))


def probation(fail_open_after: float) -> float:
    """How long the agent must be up and alive before its first refresh, in seconds:

        P = min(FAIL_OPEN_AFTER / 4, 60 s), and 0 when FAIL_OPEN_AFTER is 0 (never fails open,
        so there is nothing to protect: the first refresh is written at once, as before).

    Long enough: an attempt that crashes within P of being up never refreshes, however often it
    is restarted. 60 s covers the first rounds of every loop at the default timers, where a
    crash right after start-up happens: a Kubernetes-lease failover (LEASE_DURATION 15 s) and
    the first publish, the first scale window (SCALE_REPORT_WINDOW 15 s), traffic reports (5 s),
    DNS discovery (10 s), the source's first list and watch, and the kubelet's earliest restart
    of a container failing its liveness probe (5 s + 3 x 10 s). P is never shorter than one
    heartbeat interval (both are FAIL_OPEN_AFTER / 4 below 40 s).

    Short enough: a healthy restart (a rolling update, maxSurge 0) must not fail the node open.
    The new agent's first refresh comes at most
        interval (the old agent's last refresh) + shutdown (at most the 10 s grace period)
        + pod start and image pull + start-up (~3 s to compile) + P
    after the old one's last, and interval + P <= FAIL_OPEN_AFTER / 2, so the other half is
    left for the rest: with the defaults 10 + 10 + 3 + 60 = 83 s of 600, leaving over 8
    minutes for pulling the image.

    What remains: an agent that survives longer than P each time does refresh, once per
    restart. It was working all that time (serving, electing, reading scale-up events).
    Between its lives (Kubernetes' backoff is capped at 5 minutes) the node keeps enforcing, as
    through any restart, and fails open only once FAIL_OPEN_AFTER passes without a refresh.
    Derived, not configured: tune FAIL_OPEN_AFTER, and P follows within both bounds."""
    if fail_open_after <= 0:
        return 0.0
    return min(PROBATION_MAX, fail_open_after / 4)


class Enforcer:
    def __init__(
        self,
        *,
        plane: bpfmap.BpfDataPlane,
        patterns: tuple[str, ...],
        mode: str,
        fail_open_after: float,
        hub: events.EventHub,
        liveness: liveness_mod.Liveness,
        program: xdp.Program | None = None,
    ) -> None:
        """program: the loaded XDP program, None for maps only (build() loads it)."""
        self.plane = plane
        self.patterns = patterns
        self.mode = mode
        self.fail_open_after = fail_open_after
        self.hub = hub
        self.liveness = liveness  # what the heartbeat vouches for
        self.interfaces: dict[str, xdp.InterfaceState] = {}
        self.program = program
        self.scanned = False  # the interfaces were looked at once (sync ran)

    @classmethod
    def build(
        cls,
        *,
        plane: bpfmap.BpfDataPlane,
        patterns: tuple[str, ...],
        mode: str,
        fail_open_after: float,
        hub: events.EventHub,
        liveness: liveness_mod.Liveness,
    ) -> Enforcer:
        own_threshold(plane, fail_open_after=fail_open_after)
        program = None
        if patterns:
            program = xdp.Program(pin_dir=plane.pin_dir, max_entries=plane.max_entries,
                                  table_map_id=plane.table_map_id)
            program.pin()
            log.info("XDP program %d loaded from %s for interfaces %s (mode %s)",
                     program.prog_id, xdp.SOURCE, ",".join(patterns), mode)
        return cls(plane=plane, patterns=patterns, mode=mode, fail_open_after=fail_open_after,
                   hub=hub, liveness=liveness, program=program)

    def beat(self) -> None:
        self.plane.write_heartbeat(refreshed_ns=time.monotonic_ns(),
                                   fail_open_after_ns=int(self.fail_open_after * 1e9))

    def tasks(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        found: list[tuple[Coroutine[Any, Any, None], str]] = [
            (self._heartbeat(), "xdp.heartbeat")]
        if self.program is not None:
            found.append((interfaces.follow(self.patterns, self.sync), "xdp.interfaces"))
            found.append((self.program.read_events(self.hub), "xdp.events"))
        return found

    async def _heartbeat(self) -> None:
        """Task `xdp.heartbeat`: once the agent is up, its probation, then one refresh per
        interval while it stays alive; ends, saying why, when it no longer is."""
        await self.liveness.wait_up()
        await asyncio.sleep(0)  # the loops started with this one take their first step first
        if why_not := await self._probation():
            log.error("heartbeat: %s on probation, never refreshed; the XDP program fails "
                      "open %s", why_not, self._fails_open())
            return
        log.info("heartbeat: the agent is up, the XDP program enforces (fails open %s)",
                 self._fails_open())
        while not (why_not := self.liveness.why_not()):
            self.beat()
            await asyncio.sleep(heartbeat_interval(self.fail_open_after))
        log.error("heartbeat stopped: %s; the XDP program fails open %s", why_not,
                  self._fails_open())

    async def _probation(self) -> str:
        """Waits until the agent has been alive for probation() since it got up; returns ""
        then, or why not once it is no longer alive (seen within an interval; being alive never
        comes back, so "alive at every look" is "alive all along")."""
        period = probation(self.fail_open_after)
        if period > 0:
            log.info("heartbeat: on probation for %g s (no refresh until the agent has been up "
                     "and alive that long)", period)
        loop = asyncio.get_running_loop()
        ends = loop.time() + period
        while not (why_not := self.liveness.why_not()):
            left = ends - loop.time()
            if left <= 0:
                return ""
            await asyncio.sleep(min(left, heartbeat_interval(self.fail_open_after)))
        return why_not

    def _fails_open(self) -> str:
        return fails_open(self.fail_open_after)

    def blindness(self) -> str:
        """Why this node's program cannot count all the traffic it should; "" when it can.

        A program that follows XDP_INTERFACES but has no matching interface yet (no pod veth
        on the node) still observes: it would count any pod traffic there is. Before the first
        scan it is unknown what it misses, so that counts as blind too."""
        if self.program is None:
            return f"{NO_PROGRAM}: XDP_INTERFACES is empty, maps only"
        if not self.scanned:
            return "interfaces matching XDP_INTERFACES not scanned yet"
        for state in sorted(self.interfaces.values(), key=lambda s: s.name):
            if state.status == "failed":
                return f"XDP failed on {state.name}: {state.detail}"
            if state.status == "foreign":
                return f"{state.name} is not counted: {state.detail}"
        return ""

    def sync(self, found: dict[str, int]) -> None:
        """Attaches to every matching interface; forgets vanished ones; logs what changed."""
        assert self.program is not None
        self.scanned = True
        for name in set(self.interfaces) - set(found):
            log.info("interface %s is gone", name)
            del self.interfaces[name]
        for name, ifindex in sorted(found.items()):
            state = self.program.attach_to(name, ifindex, mode=self.mode)
            previous = self.interfaces.get(name)
            if previous is not None and _unchanged(previous, state):
                continue  # keeps how it got there ("replaced" stays "replaced")
            self.interfaces[name] = state
            _log_state(state)

    def close(self) -> None:
        if self.program is not None:
            self.program.close()


def _unchanged(previous: xdp.InterfaceState, state: xdp.InterfaceState) -> bool:
    """Still our program in the same mode on the same interface (found "attached" again)."""
    return (state.status == "attached" and previous.status in ("attached", "replaced")
            and (previous.ifindex, previous.mode) == (state.ifindex, state.mode))


def _log_state(state: xdp.InterfaceState) -> None:
    if state.status in ("attached", "replaced"):
        log.info("XDP on %s: %s in %s mode %s", state.name, state.status, state.mode,
                 state.detail)
    elif state.status == "foreign":
        log.warning("XDP on %s: skipped, %s", state.name, state.detail)
    else:
        log.error("XDP on %s: failed, %s", state.name, state.detail)


def own_threshold(plane: bpfmap.BpfDataPlane, *, fail_open_after: float) -> None:
    """Puts this agent's FAIL_OPEN_AFTER on the record, keeping the last refresh (not a
    refresh), so that no record says "never" to a crash loop. A record never written (all
    zero: refreshed 0 with "never") has no refresh to keep: the clock starts now, once per
    node."""
    refreshed_ns, after_ns = plane.read_heartbeat()
    wanted_ns = int(fail_open_after * 1e9)
    if (refreshed_ns, after_ns) == (0, 0) and wanted_ns:
        plane.write_heartbeat(refreshed_ns=time.monotonic_ns(), fail_open_after_ns=wanted_ns)
        log.info("heartbeat: none on this node yet; it fails open %s unless this agent "
                 "refreshes by then", fails_open(fail_open_after))
    elif after_ns != wanted_ns:
        plane.write_heartbeat(refreshed_ns=refreshed_ns, fail_open_after_ns=wanted_ns)
        log.info("heartbeat: FAIL_OPEN_AFTER on the record is now %g s (was %s), the last "
                 "refresh kept", fail_open_after,
                 f"{after_ns / 1e9:g} s" if after_ns else "never")


def fails_open(fail_open_after: float) -> str:
    """When a node without refreshes fails open, in words for the log."""
    if fail_open_after <= 0:
        return "never (FAIL_OPEN_AFTER=0)"
    return f"{fail_open_after:g} s after the last refresh (FAIL_OPEN_AFTER)"
