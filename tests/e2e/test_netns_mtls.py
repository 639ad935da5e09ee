"""The network-namespace harness with mutual TLS on: agent processes in their own node
namespaces gossip over the bridge with certificates of one CA, an admin writes through the
forwarded API port, every node's pinned map holds the change, and a client without a
certificate is refused at the handshake."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gossip_agent.core import snapshots
from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from lab import certs, localcluster, netns
from tests.e2e.test_netns_cluster import (
    BPFFS_ROOT,
    CONVERGE_DEADLINE,
    START_DEADLINE,
    require_netns_cluster,
    until,
)

pytestmark = pytest.mark.e2e

PREFIX = "ga9"  # this issue's namespaces: swept and removed by this test only
SERVICE = "10.96.0.10"


@pytest.fixture
def mtls_cluster(tmp_path: Path) -> Iterator[tuple[netns.Cluster, tls.ChannelFactory]]:
    require_netns_cluster()
    netns.sweep_stale(PREFIX)
    ca = certs.authority(tmp_path / "pki")
    member = ca.issue(tmp_path / "pki", "member")  # one member certificate for every node
    admin = ca.issue(tmp_path / "pki", "gossip-agent-admin", dns=())
    cluster = netns.Cluster(3, prefix=PREFIX, bpffs_root=os.path.join(BPFFS_ROOT,
                                                                        uuid.uuid4().hex),
                            log_dir=str(tmp_path / "logs"),
                            env={**certs.tls_env(ca=ca, leaf=member), "CLUSTER_ID": "ga9"})
    try:
        with cluster:
            cluster.start()
            yield cluster, tls.ChannelFactory(tls.TlsFiles(
                cert=str(admin.cert), key=str(admin.key), ca=str(ca.cert)))
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)


async def test_netns_cluster_with_mtls_converges_into_every_pinned_map(
    mtls_cluster: tuple[netns.Cluster, tls.ChannelFactory],
) -> None:
    cluster, admin = mtls_cluster
    api = [n.api_address for n in cluster.nodes]
    leader_address, reply = await localcluster.find_leader(api, timeout=START_DEADLINE,
                                                           channels=admin)
    await localcluster.wait_all(api, what="the leader's first snapshot on every node",
                                timeout=START_DEADLINE, channels=admin,
                                check=lambda s: s.leader == reply.leader_node)
    follower = next(a for a in api if a != leader_address)
    written = await localcluster.call(follower, "SetService", pb.SetServiceRequest(
        ip=SERVICE, replicas=3, name="default/demo"), timeout=10, channels=admin)
    assert isinstance(written, pb.WriteResponse)
    key = snapshots.parse_ip(SERVICE)
    for node in cluster.nodes:
        await until(f"{SERVICE}=3 in {node.name}'s pinned map",
                    lambda node=node: (cluster.pinned_table(node) or {}).get(key) == 3,
                    timeout=CONVERGE_DEADLINE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await localcluster.call(api[0], "GetState", pb.GetStateRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
