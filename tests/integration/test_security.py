"""Mutual TLS, cluster identity and admin writes on real agents (gossip_agent.security).

Agents run in-process on loopback with certificates from lab.certs (a CA,
one certificate per agent carrying the shared name `gossip-agent`, an admin certificate,
another CA, an expired certificate). Clients are real grpc channels, grpcurl and the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gossip_agent.api import probes, server
from gossip_agent.core import snapshots
from gossip_agent.security import cluster, identity, tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import certs, localcluster
from tests.conftest import require
from tests.integration.conftest import Pki
from tests.integration.test_grpc_api import (
    CONVERGE_DEADLINE,
    ELECTION_DEADLINE,
    GRPCURL,
    RPC_DEADLINE,
    address,
    fingerprint,
    lease_held_by_test,
    poll,
    running_agents,
    snapshot_bytes,
)
from tests.integration.test_scale_requests import node_report

pytestmark = pytest.mark.integration

# Client channels re-read their files at most once per tls.CHECK_INTERVAL (1 s), the server at
# every handshake; a rotation is live everywhere within about 2 s: 3x plus the usual margin.
ROTATION_DEADLINE = 10.0


async def get_state(factory: tls.ChannelFactory, target: str) -> pb.GetStateResponse:
    reply = await localcluster.call(target, "GetState", pb.GetStateRequest(), 2.0,
                                    channels=factory)
    assert isinstance(reply, pb.GetStateResponse)
    return reply


async def set_service(
    factory: tls.ChannelFactory, target: str, ip: str, replicas: int,
    metadata: tuple[tuple[str, str], ...] = (),
) -> pb.WriteResponse:
    async with factory.open(target, []) as channel:
        reply = await pb_grpc.StateStub(channel).SetService(
            pb.SetServiceRequest(ip=ip, replicas=replicas), timeout=5.0, metadata=metadata)
    assert isinstance(reply, pb.WriteResponse)
    return reply


async def converged(
    agents_addresses: list[str], factory: tls.ChannelFactory, ip: str, replicas: int
) -> None:
    await localcluster.wait_all(
        agents_addresses, what=f"{ip}={replicas} on every agent", timeout=CONVERGE_DEADLINE,
        channels=factory,
        check=lambda s: any(e.ip == ip and e.replicas == replicas for e in s.entries))


async def refused_at_handshake(factory: tls.ChannelFactory, target: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_state(factory, target)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return str(caught.value.details())


async def test_mtls_cluster_converges_and_refuses_clients_without_a_valid_certificate(
    pki: Pki, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = pki.agent_env(4)
    health_port = localcluster.free_ports(1)[0]
    env[1]["HEALTH_PORT"] = str(health_port)
    # node-3 is a stranger among the peers: its certificate comes from another CA.
    stranger = pki.other.issue(pki.directory / "other", "node-3")
    env[3] = {**certs.tls_env(ca=pki.other, leaf=stranger),
              "BPF_LEASE_DIR": str(tmp_path / "stranger")}
    (tmp_path / "stranger").mkdir()
    caplog.set_level(logging.WARNING, logger="gossip_agent.tls")
    async with running_agents(4, lease_dir=tmp_path, per_agent=env) as all_agents:
        agents = all_agents[:3]
        addresses = [address(a) for a in agents]
        admin = pki.admin
        await localcluster.find_leader(addresses, ELECTION_DEADLINE, channels=admin)
        # Kubernetes' gRPC probes speak plaintext: HEALTH_PORT serves them grpc.health.v1 only.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probes.LIVE), timeout=2.0)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            tls_on = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=server.TLS_HEALTH), timeout=2.0)
            assert tls_on.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await pb_grpc.StateStub(channel).GetState(pb.GetStateRequest(), timeout=2.0)
            assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await set_service(admin, addresses[0], "10.0.0.1", 2)
        await converged(addresses, admin, "10.0.0.1", 2)
        target = addresses[1]
        # No certificate at all (plaintext), a certificate of another CA, an expired one.
        await refused_at_handshake(tls.ChannelFactory(None), target)
        await refused_at_handshake(pki.factory(pki.other.issue(pki.directory / "o", "stranger"),
                                               ca=pki.ca.cert), target)
        await refused_at_handshake(
            pki.factory(pki.ca.issue(pki.directory, "expired", expired=True)), target)
        # grpc's TLS logs each refused handshake (C core, on stderr).
        logged = capfd.readouterr().err
        assert "Handshake failed" in logged and "CERTIFICATE_VERIFY_FAILED" in logged, logged
        # The members keep converging.
        await set_service(admin, addresses[2], "10.0.0.2", 3)
        await converged(addresses, admin, "10.0.0.2", 3)
        reply = await localcluster.call(target, "GetLeader", pb.GetLeaderRequest(),
                                        channels=admin)
        assert isinstance(reply, pb.GetLeaderResponse) and "plaintext" not in reply.note
        # The stranger never joined: it holds nothing of the members', and the members named
        # it when their calls to it failed at the handshake.
        outsider = all_agents[3]
        assert outsider.engine.held.snapshot is None or "10.0.0.2" not in {
            snapshots.format_ip(k) for k in outsider.engine.table}
        named = [r.getMessage() for r in caplog.records
                 if f"TLS handshake with peer {address(outsider)} failed" in r.getMessage()]
        assert named, "no member logged the refused handshake naming the stranger"


async def test_set_service_without_admin_identity_is_permission_denied_and_changes_nothing(
    pki: Pki, tmp_path: Path
) -> None:
    async with running_agents(3, lease_dir=tmp_path, per_agent=pki.agent_env(3)) as agents:
        addresses = [address(a) for a in agents]
        admin = pki.admin
        leader_address, _ = await localcluster.find_leader(
            addresses, ELECTION_DEADLINE, channels=admin)
        follower = next(a for a in addresses if a != leader_address)
        before = await get_state(admin, leader_address)
        # A member's certificate can read but not write; an outsider's certificate of the
        # cluster CA cannot borrow the admin's name through the forwarding header.
        member = pki.factory(pki.ca.issue(pki.directory, "node-9"))
        reader = pki.factory(pki.ca.issue(pki.directory, "reader", dns=()))
        assert (await get_state(reader, follower)).node
        for factory, target, metadata in (
            (member, leader_address, ()), (member, follower, ()), (reader, follower, ()),
            (reader, leader_address, ((identity.FORWARDED_FOR, "gossip-agent-admin"),)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await set_service(factory, target, "10.0.0.9", 1, metadata)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not an admin" in str(caught.value.details())
        after = await get_state(admin, leader_address)
        assert after.version == before.version and list(after.entries) == list(before.entries)
        # Through a follower with the admin certificate: applied once, by the leader.
        reply = await set_service(admin, follower, "10.0.0.9", 1)
        assert reply.version.term == before.version.term
        assert reply.version.seq == before.version.seq + 1
        await converged(addresses, admin, "10.0.0.9", 1)
        history = await localcluster.call(leader_address, "GetHistory", pb.GetHistoryRequest(),
                                          channels=admin)
        assert isinstance(history, pb.GetHistoryResponse)
        assert [e.version.seq for e in history.events if e.version.seq > before.version.seq] \
            == [before.version.seq + 1]


def _replace(path: Path, data: bytes) -> None:
    """Like a Secret update: the new content appears at once under the same name."""
    staged = path.with_suffix(path.suffix + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


async def test_certificates_rotate_to_a_new_ca_under_a_running_cluster_without_restart(
    pki: Pki, tmp_path: Path
) -> None:
    """The usual rotation: trust both CAs, move every certificate to the new CA, drop the
    old CA. Each step is picked up from the files alone; the cluster keeps converging."""
    env = pki.agent_env(3)
    new_ca = certs.authority(pki.directory / "new", "new-ca")
    old_pem, new_pem = pki.ca.cert.read_bytes(), new_ca.cert.read_bytes()
    async with running_agents(3, lease_dir=tmp_path, per_agent=env) as agents:
        addresses = [address(a) for a in agents]
        old_admin = pki.admin
        await localcluster.find_leader(addresses, ELECTION_DEADLINE, channels=old_admin)
        bundle = pki.directory / "bundle.pem"
        bundle.write_bytes(old_pem + new_pem)
        new_admin_leaf = new_ca.issue(pki.directory / "new", "gossip-agent-admin", dns=())
        new_admin = pki.factory(new_admin_leaf, ca=bundle)
        for index in range(3):  # step 1 and 2 at once per agent: bundle, then new leaf
            _replace(Path(env[index]["TLS_CA"]), old_pem + new_pem)
            leaf = new_ca.issue(pki.directory / "new", f"node-{index}")
            _replace(Path(env[index]["TLS_KEY"]), leaf.key.read_bytes())
            _replace(Path(env[index]["TLS_CERT"]), leaf.cert.read_bytes())
        await set_service(new_admin, addresses[1], "10.0.1.1", 1)
        await converged(addresses, new_admin, "10.0.1.1", 1)
        for index in range(3):  # step 3: the old CA is no longer trusted
            _replace(Path(env[index]["TLS_CA"]), new_pem)
        only_new = pki.factory(new_admin_leaf, ca=new_ca.cert)

        async def old_refused() -> bool:
            try:
                await get_state(old_admin, addresses[0])
            except grpc.aio.AioRpcError:
                return True
            return False

        await poll("the old CA's admin certificate refused", old_refused,
                   timeout=ROTATION_DEADLINE)
        # Peers now present their new certificates to each other (channels were reopened).
        await set_service(only_new, addresses[2], "10.0.1.2", 2)
        await converged(addresses, only_new, "10.0.1.2", 2)
        assert all(agent.engine.stats.exchanges_ok > 0 for agent in agents)


async def test_gossip_from_another_cluster_is_refused_counted_and_never_mixed(
    tmp_path: Path
) -> None:
    ports = localcluster.free_ports(3)
    per_agent = {0: {"CLUSTER_ID": "blue"}, 1: {"CLUSTER_ID": "blue"},
                 2: {"CLUSTER_ID": "green", "BPF_LEASE_DIR": str(tmp_path / "green")}}
    (tmp_path / "green").mkdir()
    async with running_agents(3, lease_dir=tmp_path, per_agent=per_agent,
                              ports=ports) as agents:
        blue, green = [address(a) for a in agents[:2]], address(agents[2])
        plain = tls.ChannelFactory(None)
        leader_address, leader = await localcluster.find_leader(blue, ELECTION_DEADLINE)
        assert "plaintext" in leader.note  # announced when TLS is off
        async with grpc.aio.insecure_channel(blue[0]) as channel:
            tls_off = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=server.TLS_HEALTH), timeout=2.0)
        assert tls_off.status == health_pb2.HealthCheckResponse.NOT_SERVING  # and in health
        await set_service(plain, leader_address, "10.0.2.1", 4)
        await converged(blue, plain, "10.0.2.1", 4)

        async def refusals_counted() -> bool:
            return sum(a.engine.stats.rejected["cluster"] for a in agents) >= 2

        await poll("anti-entropy across the two clusters refused", refusals_counted,
                   timeout=CONVERGE_DEADLINE)
        assert "10.0.2.1" not in {e.ip for e in (await get_state(plain, green)).entries}
        assert all(a.engine.membership.address_of("node-2") is None for a in agents[:2])
        async with grpc.aio.insecure_channel(blue[0]) as channel:
            exchange = channel.unary_unary(
                "/gossip_agent.v1.Gossip/Exchange",
                request_serializer=pb.ExchangeRequest.SerializeToString,
                response_deserializer=pb.ExchangeReply.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await exchange(pb.ExchangeRequest(digest=pb.Digest(node="x")), timeout=2.0,
                               metadata=((cluster.CLUSTER_KEY, "red"),))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "red" in str(caught.value.details()) and "blue" in str(caught.value.details())


# The four Gossip methods, each with a request an agent could send and its reply type. The
# snapshot is at term 5, below the term of the agent under test (it leads above the record at
# 5 that lease_held_by_test leaves), so a member's push is answered STALE and changes nothing.
GOSSIP_CALLS: dict[str, tuple[bytes, type[Any]]] = {
    "PushStream": (snapshot_bytes(5, 1, {snapshots.parse_ip("10.0.5.1"): 1}), pb.PushAck),
    "Push": (snapshot_bytes(5, 1, {snapshots.parse_ip("10.0.5.1"): 1}), pb.PushAck),
    "Exchange": (pb.ExchangeRequest(digest=pb.Digest(node="node-9")).SerializeToString(),
                 pb.ExchangeReply),
    "Report": (node_report("10.0.5.2", node="node-9").SerializeToString(), pb.ReportAck),
}


async def call_gossip(
    factory: tls.ChannelFactory, target: str, method: str, *, cluster_id: str
) -> list[Any]:
    """One Gossip call as an agent makes it (raw bytes, the cluster id in the metadata); the
    replies, or AioRpcError. PushStream sends one snapshot on a stream and half-closes it."""
    payload, reply_type = GOSSIP_CALLS[method]
    path, metadata = f"{cluster.GOSSIP_PREFIX}{method}", ((cluster.CLUSTER_KEY, cluster_id),)
    async with factory.open(target, []) as channel:
        if method == "PushStream":
            stream = channel.stream_stream(path, request_serializer=None,
                                           response_deserializer=reply_type.FromString)
            return [reply async for reply in stream(
                iter([payload]), timeout=RPC_DEADLINE, metadata=metadata)]
        unary = channel.unary_unary(path, request_serializer=None,
                                    response_deserializer=reply_type.FromString)
        return [await unary(payload, timeout=RPC_DEADLINE, metadata=metadata)]


async def gossip_code(
    factory: tls.ChannelFactory, target: str, method: str, *, cluster_id: str
) -> grpc.StatusCode:
    try:
        await call_gossip(factory, target, method, cluster_id=cluster_id)
    except grpc.aio.AioRpcError as exc:
        assert exc.details(), f"{method}: refused without a sentence"
        return exc.code()
    return grpc.StatusCode.OK


def handled(agent: Any) -> tuple[Any, ...]:
    """What any Gossip handler moves as it runs: bytes and snapshots received (Push,
    PushStream, Exchange), reports taken from node-9 (Report; the agent's own traffic
    summaries go on meanwhile), peers learnt."""
    return (dict(agent.engine.stats.bytes_received), dict(agent.engine.stats.received),
            agent.scale_ups.inbox.ledger.knows("node-9"),
            agent.engine.membership.address_of("node-9"))


async def test_only_member_certificates_may_gossip_others_get_permission_denied_and_no_handler_runs(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14, defect 2: the admin certificate and any other certificate of the cluster CA
    without TLS_SERVER_NAME are refused on each Gossip method, with this cluster's id or
    another's, before the handler runs; they still read State. A member gossips, and a member
    from another cluster is still refused by the cluster check (the wrapped handler delegates
    to it, for the stream and the unary kind alike)."""
    caplog.set_level(logging.WARNING, logger="gossip_agent.security")
    with lease_held_by_test(tmp_path, term=5):
        pass  # leaves the record at term 5: the agent leads above it
    env = {**pki.agent_env(1)[0], "CLUSTER_ID": "ga14"}
    async with running_agents(1, lease_dir=tmp_path, per_agent={0: env}) as (agent,):
        target, admin = address(agent), pki.admin
        await localcluster.find_leader([target], ELECTION_DEADLINE, channels=admin)
        assert agent.engine.held.version.term > 5
        reader = pki.factory(pki.ca.issue(pki.directory, "reader", dns=()))
        member = pki.factory(pki.ca.issue(pki.directory, "node-9"))
        state_before, handled_before = await get_state(admin, target), handled(agent)

        for outsider in (admin, reader):
            for method in GOSSIP_CALLS:
                for cluster_id in ("ga14", "red"):
                    code = await gossip_code(outsider, target, method, cluster_id=cluster_id)
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (method, cluster_id, code)
        assert handled(agent) == handled_before, "a Gossip handler ran for a non-member"
        assert fingerprint(await get_state(admin, target)) == fingerprint(state_before)
        assert fingerprint(await get_state(reader, target)) == fingerprint(state_before)
        stats = agent.engine.stats
        assert stats.rejected["not-member"] == 2 * len(GOSSIP_CALLS) * 2
        assert stats.rejected["cluster"] == 0  # refused as non-members, whatever their id
        refusals = [r.getMessage() for r in caplog.records if "is not a member" in r.getMessage()]
        assert len(refusals) == 2, refusals  # once per caller (address and names)
        assert any("gossip-agent-admin" in r for r in refusals)

        replies = {method: await call_gossip(member, target, method, cluster_id="ga14")
                   for method in GOSSIP_CALLS}
        assert [a.result for a in replies["PushStream"]] == [pb.PushAck.STALE]
        assert [a.result for a in replies["Push"]] == [pb.PushAck.STALE]
        assert replies["Exchange"][0].digest.node == "node-0"
        assert replies["Report"][0].leader == "node-0"
        assert handled(agent) != handled_before
        for method in ("PushStream", "Push"):
            code = await gossip_code(member, target, method, cluster_id="red")
            assert code == grpc.StatusCode.FAILED_PRECONDITION, (method, code)
        assert stats.rejected["cluster"] == 2
        assert stats.rejected["not-member"] == 2 * len(GOSSIP_CALLS) * 2


