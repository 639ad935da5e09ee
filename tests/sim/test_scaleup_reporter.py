"""The reporter's loops in one event loop, with an in-memory leader: a report is resent unchanged
until acknowledged, a burst becomes one request, and the leader acts on each report once even
when its acknowledgements are lost."""

from __future__ import annotations

import asyncio
import random

import pytest

from gossip_agent.core import peers, reports, snapshots
from gossip_agent.dataplane import events
from gossip_agent.scaling import hub as hub_mod
from gossip_agent.scaling import reporter as reporter_mod
from gossip_agent.scaling import wire
from gossip_agent.v1 import compat_pb2
from gossip_agent.v1 import gossip_pb2 as pb

pytestmark = pytest.mark.sim
BOUND = 5.0  # seconds: liveness bound for loops whose backoff is milliseconds


class FlakyLeader:
    """Refuses the first `refuse` deliveries, then takes reports; loses the first `lose_acks`
    acknowledgements after taking (the reporter must retry and be recognised)."""

    def __init__(self, *, refuse: int, lose_acks: int = 0) -> None:
        self.refuse = refuse
        self.lose_acks = lose_acks
        self.ledger = reports.Ledger()
        self.seen: list[int] = []  # seq of every delivery attempt
        self.acted: list[reports.Request] = []
        self.acked = asyncio.Event()

    async def deliver(self, message: reporter_mod.Report) -> pb.ReportAck:
        assert isinstance(message, pb.NodeReport)
        self.seen.append(message.seq)
        if self.refuse > 0:
            self.refuse -= 1
            raise reporter_mod.Undeliverable("no leader is known yet")
        incoming = wire.report_from_pb(message)
        if self.ledger.take(node=incoming.node, incarnation=incoming.incarnation,
                            seq=message.seq):
            self.acted.extend(incoming.report.requests)
        if self.lose_acks > 0:
            self.lose_acks -= 1
            raise reporter_mod.Undeliverable("deadline exceeded")
        self.acked.set()
        return pb.ReportAck(seq=message.seq, leader="leader", compact=True)


def make_reporter(leader: FlakyLeader, hub: hub_mod.Hub) -> reporter_mod.Reporter:
    never = asyncio.Event()
    return reporter_mod.Reporter(
        node="node-1", incarnation=7, deliver=leader.deliver, hub=hub, name_of=lambda key: "",
        backoff=peers.BackoffPolicy(base=0.001, cap=0.01), rng=random.Random(1),
        leader_may_have_changed=never.wait,
    )


def event(service: int, at: int) -> events.ScaleUpEvent:
    return events.ScaleUpEvent(service_ip=service, source_ip=99, timestamp_ns=at)


@pytest.mark.parametrize(("refuse", "lose_acks"), [(0, 0), (3, 0), (0, 2), (2, 2)])
async def test_a_burst_reaches_the_leader_as_one_request_acted_on_once(
    refuse: int, lose_acks: int,
) -> None:
    leader = FlakyLeader(refuse=refuse, lose_acks=lose_acks)
    hub = hub_mod.Hub()
    source = events.EventHub()
    reporter = make_reporter(leader, hub)
    subscription = source.subscribe()
    with hub.reader("local") as watcher:
        # Published before the loops start: the read task takes all ten (a queue that holds
        # items never suspends) before the report task sends anything.
        for at in range(1, 11):
            source.publish(event(0x0A60000A, at))
        tasks = [asyncio.create_task(reporter.read(subscription), name="test.read"),
                 asyncio.create_task(reporter.run(), name="test.report")]
        try:
            async with asyncio.timeout(BOUND):
                await leader.acked.wait()
            first, skipped = await watcher.next()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert reporter.events_read == 10 and reporter.queue.idle
    assert len(leader.acted) == 1, leader.acted  # deduplicated, and taken once despite retries
    assert leader.acted[0].service_ip == 0x0A60000A
    assert leader.acted[0].monotonic_ns == 1  # the first event of the burst
    assert set(leader.seen) == {1}  # every attempt resent the same report
    assert len(leader.seen) == 1 + refuse + lose_acks
    assert reporter.failures == 0 and reporter.reports_acked == 1
    assert (first.request.monotonic_ns, first.node, first.via, skipped) == (1, "node-1", "local", 0)


async def test_a_watcher_that_falls_behind_loses_the_oldest_and_is_told_how_many() -> None:
    hub = hub_mod.Hub()
    with hub.reader("") as watcher:
        for at in range(hub_mod.READER_QUEUE + 5):
            hub.publish(hub_mod.Seen(reports.Request(1, 2, at, 0), node="n", via="local",
                                     name=""))
        first, skipped = await watcher.next()
        second, skipped_again = await watcher.next()
    assert (first.request.monotonic_ns, skipped) == (5, 5)
    assert (second.request.monotonic_ns, skipped_again) == (6, 0)


class OlderLeader:
    """A leader before 0.2: it parses every payload as the layout it knows (LegacyNodeReport),
    takes it by (node, incarnation, seq) and acknowledges without `compact`."""

    def __init__(self) -> None:
        self.ledger = reports.Ledger()
        self.payloads: list[bytes] = []
        self.acted: list[tuple[int, str]] = []  # (service, source) of each request acted on
        self.summaries: list[int] = []  # facts in each summary it read
        self.three_summaries = asyncio.Event()

    async def deliver(self, message: reporter_mod.Report) -> pb.ReportAck:
        payload = message.SerializeToString()
        self.payloads.append(payload)
        old = compat_pb2.LegacyNodeReport.FromString(payload)  # what its own code parses
        if self.ledger.take(node=old.node, incarnation=old.incarnation, seq=old.seq):
            self.acted.extend((snapshots.parse_ip(r.service_ip), r.source_ip)
                              for r in old.scale_requests)
            if old.has_summary:
                self.summaries.append(len(old.traffic))
        if len(self.summaries) >= 3:
            self.three_summaries.set()
        return pb.ReportAck(seq=old.seq, leader="old-leader")


async def test_a_newer_node_reports_to_an_older_leader_in_its_layout_and_loses_nothing() -> None:
    """The first report reaches the older leader in the compact layout, which it cannot read:
    its acknowledgement lacks `compact`, and the same request goes again in the legacy layout
    under a new seq, acted on once; from then on every summary is whole, as it expects. (Had
    the compact report carried a summary, the older leader would have read it as one without
    facts, which blocks scale-down: the safe side.)"""
    leader = OlderLeader()
    reporter = make_reporter(leader, hub_mod.Hub())  # type: ignore[arg-type]
    reporter.note(event(0x0A60000A, 1))
    tasks = [asyncio.create_task(reporter.run(), name="test.report"),
             asyncio.create_task(reporter.summarise(
                 counters=dict, listed=lambda: [0x0A60000A, 0x0A60000B], blind=str,
                 interval=0.01), name="test.summarise")]
    try:
        async with asyncio.timeout(BOUND):
            await leader.three_summaries.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert leader.acted == [(0x0A60000A, "0.0.0.99")]
    assert reporter.legacy
    assert pb.NodeReport.FromString(leader.payloads[0]).compact  # the first went compact
    # Every legacy summary carried both listed services, whole.
    assert leader.summaries[:3] == [2, 2, 2]
    assert all(b"\x0a\x60\x00\x0a" not in p for p in leader.payloads[1:])  # no fixed32 left
