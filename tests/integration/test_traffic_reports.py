"""Traffic summaries over the real Gossip/Report call: a follower's counters reach the leader's
scaler as facts (deltas and idle ages on the follower's own clock); a summary breaking the
contract is INVALID_ARGUMENT and the leader records nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from gossip_agent import agent as agent_mod
from gossip_agent.core import scaling, snapshots, traffic
from gossip_agent.sources import base as source_base
from gossip_agent.v1 import compat_pb2
from gossip_agent.v1 import gossip_pb2 as pb
from tests.integration.test_grpc_api import CONVERGE_DEADLINE, address, expect_code, poll
from tests.integration.test_scale_requests import SERVICE, report_raw, three_agents

pytestmark = pytest.mark.integration

KEY = snapshots.parse_ip(SERVICE)


class Summaries:
    """The agents' inbox delegate (scaling.inbox.Delegate, in the scaler's place): what the
    leader's inbox hands to the scaler, in order, applied to real cluster facts so that deltas
    and need_full behave as in the scaler."""

    def __init__(self) -> None:
        self.received: list[tuple[str, traffic.Summary]] = []
        self.blind: list[tuple[str, str]] = []  # (node, reason) of every blind summary
        self.facts = scaling.ClusterFacts(window_ns=10**9, took_office_ns=0)
        self.refused = 0  # deltas the facts could not apply
        self.now_ns = 0

    def apply(self, node: str, incarnation: int, summary: traffic.Summary) -> bool:
        if summary.blind:
            self.blind.append((node, summary.blind))
            assert summary.facts == (), "a blind summary reached the scaler with facts"
        else:
            self.received.append((node, summary))
        self.now_ns += 1
        applied = self.facts.apply(node=node, incarnation=incarnation, summary=summary,
                                   now_ns=self.now_ns)
        self.refused += not applied
        return applied

    def scale_up(self, request: source_base.ScaleUp) -> None:
        pass  # only the summaries matter here

    def of(self, node: str) -> list[tuple[traffic.Fact, ...]]:
        return [summary.facts for sender, summary in self.received if sender == node]

    def summaries_of(self, node: str) -> list[traffic.Summary]:
        return [summary for sender, summary in self.received if sender == node]


@pytest.fixture
def summaries() -> Summaries:
    return Summaries()


@pytest.fixture
async def three(tmp_path: Path, summaries: Summaries
                ) -> AsyncIterator[tuple[agent_mod.Agent, list[agent_mod.Agent]]]:
    """tests/integration/test_scale_requests.py's three agents, reporting to `summaries`."""
    async with three_agents(tmp_path, reports=summaries) as agents:
        yield agents


def sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


@contextlib.asynccontextmanager
async def summarising(agent: agent_mod.Agent, counts: dict[int, traffic.Counts],
                      clock: list[int]) -> AsyncIterator[None]:
    """The agent's scaler.traffic task, over counters and a clock the test controls."""
    agent.scale_ups.reporter.clock = lambda: clock[0]
    task = asyncio.create_task(agent.scale_ups.reporter.summarise(
        counters=lambda: counts, listed=lambda: agent.engine.table.keys(), blind=str,
        interval=0.05), name="scaler.traffic")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_followers_counters_reach_the_leader_as_facts_on_its_own_clock(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]], summaries: Summaries,
) -> None:
    _, followers = three
    follower = followers[0]
    node = follower.engine.node
    counts = {KEY: traffic.Counts(passed=0, dropped=4)}
    clock = [10**12]  # the follower's monotonic ns: unrelated to the leader's
    async with summarising(follower, counts, clock):
        await poll("a first summary", sync(lambda: bool(summaries.of(node))),
                   timeout=CONVERGE_DEADLINE)
        first = summaries.summaries_of(node)[0]
        assert first.full and [f.service_ip for f in first.facts] == [KEY]
        counts[KEY] = traffic.Counts(passed=0, dropped=9)  # 5 more packets dropped
        clock[0] += 7 * 10**9
        await poll("a delta with the 5 new drops", sync(lambda: any(
            not s.full and s.facts == (traffic.Fact(KEY, 0, 5, 0),)
            for s in summaries.summaries_of(node))), timeout=CONVERGE_DEADLINE)
        held = summaries.facts.summary_of(node)
        assert held is not None
        last_packet = held.last_traffic_ns[KEY]
        clock[0] += 3 * 10**9  # quiet for 3 s on the follower's clock
        seen = len(summaries.summaries_of(node))
        await poll("three more summaries", sync(
            lambda: len(summaries.summaries_of(node)) >= seen + 3), timeout=CONVERGE_DEADLINE)
        # Nothing moved: beats only (deltas without facts), and the leader still dates the
        # last packet where the delta put it.
        assert all(not s.full and s.facts == () for s in summaries.summaries_of(node)[seen:])
        assert held.last_traffic_ns[KEY] == last_packet and held.received_ns > last_packet
        assert summaries.refused == 0


