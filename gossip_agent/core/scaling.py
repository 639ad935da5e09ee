"""The leader's scaling decisions on cluster-wide facts: scale down only on idleness everywhere,
scale up once per cool-down.

Clocks: every node measures its facts on its own monotonic clock and sends ages (idle_ns), never
timestamps. The leader dates a fact on ITS monotonic clock as `received - idle_ns`; no two nodes'
clocks are ever compared. Transit time makes traffic look older by the delivery delay of one
report (milliseconds against idle times of seconds to hours); the node's sampling dates packets
late by up to one sampling period, which leans the other way.

Scale-down of a service with idle time T is allowed at leader time `now` only when ALL hold:
1. the leader has been in office at least one report window (`window_ns`): a new leader knows
   nothing of the traffic its predecessor was told about, and a full window gives every live
   node time to report to it;
2. every live node (membership's view, this leader included) has a summary received within the
   window: a silent node blocks (missing facts never count as idleness) until it reports or
   membership declares it dead;
3. no live node's latest summary says it is blind: a node whose XDP program cannot count its
   traffic (no program of ours loaded, or an interface it should watch failed or carries a
   foreign program) sends no facts and says why, and "saw nothing" from it means nothing;
4. that summary has a fact for the service (a node that does not list it yet says nothing);
5. no node's fact dates traffic after `now - T`, and no scale-up was made after `now - T`.

What the leader holds of a node is its latest full summary with every delta since applied onto
it, in order (ClusterFacts.apply): a delta names only the services whose counters moved, so a
service it leaves out keeps the time of its last packet, which is exactly what the node would
have said. A delta that does not follow the generation held (a lost report, a new incarnation,
a leader new to its term) changes nothing and the node is asked for a full summary; until it
comes, the node's facts age and rule 2 blocks.

Each refusal carries a cause (CAUSES), so operators see why a service stays up (GetState's
scale_down, the console's `scaling`, gossip_agent_scale_down_blocked{cause}).

Scale-up: the leader acts at most once per service per cool-down (SCALE_UP_COOLDOWN), however
many nodes and packets asked; the scaler additionally acts only when the workload's /scale
shows 0 replicas, so a repeated request is harmless.

Pure: times are passed in (ns of the leader's monotonic clock), no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from gossip_agent.core import traffic

NS = 1_000_000_000

# Why a scale-down is refused, one word each (metric label values; GetState shows the sentence).
OFFICE, NO_LIVE, SILENT, STALE, BLIND, NO_FACTS, TRAFFIC, SCALED_UP = (
    "office", "no-live", "silent", "stale", "blind", "no-facts", "traffic", "scaled-up")
CAUSES = (OFFICE, NO_LIVE, SILENT, STALE, BLIND, NO_FACTS, TRAFFIC, SCALED_UP)


@dataclasses.dataclass
class NodeSummary:
    """What the leader holds of one node: its latest full summary with every delta since applied
    onto it, dated on the leader's clock."""

    node: str
    received_ns: int  # the latest summary (a delta or beat included): the node's freshness
    last_traffic_ns: dict[int, int]  # service -> leader-clock time of the node's last packet
    passed: dict[int, int]  # service -> packets passed in the summary that last named it
    dropped: dict[int, int]
    blind: str = ""  # why the node cannot count its traffic; "" when it can
    incarnation: int = 0  # the reporting process, and the generation of its latest summary:
    generation: int = 0  # a delta applies only onto exactly the one before it


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a service may be scaled down now, and the facts that decided it (for the log)."""

    allowed: bool
    reason: str
    cause: str = ""  # one of CAUSES when refused, "" when allowed


class ClusterFacts:
    """What the leader knows of the cluster's traffic, per node and service."""

    def __init__(self, *, window_ns: int, took_office_ns: int) -> None:
        self.window_ns = window_ns
        self.took_office_ns = took_office_ns
        self._nodes: dict[str, NodeSummary] = {}
        self._scaled_up: dict[int, int] = {}  # service -> leader time of its last scale-up

    def record(self, *, node: str, facts: Iterable[traffic.Fact], now_ns: int,
               blind: str = "", incarnation: int = 0, generation: int = 0) -> None:
        """A node's full summary arrived now; it replaces that node's previous one. A blind
        node's facts (it should send none) are ignored: they would only be zeros it did not
        see."""
        facts = () if blind else tuple(facts)
        self._nodes[node] = NodeSummary(
            node=node, received_ns=now_ns,
            last_traffic_ns={f.service_ip: now_ns - f.idle_ns for f in facts},
            passed={f.service_ip: f.passed for f in facts},
            dropped={f.service_ip: f.dropped for f in facts},
            blind=blind, incarnation=incarnation, generation=generation,
        )

    def apply(self, *, node: str, incarnation: int, summary: traffic.Summary,
              now_ns: int) -> bool:
        """A node's summary arrived now. A full one replaces what the leader held for the node;
        a delta is applied onto it only when it follows exactly the generation held for the
        same incarnation. False when it does not: nothing changes (not even the node's
        freshness, so a node that never sends the full summary goes stale and blocks), and the
        node is asked for a full summary."""
        if summary.full:
            self.record(node=node, facts=summary.facts, now_ns=now_ns, blind=summary.blind,
                        incarnation=incarnation, generation=summary.generation)
            return True
        held = self._nodes.get(node)
        if (held is None or held.incarnation != incarnation
                or held.generation != summary.generation - 1):
            return False
        for fact in summary.facts:
            held.last_traffic_ns[fact.service_ip] = now_ns - fact.idle_ns
            held.passed[fact.service_ip] = fact.passed
            held.dropped[fact.service_ip] = fact.dropped
        held.received_ns = now_ns
        held.generation = summary.generation
        return True

    def forget(self, node: str) -> None:
        """Membership declared the node dead: its facts no longer count, nor does it block."""
        self._nodes.pop(node, None)

    def retain(self, live: Iterable[str]) -> list[str]:
        """Forgets every node not in `live` (it left, or membership declared it dead); returns
        them. Safe: only live nodes' facts decide (rule 2), and a node that comes back must
        report again before it stops blocking. Keeps the facts to one per live node."""
        gone = sorted(self._nodes.keys() - set(live))
        for node in gone:
            self.forget(node)
        return gone

    def reported(self) -> set[str]:
        """The nodes whose summary is kept."""
        return set(self._nodes)

    def note_scaled_up(self, *, service: int, now_ns: int) -> None:
        """A scale-up counts as traffic: the workload gets its full idle time before it may go
        down again, even if the waking packets were all dropped before the last summaries."""
        self._scaled_up[service] = now_ns

    def summary_of(self, node: str) -> NodeSummary | None:
        return self._nodes.get(node)

    def last_traffic(self, service: int) -> int | None:
        """Leader time of the latest packet any node reported for the service (or scale-up)."""
        times = [s.last_traffic_ns[service] for s in self._nodes.values()
                 if service in s.last_traffic_ns]
        if service in self._scaled_up:
            times.append(self._scaled_up[service])
        return max(times) if times else None

    def scale_down(self, *, service: int, idle_ns: int, live_nodes: Iterable[str],
                   now_ns: int) -> Verdict:
        """May the service be scaled down now? See the module docstring for the rule."""
        in_office = now_ns - self.took_office_ns
        if in_office < self.window_ns:
            return Verdict(False, f"leader in office {in_office / NS:.1f}s, waiting one report "
                                  f"window ({self.window_ns / NS:.1f}s)", OFFICE)
        live = sorted(set(live_nodes))
        if not live:
            return Verdict(False, "no live node is known", NO_LIVE)
        for node in live:
            blocked = self._node_blocks(node, service=service, idle_ns=idle_ns, now_ns=now_ns)
            if blocked is not None:
                return blocked
        scaled_up = self._scaled_up.get(service)
        if scaled_up is not None and now_ns - scaled_up < idle_ns:
            return Verdict(False, f"scaled up {(now_ns - scaled_up) / NS:.1f}s ago", SCALED_UP)
        last = self.last_traffic(service)
        quiet = ("no traffic seen" if last is None
                 else f"last traffic {(now_ns - last) / NS:.1f}s ago")
        return Verdict(True, f"idle on all {len(live)} live node(s) ({', '.join(live)}): {quiet}, "
                             f"idle time {idle_ns / NS:.0f}s")

    def _node_blocks(self, node: str, *, service: int, idle_ns: int,
                     now_ns: int) -> Verdict | None:
        """The refusal this node's facts impose on the service, None when they allow it."""
        summary = self._nodes.get(node)
        if summary is None:
            return Verdict(False, f"node {node} has not reported to this leader", SILENT)
        age = now_ns - summary.received_ns
        if age > self.window_ns:
            return Verdict(False, f"node {node} last reported {age / NS:.1f}s ago "
                                  f"(window {self.window_ns / NS:.1f}s)", STALE)
        if summary.blind:
            return Verdict(False, f"node {node} is blind ({summary.blind})", BLIND)
        last = summary.last_traffic_ns.get(service)
        if last is None:
            return Verdict(False, f"node {node} reported no facts for the service", NO_FACTS)
        if now_ns - last < idle_ns:
            return Verdict(False, f"node {node} saw traffic {(now_ns - last) / NS:.1f}s ago",
                           TRAFFIC)
        return None


