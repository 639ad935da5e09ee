"""Terms proven against the lease record (gossip/proof.py) on real agents: a rogue member with
a valid certificate pushes snapshots and digests with term 2^62; nothing is adopted anywhere,
the refusal is logged once per sender, and the cluster keeps its term and keeps converging.
Run against the bpffs lease's record (a flock directory's record file here, the pinned map on
a real node) and against a real redis-server's leader_record."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import wire
from gossip_agent.security import cluster, tls
from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster
from lab import localredis as redisserver
from tests.integration.conftest import Pki
from tests.integration.test_grpc_api import ELECTION_DEADLINE, address, poll, running_agents
from tests.integration.test_security import converged, get_state, set_service

pytestmark = pytest.mark.integration

HUGE = 1 << 62


def forged(*, term: int, leader: str) -> pb.Snapshot:
    return wire.snapshot_to_pb(snapshots.build(
        version=versions.Version(term, 1), leader=leader, leader_address="",
        entries={snapshots.parse_ip("10.0.0.1"): 0}, names={}))


async def call_gossip(
    factory: tls.ChannelFactory, target: str, method: str, request: pb.Snapshot
    | pb.ExchangeRequest, *, cluster_id: str = "",
) -> grpc.StatusCode:
    reply_type = pb.PushAck if method == "Push" else pb.ExchangeReply
    async with factory.open(target, []) as channel:
        call = channel.unary_unary(f"/gossip_agent.v1.Gossip/{method}",
                                   request_serializer=type(request).SerializeToString,
                                   response_deserializer=reply_type.FromString)
        try:
            await call(request, timeout=3.0, metadata=((cluster.CLUSTER_KEY, cluster_id),))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def rogue_cannot_take_over(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, **backend: str
) -> None:
    caplog.set_level(logging.ERROR, logger="gossip_agent.gossip")
    async with running_agents(3, lease_dir=tmp_path, per_agent=pki.agent_env(3),
                              **backend) as agents:
        addresses = [address(a) for a in agents]
        admin = pki.admin
        _, leader = await localcluster.find_leader(addresses, ELECTION_DEADLINE, channels=admin)
        await set_service(admin, addresses[0], "10.0.0.1", 2)
        await converged(addresses, admin, "10.0.0.1", 2)
        before = [await get_state(admin, a) for a in addresses]
        rogue = pki.factory(pki.ca.issue(pki.directory, "rogue"))  # a valid member certificate
        for target in addresses:
            for snapshot in (forged(term=HUGE, leader=leader.leader_node),
                             forged(term=HUGE, leader="rogue"),
                             forged(term=leader.term, leader="rogue")):
                assert await call_gossip(rogue, target, "Push", snapshot) == \
                    grpc.StatusCode.FAILED_PRECONDITION
                assert await call_gossip(rogue, target, "Exchange", pb.ExchangeRequest(
                    digest=pb.Digest(node="rogue"), snapshot=snapshot)) == \
                    grpc.StatusCode.FAILED_PRECONDITION
            # The same from "another cluster": refused before any proof is attempted.
            assert await call_gossip(rogue, target, "Push", forged(
                term=HUGE, leader="rogue"), cluster_id="other") == \
                grpc.StatusCode.FAILED_PRECONDITION
            # A bare claim of the huge term in a digest: answered, never believed.
            assert await call_gossip(rogue, target, "Exchange", pb.ExchangeRequest(
                digest=pb.Digest(node="rogue", max_term_seen=HUGE))) == grpc.StatusCode.OK

        async def claim_checked() -> bool:
            return all(a.engine.proof is not None and a.engine.proof.highest >= leader.term
                       for a in agents)

        await poll("the digest's claim checked against the record", claim_checked,
                   timeout=5.0)
        for agent, old in zip(agents, before, strict=True):
            state = await get_state(admin, address(agent))
            assert state.version == old.version and state.content_hash == old.content_hash
            assert agent.engine.max_term_seen < HUGE
            assert agent.engine.stats.rejected["unproven-term"] == 6
            assert agent.engine.stats.rejected["cluster"] == 1
        refusals = [r for r in caplog.records if "refused a snapshot from" in r.getMessage()]
        assert len(refusals) == 3, [r.getMessage() for r in refusals]  # once per agent
        # The cluster still converges at the leader's own term.
        reply = await set_service(admin, addresses[1], "10.0.0.2", 1)
        assert reply.version.term == leader.term
        await converged(addresses, admin, "10.0.0.2", 1)


async def test_rogue_member_pushing_term_2_62_is_refused_everywhere_bpffs_record(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await rogue_cannot_take_over(pki, tmp_path, caplog)


async def test_rogue_member_pushing_term_2_62_is_refused_everywhere_redis_record(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    redis_server: redisserver.RedisServer,
) -> None:
    await rogue_cannot_take_over(pki, tmp_path, caplog, COORDINATION_BACKEND="redis",
                                 REDIS_URL=redis_server.url, REDIS_KEY_PREFIX="proof:")
