"""End to end: k8s/components/xdp grants what the agent needs to attach its XDP program, and the
base's capabilities are enough for maps only (and not for the program).

The DaemonSet is rendered with the real kubectl (an overlay plus the component, as a user adds
it); each agent process then runs in a network namespace of the harness under `setpriv`, with its
capability bounding set cut down to exactly the list the rendered container adds (what a
container with `drop: [ALL]` and that `add` list gets), and with the rendered XDP_INTERFACES.
A capability this machine itself does not grant (its own bounding set lacks it: SYS_RESOURCE in
this sandbox, which kernels from 5.11 do not need for BPF maps) is left out and printed.

Checked:
- with the component's capabilities, every node attaches the program on its pod veth, drops
  packets to a service at 0, counts them, and its scale-up requests reach the leader; a
  restarted agent replaces its predecessor's program atomically and keeps dropping;
- with the base's capabilities, an agent asked to attach the program cannot load it (so the
  cut-down set is real and the component's additions are needed), while maps only work.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import grpc.aio
import pytest

from lab import localcluster, netns
from tests.e2e import test_netns_cluster as nc
from tests.unit import test_manifests as manifests

pytestmark = pytest.mark.e2e

PREFIX = "gaxc"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-netns-gaxc"
# Capability numbers (linux/capability.h) of the names Kubernetes manifests use.
CAPABILITIES = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


def granted(agent: dict[str, Any]) -> list[str]:
    capabilities = agent["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    return list(capabilities["add"])


def machine_grants(name: str) -> bool:
    with open("/proc/self/status", encoding="ascii") as status:
        (line,) = [x for x in status if x.startswith("CapBnd:")]
    return bool(int(line.split()[1], 16) >> CAPABILITIES[name] & 1)


def setpriv(capabilities: list[str]) -> list[str]:
    """The wrapper that leaves an agent exactly `capabilities` (as far as this machine has them):
    a root process's capabilities after exec are its bounding set."""
    kept = [c for c in capabilities if machine_grants(c)]
    lacking = sorted(set(capabilities) - set(kept))
    print(f"capabilities {capabilities}; this machine lacks {lacking}")
    return ["setpriv", "--bounding-set=-all," + ",".join(f"+{c.lower()}" for c in kept),
            "--inh-caps=-all", "--"]


@pytest.fixture
def clusters(tmp_path: pathlib.Path) -> Iterator[list[netns.Cluster]]:
    nc.require_netns_cluster()
    netns.sweep_stale(PREFIX)
    built: list[netns.Cluster] = []
    try:
        yield built
    finally:
        for cluster in built:
            for node in cluster.nodes:
                print(f"--- {node.name} ({node.netns}) log tail:")
                print(nc._tail(node.log_path))
            cluster.close()
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)


def build(clusters: list[netns.Cluster], tmp_path: pathlib.Path, nodes: int, *,
          wrapper: list[str], xdp_interfaces: str) -> netns.Cluster:
    cluster = netns.Cluster(
        nodes, prefix=PREFIX, bpffs_root=os.path.join(BPFFS_ROOT, uuid.uuid4().hex),
        log_dir=str(tmp_path / f"logs{len(clusters)}"), services=(nc.ZERO, nc.CONTROL),
        env={"XDP_INTERFACES": xdp_interfaces}, wrapper=wrapper)
    clusters.append(cluster)
    cluster.__enter__()
    return cluster


async def test_agents_with_exactly_the_xdp_components_capabilities_attach_drop_and_report(
    clusters: list[netns.Cluster], tmp_path: pathlib.Path,
) -> None:
    objects = manifests.with_component("configmap", "xdp")
    agent, env = manifests.container(objects), manifests.pod_env(objects)
    assert netns.XDP_GLOB in env["XDP_INTERFACES"].split(",")  # the harness's pod veths match
    cluster = build(clusters, tmp_path, 2, wrapper=setpriv(granted(agent)),
                    xdp_interfaces=env["XDP_INTERFACES"])
    cluster.start()
    leader, leader_api = await nc.enforcing(cluster)  # the program attached on every node
    await nc.set_service(leader_api, nc.ZERO, 0)
    await nc.tables_are(cluster, {nc.key(nc.ZERO): 0}, what=f"{nc.ZERO}=0 in every node's map")
    async with nc.watching(leader_api) as watch:
        for node in cluster.nodes:
            assert nc.probe(cluster, node) == 0, f"{node.name} let a packet to a service at 0 pass"
            assert await nc.dropped(node, nc.ZERO) == nc.PROBES
        await nc.until("a scale-up request from every node at the leader",
                       lambda: watch.nodes(nc.ZERO) == {n.name for n in cluster.nodes},
                       timeout=nc.CONVERGE_DEADLINE)
    # A rolling update: the restarted agent swaps its predecessor's program for its own in
    # one step (found by id, which also takes SYS_ADMIN), with the same capabilities.
    restarted = next(n for n in cluster.nodes if n is not leader)
    assert cluster.kill_agent(restarted, signal.SIGTERM) == 0
    cluster.start_agent(restarted)
    await nc.until(f"{restarted.name}'s program replaced atomically", lambda: replaced(restarted),
                   timeout=nc.START_DEADLINE)
    assert nc.probe(cluster, restarted) == 0, "the restarted node let a packet to 0 pass"


async def replaced(node: netns.Node) -> bool:
    with contextlib.suppress(grpc.aio.AioRpcError):
        reply = await nc.get_dataplane(node)
        return any(i.name == node.veth and i.status == "replaced" for i in reply.interfaces)
    return False


async def test_the_bases_capabilities_keep_maps_but_cannot_load_the_program(
    clusters: list[netns.Cluster], tmp_path: pathlib.Path,
) -> None:
    capabilities = granted(manifests.container(manifests.rendered("configmap")))
    assert "NET_ADMIN" not in capabilities and "SYS_ADMIN" not in capabilities
    refused = build(clusters, tmp_path, 1, wrapper=setpriv(capabilities),
                    xdp_interfaces=netns.XDP_GLOB)
    refused.start()
    (node,) = refused.nodes
    await nc.until(f"{node.name}'s agent giving up on the program",
                   lambda: node.process is not None and node.process.poll() is not None,
                   timeout=nc.START_DEADLINE)
    log = nc._tail(node.log_path, lines=200)
    assert "cannot compile and load" in log and "Operation not permitted" in log, log

    maps_only = build(clusters, tmp_path, 1, wrapper=setpriv(capabilities), xdp_interfaces="")
    maps_only.start()
    address, _ = await localcluster.find_leader([maps_only.nodes[0].api_address],
                                                timeout=nc.START_DEADLINE)
    await nc.set_service(address, nc.ZERO, 3)
    await nc.tables_are(maps_only, {nc.key(nc.ZERO): 3}, what=f"{nc.ZERO}=3 in the pinned map")