async def test_the_plaintext_health_port_serves_grpc_health_only(
    pki: Pki, tmp_path: Path
) -> None:
    """HEALTH_PORT (server.build_health_only) answers Kubernetes' probes without a certificate,
    so it must offer nothing else: no reflection for grpcurl to list services with, no Gossip,
    no State, no DataPlane (UNIMPLEMENTED), while the mutual-TLS port serves them all."""
    require(os.access(GRPCURL, os.X_OK), f"grpcurl (looked on PATH and at {GRPCURL})")
    health_port = localcluster.free_ports(1)[0]
    env = {**pki.agent_env(1)[0], "HEALTH_PORT": str(health_port)}
    async with running_agents(1, lease_dir=tmp_path, per_agent={0: env}) as (agent,):
        plain = f"127.0.0.1:{health_port}"
        listed = await asyncio.to_thread(subprocess.run, [GRPCURL, "-plaintext", plain, "list"],
                                         capture_output=True, text=True, timeout=30)
        assert listed.returncode != 0 and "reflection" in listed.stderr, listed
        async with grpc.aio.insecure_channel(plain) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probes.LIVE), timeout=RPC_DEADLINE)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            others = [f"{cluster.GOSSIP_PREFIX}{method}" for method in GOSSIP_CALLS] + [
                f"/{server.STATE_SERVICE}/{method}" for method in (
                    "GetState", "GetLeader", "ListPeers", "GetHistory", "SetService",
                    "DeleteService")] + [
                f"/{server.DATAPLANE_SERVICE}/GetDataPlane",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]
            for path in others:
                call = channel.unary_unary(path, request_serializer=None,
                                           response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(b"", timeout=RPC_DEADLINE)
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
        # The same calls reach the services on the mutual-TLS port (reads with any certificate).
        reply = await get_state(pki.admin, address(agent))
        assert reply.node == "node-0"


async def test_grpcurl_and_the_cli_talk_mutual_tls_with_the_same_flags(
    pki: Pki, tmp_path: Path
) -> None:
    require(os.access(GRPCURL, os.X_OK), f"grpcurl (looked on PATH and at {GRPCURL})")
    admin_leaf = pki.ca.issue(pki.directory, "gossip-agent-admin", dns=())
    flags = ["-cacert", str(pki.ca.cert), "-cert", str(admin_leaf.cert),
             "-key", str(admin_leaf.key), "-servername", certs.SERVER_NAME]
    async with running_agents(2, lease_dir=tmp_path, per_agent=pki.agent_env(2)) as agents:
        target = address(agents[0])
        await localcluster.find_leader([address(a) for a in agents], ELECTION_DEADLINE,
                                       channels=pki.factory(admin_leaf))
        grpcurl = await asyncio.to_thread(subprocess.run, [
            GRPCURL, *flags, "-d", '{"ip": "10.0.3.1", "replicas": 5}', target,
            "gossip_agent.v1.State/SetService"], capture_output=True, text=True, timeout=30)
        assert grpcurl.returncode == 0, grpcurl.stderr
        plain = await asyncio.to_thread(subprocess.run, [
            GRPCURL, "-plaintext", target, "list"], capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0
        cli = [sys.executable, "-m", "gossip_agent"]
        state = await asyncio.to_thread(subprocess.run, [
            *cli, "state", "--target", target, "--json", *flags], capture_output=True,
            text=True, timeout=30)
        assert state.returncode == 0, state.stderr
        assert "10.0.3.1" in state.stdout
        refused = await asyncio.to_thread(subprocess.run, [
            *cli, "state", "--target", target, "--timeout", "2"], capture_output=True,
            text=True, timeout=30)
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
