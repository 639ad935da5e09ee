"""Scale-up requests between real agents: events a node's data plane raises (handed in through
the agent's in-memory event source, the plug point the XDP reader fills on a real node) reach
the leader over the real Gossip/Report call, once, and its source; WatchScaleRequests streams
them (grpc and the grpcurl binary); Report refuses what breaks its contract and changes nothing.

Agents run in-process on loopback (tests/integration/test_grpc_api.py's helpers), with
DATAPLANE=memory: the kernel side is tested in tests/e2e/test_netns_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gossip_agent import agent as agent_mod
from gossip_agent.core import reports, snapshots
from gossip_agent.dataplane import events
from gossip_agent.leases import bpffs
from gossip_agent.scaling import inbox
from gossip_agent.sources import base as source_base
from gossip_agent.system import bpfsys
from gossip_agent.v1 import compat_pb2
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from tests.conftest import require
from tests.integration.test_grpc_api import (
    CONVERGE_DEADLINE,
    ELECTION_DEADLINE,
    GRPCURL,
    RPC_DEADLINE,
    address,
    expect_code,
    grpcurl,
    poll,
    running_agents,
    set_service,
    wait_for_leader,
)

pytestmark = pytest.mark.integration

SERVICE = "10.96.0.10"
CLIENT = "10.244.1.5"


def event(service: str = SERVICE, client: str = CLIENT, at: int = 1) -> events.ScaleUpEvent:
    return events.ScaleUpEvent(service_ip=snapshots.parse_ip(service),
                               source_ip=snapshots.parse_ip(client), timestamp_ns=at)


def emit(agent: agent_mod.Agent, *items: events.ScaleUpEvent) -> None:
    for item in items:
        agent.scale_events.publish(item)


def scale_ups(agent: agent_mod.Agent) -> list[source_base.ScaleUp]:
    recorded = getattr(agent.source, "scale_ups", None)
    assert recorded is not None, f"source {agent.source.kind} records no scale-ups"
    return list(recorded)


async def report_raw(target: str, payload: bytes) -> pb.ReportAck:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/gossip_agent.v1.Gossip/Report", request_serializer=None,
                                   response_deserializer=pb.ReportAck.FromString)
        ack: pb.ReportAck = await call(payload, timeout=RPC_DEADLINE)
        return ack


def node_report(*services: str, node: str = "node-x", incarnation: int = 1,
                seq: int = 1) -> pb.NodeReport:
    """A report as agents since 0.2 send it (fixed32 addresses)."""
    return pb.NodeReport(node=node, incarnation=incarnation, seq=seq, compact=True, scale_ups=[
        pb.ScaleUp(service=snapshots.parse_ip(s), source=snapshots.parse_ip(CLIENT),
                   monotonic_ns=5, events=1)
        for s in services])


def legacy_report(*services: str, node: str = "node-x", incarnation: int = 1,
                  seq: int = 1) -> compat_pb2.LegacyNodeReport:
    """A report as agents before 0.2 send it (dotted strings): the leader still reads it."""
    return compat_pb2.LegacyNodeReport(
        node=node, incarnation=incarnation, seq=seq, scale_requests=[
            pb.ScaleRequest(service_ip=s, source_ip=CLIENT, monotonic_ns=5, events=1)
            for s in services])


class Watch:
    """A WatchScaleRequests stream read in the background into a list (the e2e tests use it)."""

    def __init__(self, target: str, scope: str = "") -> None:
        self.received: list[pb.ScaleRequest] = []
        self._channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.StateStub(self._channel)  # type: ignore[no-untyped-call]
        self._call = stub.WatchScaleRequests(pb.WatchScaleRequestsRequest(scope=scope))
        self._task = asyncio.create_task(self._read(), name="test.watch-scale")

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for message in self._call:
                self.received.append(message)

    async def registered(self) -> None:
        """The agent sends the headers once the reader is registered (see the .proto)."""
        async with asyncio.timeout(RPC_DEADLINE):
            await self._call.initial_metadata()

    def nodes(self, service: str) -> set[str]:
        return {r.node for r in self.received if r.service_ip == service}

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


async def watching(agent: agent_mod.Agent, scope: str = "") -> Watch:
    watch = Watch(address(agent), scope)
    await watch.registered()
    assert agent.scale_ups.hub.readers > 0
    return watch


@contextlib.asynccontextmanager
async def three_agents(
    tmp_path: Path, *, reports: inbox.Delegate | None = None,
) -> AsyncIterator[tuple[agent_mod.Agent, list[agent_mod.Agent]]]:
    """Three agents, their leader known, every one holding SERVICE (shop/cart) at 0."""
    async with running_agents(3, lease_dir=tmp_path, reports=reports) as agents:
        leader = await wait_for_leader(agents)
        await set_service(address(leader), SERVICE, 0, "shop/cart")
        await poll("every agent holding shop/cart", lambda: _all_hold(agents),
                   timeout=CONVERGE_DEADLINE)
        yield leader, [a for a in agents if a is not leader]


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[tuple[agent_mod.Agent, list[agent_mod.Agent]]]:
    async with three_agents(tmp_path) as agents:
        yield agents


async def _all_hold(agents: list[agent_mod.Agent]) -> bool:
    return all(a.engine.table.get(snapshots.parse_ip(SERVICE)) == 0 for a in agents)


async def test_a_burst_on_a_follower_reaches_the_leaders_source_once_with_its_origin(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, followers = three
    follower = followers[0]
    emit(follower, *(event(at=i) for i in range(1, 21)))

    async def delivered() -> bool:
        return follower.scale_ups.reporter.events_read == 20 and (
            follower.scale_ups.reporter.queue.idle)

    await poll("the follower's 20 events read and reported", delivered, timeout=CONVERGE_DEADLINE)
    taken = scale_ups(leader)
    assert len(taken) == 1, taken  # deduplicated per service
    assert taken[0] == source_base.ScaleUp(
        service_ip=snapshots.parse_ip(SERVICE), name="shop/cart", node=follower.cfg.node.name,
        source_ip=snapshots.parse_ip(CLIENT), events=taken[0].events)
    assert 1 <= taken[0].events <= 20
    assert leader.scale_ups.inbox.counts.per_service[snapshots.parse_ip(SERVICE)] == 1
    for other in followers:
        assert scale_ups(other) == [], "a follower acted on a scale-up request"


async def test_requests_for_two_services_from_two_followers_each_reach_the_leader(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, followers = three
    emit(followers[0], event("10.96.0.10"), event("10.96.0.11"))
    emit(followers[1], event("10.96.0.10"))

    async def all_taken() -> bool:
        return len(scale_ups(leader)) == 3

    await poll("three requests at the leader", all_taken, timeout=CONVERGE_DEADLINE)
    assert sorted((snapshots.format_ip(r.service_ip), r.node) for r in scale_ups(leader)) == sorted(
        [("10.96.0.10", followers[0].cfg.node.name), ("10.96.0.11", followers[0].cfg.node.name),
         ("10.96.0.10", followers[1].cfg.node.name)])


async def test_the_leaders_own_events_reach_its_source_without_a_network_call(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, _ = three
    emit(leader, event())

    async def taken() -> bool:
        return len(scale_ups(leader)) == 1

    await poll("the leader's own request at its source", taken, timeout=CONVERGE_DEADLINE)
    assert scale_ups(leader)[0].node == leader.cfg.node.name


async def test_watch_streams_local_requests_on_the_follower_and_reported_ones_on_the_leader(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, followers = three
    follower = followers[0]
    on_follower = await watching(follower)
    on_leader = await watching(leader, scope="reported")
    on_leader_local = await watching(leader, scope="local")
    try:
        emit(follower, event(at=42))

        async def both() -> bool:
            return bool(on_follower.received) and bool(on_leader.received)

        await poll("the request on both streams", both, timeout=CONVERGE_DEADLINE)
        local, reported = on_follower.received[0], on_leader.received[0]
        assert (local.service_ip, local.source_ip, local.node, local.via, local.name,
                local.monotonic_ns) == (SERVICE, CLIENT, follower.cfg.node.name, "local",
                                        "shop/cart", 42)
        assert local.unix_ms > 0
        assert (reported.service_ip, reported.node, reported.via, reported.monotonic_ns) == (
            SERVICE, follower.cfg.node.name, "report", 42)
        assert on_leader_local.received == []  # the leader's own data plane raised nothing
    finally:
        for watch in (on_follower, on_leader, on_leader_local):
            await watch.close()


async def test_watch_with_an_unknown_scope_is_invalid_argument(tmp_path: Path) -> None:
    async with running_agents(1, lease_dir=tmp_path) as (agent,):
        async with grpc.aio.insecure_channel(address(agent)) as channel:
            stub = pb_grpc.StateStub(channel)  # type: ignore[no-untyped-call]
            call = stub.WatchScaleRequests(pb.WatchScaleRequestsRequest(scope="everything"))
            error = await expect_code(call.read(), grpc.StatusCode.INVALID_ARGUMENT)
            assert "everything" in (error.details() or "")


async def test_a_retried_report_is_acknowledged_as_duplicate_and_acted_on_once(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, _ = three
    payload = node_report(SERVICE, "10.96.0.11").SerializeToString()
    first = await report_raw(address(leader), payload)
    again = await report_raw(address(leader), payload)
    assert (first.seq, first.duplicate, first.leader) == (1, False, leader.cfg.node.name)
    assert first.term == leader.leadership.term
    assert (again.seq, again.duplicate) == (1, True)
    assert len(scale_ups(leader)) == 2
    restarted = await report_raw(address(leader), node_report(SERVICE, incarnation=2).
                                 SerializeToString())
    assert restarted.duplicate is False  # a restarted reporter counts from 1 again
    assert len(scale_ups(leader)) == 3
    assert leader.scale_ups.inbox.counts.duplicates == 1


async def test_a_followers_reports_ride_one_stream_to_the_leader(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, followers = three
    follower = followers[0]
    for i, service in enumerate(("10.96.0.10", "10.96.0.11", "10.96.0.12")):
        emit(follower, event(service, at=i + 1))

        async def taken(count: int = i + 1) -> bool:
            return len(scale_ups(leader)) == count

        await poll(f"request {i + 1} at the leader", taken, timeout=CONVERGE_DEADLINE)
    assert follower.scale_ups.route.streams_opened == 1
    assert follower.scale_ups.reporter.reports_acked >= 3


async def test_reports_on_one_stream_are_acknowledged_in_order_and_a_bad_one_ends_it(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, _ = three
    async with grpc.aio.insecure_channel(address(leader)) as channel:
        call = channel.stream_stream("/gossip_agent.v1.Gossip/ReportStream",
                                     request_serializer=None,
                                     response_deserializer=pb.ReportAck.FromString)()
        acks = []
        for payload in (node_report(SERVICE, seq=1).SerializeToString(),
                        node_report(SERVICE, seq=1).SerializeToString(),  # a retry
                        legacy_report("10.96.0.11", seq=2).SerializeToString()):
            await call.write(payload)
            acks.append(await call.read())
        assert [(a.seq, a.duplicate, a.compact) for a in acks] == [
            (1, False, True), (1, True, True), (2, False, True)]
        await call.write(node_report(SERVICE, seq=0).SerializeToString())
        error = await expect_code(call.read(), grpc.StatusCode.INVALID_ARGUMENT)
        assert "seq" in (error.details() or "")
    assert len(scale_ups(leader)) == 2


async def test_a_report_in_the_layout_before_0_2_is_read_and_acknowledged_as_compact(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    """A rolling update from 0.1: an older node's dotted-string report reaches a newer leader,
    which acts on it and says (compact) that the node may use the new layout."""
    leader, _ = three
    ack = await report_raw(address(leader), legacy_report(SERVICE, node="old-node")
                           .SerializeToString())
    assert (ack.seq, ack.duplicate, ack.compact, ack.need_full) == (1, False, True, False)
    assert [(r.node, r.service_ip, r.source_ip) for r in scale_ups(leader)] == [
        ("old-node", snapshots.parse_ip(SERVICE), snapshots.parse_ip(CLIENT))]


async def test_a_follower_refuses_reports_with_unavailable_and_acts_on_nothing(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    _, followers = three
    error = await expect_code(
        report_raw(address(followers[0]), node_report(SERVICE).SerializeToString()),
        grpc.StatusCode.UNAVAILABLE)
    assert "does not lead" in (error.details() or "")
    assert scale_ups(followers[0]) == []


TOO_MANY = [f"10.96.{i // 256}.{i % 256}" for i in range(reports.MAX_REPORT_REQUESTS + 1)]


@pytest.mark.parametrize(("payload", "says"), [
    (b"\xff\xff\xff", "parse"),
    (node_report(SERVICE, node="").SerializeToString(), "node name"),
    (node_report(SERVICE, seq=0).SerializeToString(), "seq"),
    (node_report(SERVICE, SERVICE).SerializeToString(), "twice"),
    (node_report(*TOO_MANY).SerializeToString(), "at most 256"),
    (legacy_report(SERVICE, node="").SerializeToString(), "node name"),
    (legacy_report("10.96.0.300").SerializeToString(), "not an IPv4"),
    (legacy_report(SERVICE, SERVICE).SerializeToString(), "twice"),
    (legacy_report(*TOO_MANY).SerializeToString(), "at most 256"),
], ids=["garbage", "no-node", "seq-0", "service-twice", "too-many", "legacy-no-node",
        "legacy-bad-ip", "legacy-service-twice", "legacy-too-many"])
async def test_a_report_breaking_its_contract_is_invalid_argument_and_changes_nothing(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]], payload: bytes, says: str,
) -> None:
    leader, _ = three
    error = await expect_code(report_raw(address(leader), payload),
                              grpc.StatusCode.INVALID_ARGUMENT)
    assert says in (error.details() or ""), error.details()
    assert scale_ups(leader) == []
    assert not leader.scale_ups.inbox.ledger.knows("node-x")  # the agents' own reports go on
    # The ledger did not take its seq either: the same (node, seq) done right is taken.
    ok = await report_raw(address(leader), node_report("10.96.0.12").SerializeToString())
    assert ok.duplicate is False


async def test_requests_raised_while_no_leader_exists_reach_the_first_leader_once(
    tmp_path: Path,
) -> None:
    # The test holds the lease lock, so nobody can lead until it lets go.
    lock = bpfsys.lock_directory(os.path.join(tmp_path, bpffs.LOCK_DIR))
    assert lock is not None
    try:
        async with running_agents(2, lease_dir=tmp_path) as agents:
            emit(agents[0], event())

            async def retrying() -> bool:
                return agents[0].scale_ups.reporter.failures >= 2

            await poll("the reporter retrying with no leader", retrying, timeout=ELECTION_DEADLINE)
            assert not agents[0].scale_ups.reporter.queue.idle
            os.close(lock)
            lock = None
            leader = await wait_for_leader(agents)

            async def taken() -> bool:
                return agents[0].scale_ups.reporter.queue.idle and bool(scale_ups(leader))

            await poll("the request at the first leader", taken, timeout=CONVERGE_DEADLINE)
            assert [(r.node, r.service_ip) for r in scale_ups(leader)] == [
                (agents[0].cfg.node.name, snapshots.parse_ip(SERVICE))]
            follower = next(a for a in agents if a is not leader)
            assert scale_ups(follower) == []
    finally:
        if lock is not None:
            os.close(lock)


@pytest.mark.usefixtures("_grpcurl_installed")
async def test_grpcurl_describes_and_streams_watch_scale_requests(
    three: tuple[agent_mod.Agent, list[agent_mod.Agent]],
) -> None:
    leader, followers = three
    code, out, err = await grpcurl("-plaintext", address(leader), "describe",
                                   "gossip_agent.v1.State")
    assert code == 0, err
    assert ("rpc WatchScaleRequests ( .gossip_agent.v1.WatchScaleRequestsRequest ) returns "
            "( stream .gossip_agent.v1.ScaleRequest )") in out, out
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", "-d", '{"scope":"reported"}', address(leader),
        "gossip_agent.v1.State/WatchScaleRequests",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await poll("grpcurl's stream open at the leader",
                   lambda: _has_reader(leader), timeout=RPC_DEADLINE * 3)
        emit(followers[0], event())
        assert process.stdout is not None
        text = ""
        async with asyncio.timeout(10):
            while not text.rstrip().endswith("}"):
                text += (await process.stdout.readline()).decode()
        message = json.loads(text)  # grpcurl 1.8 prints the proto field names
        assert message["service_ip"] == SERVICE
        assert message["node"] == followers[0].cfg.node.name
        assert message["via"] == "report"
    finally:
        process.kill()
        await process.wait()


async def _has_reader(agent: agent_mod.Agent) -> bool:
    return agent.scale_ups.hub.readers > 0


@pytest.fixture
def _grpcurl_installed() -> None:
    require(os.access(GRPCURL, os.X_OK), f"grpcurl (looked on PATH and at {GRPCURL})")
