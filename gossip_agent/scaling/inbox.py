"""The leader's side of scale-up requests: take each node report once, count, log, hand over.

Only an agent in office takes reports (NotLeader otherwise: the reporter finds the leader again
and retries), so followers never act on scale-up requests. A report seen before, by (node,
incarnation, seq), is acknowledged again without acting twice (core.reports.Ledger). Each new
request is counted per service, logged, published to WatchScaleRequests readers and handed to
the leader's source (Source.scale_up), which decides what scaling means, and to the delegate
(the scaler, with SOURCE=kubernetes), which also takes each node's traffic summary.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from gossip_agent import errors
from gossip_agent.core import reports, snapshots, traffic
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.scaling import hub as hub_mod
from gossip_agent.scaling import wire
from gossip_agent.sources import base as source_base

log = logging.getLogger("gossip_agent.scaleup")


class Delegate(Protocol):
    """Who acts on the reports the leader takes, besides its source: the scaler
    (scaling.loop.Scaler) with SOURCE=kubernetes; tests and the lab pass their own."""

    def apply(self, node: str, incarnation: int, summary: traffic.Summary) -> bool:
        """A node's traffic summary (the scaler's cluster facts); False when it is a delta
        that cannot be applied (the node is asked for a full one)."""

    def scale_up(self, request: source_base.ScaleUp) -> None:
        """A scale-up request, after the source has taken it."""


@dataclasses.dataclass
class Counts:
    """What this agent took as leader (for the console, tests and later metrics). Per service
    (at most the map's entries), never per node: nodes come and go, the count would not."""

    reports: int = 0
    duplicates: int = 0
    requests: int = 0
    per_service: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter)


@dataclasses.dataclass(frozen=True)
class Taken:
    duplicate: bool
    leader: str
    term: int
    need_full: bool = False  # the report's delta could not be applied: ask for a full summary


class Inbox:
    def __init__(
        self,
        *,
        node: str,
        leadership: leader_mod.Leadership,
        source: source_base.Source,
        hub: hub_mod.Hub,
        name_of: Callable[[int], str],
        delegate: Delegate | None = None,
    ) -> None:
        self.node = node
        self.leadership = leadership
        self.source = source
        self.hub = hub
        self.name_of = name_of
        self.ledger = reports.Ledger()
        self.counts = Counts()
        self.delegate = delegate  # None: summaries are dropped, the source alone scales

    def take(self, incoming: wire.Incoming) -> Taken:
        """Acts on a report once; raises NotLeader unless this agent is in office."""
        if not self.leadership.leading:
            raise errors.NotLeader(
                f"{self.node} does not lead; report scale-up requests to the leader")
        term = self.leadership.term
        fresh = self.ledger.take(
            node=incoming.node, incarnation=incoming.incarnation, seq=incoming.report.seq)
        if not fresh:
            self.counts.duplicates += 1
            return Taken(duplicate=True, leader=self.node, term=term)
        self.counts.reports += 1
        summary = incoming.report.summary
        applied = True
        if summary is not None and self.delegate is not None:
            applied = self.delegate.apply(incoming.node, incoming.incarnation, summary)
        for request in incoming.report.requests:
            self._act(request, node=incoming.node)
        return Taken(duplicate=False, leader=self.node, term=term, need_full=not applied)

    def _act(self, request: reports.Request, *, node: str) -> None:
        name = self.name_of(request.service_ip)
        self.counts.requests += 1
        self.counts.per_service[request.service_ip] += 1
        log.info("scale-up request for %s%s from node %s (client %s, %d event(s)); %d so far",
                 snapshots.format_ip(request.service_ip), f" ({name})" if name else "", node,
                 snapshots.format_ip(request.source_ip), request.events,
                 self.counts.per_service[request.service_ip])
        if node != self.node:  # this agent's own requests were published when it read them
            self.hub.publish(hub_mod.Seen(request, node=node, via=hub_mod.REPORT, name=name))
        scale_up = source_base.ScaleUp(
            service_ip=request.service_ip, name=name, node=node, source_ip=request.source_ip,
            events=request.events,
        )
        self.source.scale_up(scale_up)
        if self.delegate is not None:
            self.delegate.scale_up(scale_up)
