"""The reporting side of scale-up requests, on every agent (the leader reports to itself).

Two named tasks:
- `scaleup.read`: reads the data plane's scale-up events (a dataplane.events subscription:
  the XDP program's ring buffer on a BPF node; nothing, or what tests publish, otherwise),
  publishes each to this agent's WatchScaleRequests readers and queues it, deduplicated per
  service (core.reports.ReportQueue).
- `scaleup.report`: sends the queued requests to the leader as one report at a time, resending
  the same (seq, content) until the leader acknowledges it; failures back off exponentially
  (PEER_BACKOFF_BASE .. PEER_BACKOFF_CAP) and retry at once when a new snapshot arrives, since
  that may name a new leader. Requests are never dropped while the agent lives: a node cut off
  from the leader reports when it is back.

The traffic summary a report carries (`summarise` makes one due every interval) is built when
the report is, from the TrafficWatch: a delta on the summary acknowledged last, or a full one
when due or when the leader's acknowledgement asked for it (need_full). A leader before 0.2
acknowledges without `compact`: it read nothing of the report, so its requests and summary go
again under a new seq in the legacy layout (scaleup.compat), whole, until a newer leader
answers.

Where a report goes is the `deliver` callable's business (route.ToLeader in the agent); tests
hand in their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from gossip_agent.core import peers, reports, snapshots, traffic
from gossip_agent.dataplane import events as events_mod
from gossip_agent.scaling import compat, wire
from gossip_agent.scaling import hub as hub_mod
from gossip_agent.v1 import compat_pb2
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.scaleup")


class Undeliverable(Exception):
    """The report did not reach a leader that took it (no leader, unreachable, not leading)."""


# A report in the compact layout, or in the legacy one for a leader before 0.2 (scaleup.compat).
Report = pb.NodeReport | compat_pb2.LegacyNodeReport
Deliver = Callable[[Report], Awaitable[pb.ReportAck]]
# Reads this node's XDP counters: service -> totals summed over CPUs (dataplane.bpfmap.stats).
ReadCounters = Callable[[], Mapping[int, traffic.Counts]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Reporter:
    def __init__(
        self,
        *,
        node: str,
        incarnation: int,
        deliver: Deliver,
        hub: hub_mod.Hub,
        name_of: Callable[[int], str],
        backoff: peers.BackoffPolicy,
        rng: random.Random,
        leader_may_have_changed: Callable[[], Awaitable[None]],
        wall: Callable[[], int] = wall_ms,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.node = node
        self.incarnation = incarnation
        self.deliver = deliver
        self.hub = hub
        self.name_of = name_of
        self.backoff = backoff
        self.rng = rng
        self.leader_may_have_changed = leader_may_have_changed
        self.wall = wall
        self.clock = clock  # this node's CLOCK_MONOTONIC: the facts' ages
        self.queue = reports.ReportQueue()
        self.watch = traffic.TrafficWatch()
        self.legacy = False  # the leader last reached reads only the layout before 0.2
        self.full_asked = 0  # need_full answers (for stats and tests)
        self.events_read = 0
        self.reports_acked = 0
        self.failures = 0  # consecutive failed deliveries of the report in flight
        self._last_trouble = ""
        self._wake = asyncio.Event()

    # -- scaleup.read ---------------------------------------------------------------------------

    async def read(self, subscription: events_mod.Subscription) -> None:
        with subscription:
            async for event in subscription:
                self.note(event)

    def note(self, event: events_mod.ScaleUpEvent) -> None:
        """One event from this node's data plane: shown to readers, queued for the leader."""
        self.events_read += 1
        request = reports.Request(
            service_ip=event.service_ip, source_ip=event.source_ip,
            monotonic_ns=event.timestamp_ns, unix_ms=self.wall(),
        )
        self.hub.publish(hub_mod.Seen(
            request, node=self.node, via=hub_mod.LOCAL, name=self.name_of(event.service_ip)))
        if self.queue.add(request):
            log.debug("scale-up event for %s queued for the leader",
                      snapshots.format_ip(event.service_ip))
            self._wake.set()

    # -- scaleup.traffic ------------------------------------------------------------------------

    async def summarise(self, *, counters: ReadCounters, listed: Callable[[], Iterable[int]],
                        blind: Callable[[], str], interval: float) -> None:
        """Every `interval`: sample the counters and make a summary due for the next report.
        One report per interval at most carries a summary, so the leader's load is bounded by
        nodes / interval whatever the traffic, and a quiet node's summary is a beat.

        While `blind()` gives a reason (the node's program cannot count its traffic), the
        summary carries that reason and no facts, and the watch starts afresh when the node
        sees again: idleness is measured only over time the node could observe."""
        while True:
            reason = blind()
            if reason:
                self.watch.blind(reason)
            else:
                self.watch.sample(now_ns=self.clock(), listed=listed(), counts=counters())
            self.queue.summary_due()
            self._wake.set()
            await asyncio.sleep(interval)

    def _summary(self) -> traffic.Summary:
        if self.legacy:
            self.watch.want_full()
        return self.watch.summary(now_ns=self.clock())

    # -- scaleup.report -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            report = self.queue.next_report(self._summary)
            if report is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            await self._send(report)

    def _encode(self, report: reports.Report) -> Report:
        if self.legacy:
            return compat.legacy_report_to_pb(report, node=self.node,
                                              incarnation=self.incarnation)
        return wire.report_to_pb(report, node=self.node, incarnation=self.incarnation)

    async def _send(self, report: reports.Report) -> None:
        try:
            ack = await self.deliver(self._encode(report))
        except Undeliverable as exc:
            await self._after_failure(report, str(exc))
            return
        if not ack.compact:
            self._to_older_leader(report, ack)
            return
        if self.legacy:
            log.info("leader %s reads the compact report layout again", ack.leader)
            self.legacy = False
            self.watch.want_full()  # it holds this node's last whole summary, as generation 0
        if self.queue.acknowledged(ack.seq):
            self._acknowledged(report, ack)

    def _acknowledged(self, report: reports.Report, ack: pb.ReportAck) -> None:
        self.reports_acked += 1
        if ack.need_full:
            self.full_asked += 1
            self.watch.want_full()
        if self.failures:
            log.info("report %d acknowledged by leader %s after %d failed attempt(s)",
                     report.seq, ack.leader, self.failures)
        self.failures = 0
        self._last_trouble = ""

    def _to_older_leader(self, report: reports.Report, ack: pb.ReportAck) -> None:
        """A leader before 0.2 took the report without reading its compact fields (or, in the
        legacy layout, read it whole): in the first case everything goes again, legacy."""
        if self.legacy:
            if self.queue.acknowledged(ack.seq):
                self._acknowledged(report, ack)
            return
        log.info("leader %s predates 0.2: reporting in its layout (dotted addresses, whole "
                 "summaries) while it leads", ack.leader or "?")
        self.legacy = True
        if self.queue.requeue(ack.seq):
            self._wake.set()

    async def _after_failure(self, report: reports.Report, reason: str) -> None:
        self.failures += 1
        if not self.reports_acked and not report.requests:
            # A fresh start before any leader is known: expected, not trouble (a clean start
            # logged a WARNING for its first summary). A waiting scale-up request still warns.
            log.debug("traffic summary %d waits for a leader: %s", report.seq, reason)
        elif reason != self._last_trouble:  # one line per distinct trouble, not per retry
            log.warning("scale-up report %d (%d request(s)) not delivered: %s; retrying",
                        report.seq, len(report.requests), reason)
            self._last_trouble = reason
        delay = self.backoff.delay(self.failures, self.rng)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.leader_may_have_changed()