async def test_a_leader_that_lost_the_generation_asks_for_a_full_summary_and_gets_one(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]], summaries: Summaries,
) -> None:
    """As after a change of leader: the facts forget the node, its next delta is refused with
    need_full, and the summary after that is full again (the facts hold the node once more)."""
    _, followers = three
    follower = followers[0]
    node = follower.engine.node
    counts = {KEY: traffic.Counts(passed=1, dropped=0)}
    async with summarising(follower, counts, [10**12]):
        await poll("a delta after the first summary", sync(
            lambda: any(not s.full for s in summaries.summaries_of(node))),
            timeout=CONVERGE_DEADLINE)
        summaries.facts.forget(node)
        fulls = sum(s.full for s in summaries.summaries_of(node))
        await poll("a full summary again", sync(
            lambda: sum(s.full for s in summaries.summaries_of(node)) > fulls),
            timeout=CONVERGE_DEADLINE)
        assert summaries.refused >= 1
        assert follower.scale_ups.reporter.full_asked >= 1
        held = summaries.facts.summary_of(node)
        assert held is not None and KEY in held.last_traffic_ns


def report_with_facts(*facts: pb.ServiceFact, seq: int = 1, blind: str = "",
                      full: bool = True, generation: int = 1) -> bytes:
    return pb.NodeReport(node="node-x", incarnation=1, seq=seq, facts=list(facts),
                         has_summary=True, blind=blind, compact=True, full=full,
                         generation=generation).SerializeToString()


def legacy_with_facts(*facts: compat_pb2.TrafficFact) -> bytes:
    return compat_pb2.LegacyNodeReport(node="node-x", incarnation=1, seq=1, traffic=list(facts),
                                       has_summary=True).SerializeToString()


@pytest.mark.parametrize(("payload", "says"), [
    (report_with_facts(pb.ServiceFact(service=KEY), pb.ServiceFact(service=KEY)),
     "two traffic facts"),
    (report_with_facts(*(pb.ServiceFact(service=i) for i in range(traffic.MAX_FACTS + 1))),
     "at most 1024"),
    (report_with_facts(pb.ServiceFact(service=KEY), blind="no counting program"),
     "blind but carries traffic facts"),
    (report_with_facts(blind="x" * 513), "at most 512"),
    (report_with_facts(blind="no counting program", full=False), "always full"),
    (report_with_facts(pb.ServiceFact(service=KEY), generation=0), "generation"),
    (legacy_with_facts(compat_pb2.TrafficFact(service_ip="10.96.0.300")), "10.96.0.300"),
    (legacy_with_facts(compat_pb2.TrafficFact(service_ip=SERVICE),
                       compat_pb2.TrafficFact(service_ip=SERVICE)), "two traffic facts"),
], ids=["service-twice", "too-many", "blind-with-facts", "blind-too-long", "blind-delta",
        "generation-0", "legacy-bad-ip", "legacy-service-twice"])
async def test_a_summary_breaking_its_contract_is_invalid_argument_and_records_nothing(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]], summaries: Summaries,
    payload: bytes, says: str,
) -> None:
    leader, _ = three
    error = await expect_code(report_raw(address(leader), payload),
                              grpc.StatusCode.INVALID_ARGUMENT)
    assert says in (error.details() or ""), error.details()
    assert summaries.received == []
    ok = await report_raw(address(leader), report_with_facts(pb.ServiceFact(
        service=KEY, passed=3, idle_ns=5)))
    assert ok.duplicate is False
    assert summaries.received == [("node-x", traffic.Summary(
        1, full=True, facts=(traffic.Fact(KEY, 3, 0, 5),)))]
