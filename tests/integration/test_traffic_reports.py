"""Traffic summaries over the real Gossip/Report call: a follower's counters reach the leader's
scaler as facts (deltas and idle ages on the follower's own clock); a summary breaking the
contract is INVALID_ARGUMENT and the leader records nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from gossip_agent import agent as agent_mod
from gossip_agent.core import snapshots, traffic
from gossip_agent.v1 import gossip_pb2 as pb
from tests.integration.test_grpc_api import CONVERGE_DEADLINE, address, expect_code, poll
from tests.integration.test_scale_requests import SERVICE, report_raw, three  # noqa: F401

pytestmark = pytest.mark.integration

KEY = snapshots.parse_ip(SERVICE)


class Summaries:
    """What the leader's inbox hands to the scaler (inbox.on_summary), in order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, tuple[traffic.Fact, ...]]] = []
        self.blind: list[tuple[str, str]] = []  # (node, reason) of every blind summary

    def __call__(self, node: str, facts: tuple[traffic.Fact, ...], blind: str) -> None:
        if blind:
            self.blind.append((node, blind))
            assert facts == (), "a blind summary reached the scaler with facts"
            return
        self.received.append((node, facts))

    def of(self, node: str) -> list[tuple[traffic.Fact, ...]]:
        return [facts for sender, facts in self.received if sender == node]


def sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


@contextlib.asynccontextmanager
async def summarising(agent: agent_mod.Agent, counts: dict[int, traffic.Counts],
                      clock: list[int]) -> AsyncIterator[None]:
    """The agent's scaler.traffic task, over counters and a clock the test controls."""
    task = asyncio.create_task(agent.scale_ups.reporter.summarise(
        counters=lambda: counts, listed=lambda: agent.engine.table.keys(), blind=str,
        interval=0.05, clock=lambda: clock[0]), name="scaler.traffic")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_followers_counters_reach_the_leader_as_facts_on_its_own_clock(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],  # noqa: F811
) -> None:
    leader, followers = three
    summaries = Summaries()
    leader.scale_ups.inbox.on_summary = summaries
    follower = followers[0]
    counts = {KEY: traffic.Counts(passed=0, dropped=4)}
    clock = [10**12]  # the follower's monotonic ns: unrelated to the leader's
    async with summarising(follower, counts, clock):
        await poll("a first summary", sync(lambda: bool(summaries.of(follower.engine.node))),
                   timeout=CONVERGE_DEADLINE)
        counts[KEY] = traffic.Counts(passed=0, dropped=9)  # 5 more packets dropped
        clock[0] += 7 * 10**9
        await poll("a summary with the 5 new drops", sync(lambda: any(
            f == (traffic.Fact(KEY, 0, 5, 0),) for f in summaries.of(follower.engine.node))),
            timeout=CONVERGE_DEADLINE)
        clock[0] += 3 * 10**9  # quiet for 3 s on the follower's clock
        await poll("a summary 3 s idle", sync(lambda: any(
            f == (traffic.Fact(KEY, 0, 0, 3 * 10**9),)
            for f in summaries.of(follower.engine.node))),
            timeout=CONVERGE_DEADLINE)


def report_with_facts(*facts: pb.TrafficFact, seq: int = 1, blind: str = "") -> bytes:
    return pb.NodeReport(node="node-x", incarnation=1, seq=seq, traffic=list(facts),
                         has_summary=True, blind=blind).SerializeToString()


@pytest.mark.parametrize(("payload", "says"), [
    (report_with_facts(pb.TrafficFact(service_ip="10.96.0.300")), "10.96.0.300"),
    (report_with_facts(pb.TrafficFact(service_ip=SERVICE), pb.TrafficFact(service_ip=SERVICE)),
     "two traffic facts"),
    (report_with_facts(*(pb.TrafficFact(service_ip=f"10.96.{i // 256}.{i % 256}")
                         for i in range(traffic.MAX_FACTS + 1))), "at most 1024"),
    (report_with_facts(pb.TrafficFact(service_ip=SERVICE), blind="no counting program"),
     "blind but carries traffic facts"),
    (report_with_facts(blind="x" * 513), "at most 512"),
], ids=["bad-ip", "service-twice", "too-many", "blind-with-facts", "blind-too-long"])
async def test_a_summary_breaking_its_contract_is_invalid_argument_and_records_nothing(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],  # noqa: F811
    payload: bytes, says: str,
) -> None:
    leader, _ = three
    summaries = Summaries()
    leader.scale_ups.inbox.on_summary = summaries
    error = await expect_code(report_raw(address(leader), payload),
                              grpc.StatusCode.INVALID_ARGUMENT)
    assert says in (error.details() or ""), error.details()
    assert summaries.received == []
    ok = await report_raw(address(leader), report_with_facts(pb.TrafficFact(
        service_ip=SERVICE, passed=3, idle_ns=5)))
    assert ok.duplicate is False
    assert summaries.received == [("node-x", (traffic.Fact(KEY, 3, 0, 5),))]