class CoolDown:
    """At most one scale-up per service per cool-down period."""

    def __init__(self, *, cooldown_ns: int) -> None:
        self.cooldown_ns = cooldown_ns
        self._last: dict[int, int] = {}

    def take(self, *, service: int, now_ns: int) -> bool:
        """True (and the cool-down starts) when the service may be scaled up now."""
        last = self._last.get(service)
        if last is not None and now_ns - last < self.cooldown_ns:
            return False
        self._last[service] = now_ns
        return True


@dataclasses.dataclass(frozen=True)
class Outlook:
    """The leader's latest verdict on one awake opted-in service."""

    name: str  # "namespace/name"
    service: int  # its SERVICE_LIST key
    verdict: Verdict


class Status:
    """What operators see of scaling on one agent (GetState, the console's `scaling`, metrics).

    Written by the agent's own loops, read at any time: `blind` by the traffic summariser on
    every agent, `outlooks` by the leader's scale-down round (empty on followers)."""

    def __init__(self) -> None:
        self.blind = ""  # why this node cannot count its traffic; "" when it can
        self.outlooks: tuple[Outlook, ...] = ()

    def blocked(self) -> tuple[Outlook, ...]:
        return tuple(o for o in self.outlooks if not o.verdict.allowed)

    def describe(self, outlook: Outlook) -> str:
        """One line per service, e.g. "default/web: scale-down blocked: node b is blind (...)"."""
        if outlook.verdict.allowed:
            return f"{outlook.name}: scale-down allowed: {outlook.verdict.reason}"
        return f"{outlook.name}: scale-down blocked: {outlook.verdict.reason}"
