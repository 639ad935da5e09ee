"""End to end: the cluster-wide scale-to-zero loop with real packets through real XDP programs.

Three agent processes in network namespaces (lab.netns) with SOURCE=kubernetes
reach the fake Kubernetes API server, which listens on an extra host of the cluster network
(its socket made inside that namespace; the objects are read and changed in-process). The test
plays the endpoint controller: an EndpointSlice follows the Deployment's replicas, so what the
agents publish follows what the scaler did. Packets are UDP datagrams from the pods to the
service's ClusterIP, through the XDP program on each node's pod veth.

Checked:
- a burst of packets to the sleeping service through every node at once becomes exactly ONE
  /scale PATCH at the API server, and packets pass on every node once the endpoints are ready;
- traffic through one node only keeps the service up although two nodes see nothing; when it
  stops everywhere, exactly one scale-down (one PATCH to 0) follows after the idle time;
- a node whose agent is down blocks the scale-down until membership declares it dead;
- after a leader change (SIGKILL), traffic through one follower still keeps the service up: the
  new leader scales down on nothing from before its term, and exactly once when traffic stops;
- dependencies: a dependent goes down before what it needs and wakes after it, an HPA is
  suspended while its workload sleeps and comes back with the same spec, also when the leader
  changed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_agent.core import policy, services
from gossip_agent.scaling import base as workloads
from gossip_agent.v1 import gossip_pb2 as pb
from lab import fakekube, localcluster, netns
from tests.e2e import test_netns_cluster as nc
from tests.unit import test_manifests as manifests

pytestmark = pytest.mark.e2e

PREFIX = "ga8"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-netns-ga8"
ZERO, CONTROL = nc.ZERO, nc.CONTROL
IDLE = 3  # seconds: scale-to-zero/scale-down-time of the test Service
ENV = {
    "SOURCE": "kubernetes",
    "TRAFFIC_REPORT_INTERVAL": "0.3",
    "SCALE_REPORT_WINDOW": "1.5",
    "SCALE_UP_COOLDOWN": "5",
}
# Scale-down: idle time + one report interval + one window, on a loaded 2-core box: x3 and more.
SCALE_DEADLINE = 30.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[netns.Cluster, fakekube.FakeKube]]:
    yield from make_world(tmp_path, nodes=3, env=ENV)


@pytest.fixture
def base_world(tmp_path: Path) -> Iterator[tuple[netns.Cluster, fakekube.FakeKube]]:
    """Two agents with the shipped base's data-plane settings (rendered with kubectl, no
    component): pinned maps, and XDP_INTERFACES as the base leaves it (no program of ours)."""
    env = manifests.pod_env(manifests.rendered("configmap"))
    data_plane = {name: env.get(name, "") for name in ("DATAPLANE", "XDP_INTERFACES")}
    print(f"the base's data-plane settings: {data_plane}")
    yield from make_world(tmp_path, nodes=2, env={**ENV, **data_plane})


def make_world(tmp_path: Path, *, nodes: int, env: dict[str, str]
               ) -> Iterator[tuple[netns.Cluster, fakekube.FakeKube]]:
    nc.require_netns_cluster()
    netns.sweep_stale(PREFIX)
    cluster = netns.Cluster(nodes, prefix=PREFIX,
                            bpffs_root=os.path.join(BPFFS_ROOT, uuid.uuid4().hex),
                            log_dir=str(tmp_path / "logs"), env=env, services=(ZERO, CONTROL))
    kube: fakekube.FakeKube | None = None
    try:
        cluster.__enter__()
        host = cluster.add_host("api")
        kube = fakekube.FakeKube(host=host.ip)
        netns.run_in(host.netns, kube.start)  # its socket on the cluster network
        cluster.env["KUBECONFIG"] = kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
        yield cluster, kube
    finally:
        for node in cluster.nodes:
            print(f"--- {node.name} ({node.netns}) log tail:")
            print(nc._tail(node.log_path, lines=40))
        if kube is not None:
            kube.close()
        cluster.close()
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)


API_IP = "10.96.0.11"  # the api Service web depends on (never probed: only its map value counts)
HPA_SPEC = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
    "minReplicas": 1, "maxReplicas": 5,
    "metrics": [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
}


def workload(name: str, ip: str, *, replicas: int = 1,
             annotations: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """An opted-in Service at `ip` whose Deployment has `replicas`, all ready."""
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": "default"},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}},
                               "spec": {"containers": [{"name": name, "image": "x"}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": "default", "annotations": {
             services.REFERENCE: f"deployment/{name}", services.SCALE_DOWN_TIME: str(IDLE),
             **(annotations or {})}},
         "spec": {"clusterIP": ip, "ports": [{"port": nc.PORT, "protocol": "UDP"}]}},
        slice_of(name, ready=replicas),
    ]


def slice_of(name: str, *, ready: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-a", "namespace": "default",
                         "labels": {services.SERVICE_NAME_LABEL: name}},
            "addressType": "IPv4", "ports": [{"port": nc.PORT}],
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": True}}
                          for i in range(ready)]}


def replicas_of(kube: fakekube.FakeKube, name: str) -> int:
    obj = kube.get_object("deployments", name)
    assert obj is not None
    return int(obj["spec"]["replicas"])


@contextlib.asynccontextmanager
async def endpoints_following(kube: fakekube.FakeKube, names: tuple[str, ...]) -> Any:
    """Each Deployment's EndpointSlice follows its replicas, as pods become ready."""

    async def follow() -> None:
        shown = {name: replicas_of(kube, name) for name in names}
        while True:
            for name in names:
                now = replicas_of(kube, name)
                if now != shown[name]:
                    kube.delete_object("endpointslices", f"{name}-a")
                    kube.create_object(slice_of(name, ready=now))
                    shown[name] = now
            await asyncio.sleep(0.05)

    task = asyncio.create_task(follow(), name="e2e.endpoint-controller")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def scale_writes(kube: fakekube.FakeKube) -> list[str]:
    """The deployment of every /scale PATCH, in the order the API server took them."""
    return [r.name for r in list(kube.requests)
            if r.verb == "patch" and r.resource == "deployments/scale"]


def objects(replicas: int) -> list[dict[str, Any]]:
    return workload("web", ZERO, replicas=replicas)


def replicas(kube: fakekube.FakeKube) -> int:
    return replicas_of(kube, "web")


def scale_patches(kube: fakekube.FakeKube) -> int:
    return len(scale_writes(kube))


async def web_up(cluster: netns.Cluster, kube: fakekube.FakeKube) -> tuple[netns.Node, str]:
    """Starts the cluster with web at 1 replica; returns the leader once every map holds it."""
    for obj in objects(replicas=1):
        kube.create_object(obj)
    cluster.start()
    leader, leader_api = await nc.enforcing(cluster)
    await nc.tables_are(cluster, {nc.key(ZERO): 1}, what=f"{ZERO}=1 in every node's map",
                        timeout=nc.START_DEADLINE)
    return leader, leader_api


async def scale_down_lines(leader: netns.Node) -> list[str]:
    """The leader's log lines for web's scale-down. The agent logs once the PATCH is answered,
    so the line may come a moment after the API server shows 0 replicas: wait for it."""

    def lines() -> list[str]:
        return [x for x in nc._tail(leader.log_path, lines=10_000).splitlines()
                if "scaled deployment/default/web from 1 to 0" in x]

    await nc.until(f"the scale-down in {leader.name}'s log", lines, timeout=10.0)
    return lines()


async def keep_sending(cluster: netns.Cluster, node: netns.Node, seconds: float) -> None:
    """Traffic through `node` only: a datagram to the service every 0.1 s for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cluster.send_from_pod(node, ZERO, port=nc.PORT, count=1)
        await asyncio.sleep(0.1)


async def test_a_burst_through_every_node_is_one_scale_up_and_one_node_s_traffic_keeps_it_up(
    world: tuple[netns.Cluster, fakekube.FakeKube],
) -> None:
    cluster, kube = world
    for obj in objects(replicas=0):
        kube.create_object(obj)
    cluster.start()
    await nc.enforcing(cluster)
    await nc.tables_are(cluster, {nc.key(ZERO): 0}, what=f"{ZERO}=0 in every node's map",
                        timeout=nc.START_DEADLINE)
    async with endpoints_following(kube, ("web",)):
        # A burst to the sleeping service through all nodes at once.
        for node in cluster.nodes:
            cluster.send_from_pod(node, ZERO, port=nc.PORT, count=50)
        await nc.until("web scaled up", lambda: replicas(kube) == 1, timeout=SCALE_DEADLINE)
        await nc.tables_are(cluster, {nc.key(ZERO): 1}, what=f"{ZERO}=1 in every node's map")
        for node in cluster.nodes:
            assert nc.probe(cluster, node) == nc.PROBES, f"{node.name} dropped a woken service"
        assert scale_patches(kube) == 1, "more than one scale-up PATCH for one burst"

        # Traffic through node-0 only, for twice the idle time: never scaled down, although
        # node-1 and node-2 see nothing at all.
        await keep_sending(cluster, cluster.nodes[0], seconds=2 * IDLE + 2)
        assert replicas(kube) == 1 and scale_patches(kube) == 1
        # Traffic stops everywhere: exactly one scale-down after the idle time.
        stopped = time.monotonic()
        await nc.until("web scaled down", lambda: replicas(kube) == 0, timeout=SCALE_DEADLINE)
        assert time.monotonic() - stopped >= IDLE - 0.5  # not before the idle time
        await nc.tables_are(cluster, {nc.key(ZERO): 0}, what=f"{ZERO}=0 again everywhere")
        await asyncio.sleep(1.0)  # a few more rounds: nothing more is written
        assert scale_patches(kube) == 2


async def blocked_as_blind(leader_api: str) -> str:
    """The leader's GetState verdict on web when it names a blind node, else ""."""
    reply = await localcluster.call(leader_api, "GetState", pb.GetStateRequest())
    assert isinstance(reply, pb.GetStateResponse)
    for outlook in reply.scale_down:
        if outlook.service == "default/web" and outlook.cause == "blind":
            assert not outlook.allowed and outlook.ip == ZERO
            return outlook.reason
    return ""


async def test_the_bases_maps_only_nodes_are_blind_and_never_scale_a_service_down(
    base_world: tuple[netns.Cluster, fakekube.FakeKube],
) -> None:
    """Issue 14's worst case: with the base's settings no program of ours counts packets, so
    every node is blind; it says so, and web (2 ready replicas, idle time 3 s) stays up for
    far longer than the idle time plus a report window, which once scaled it to 0 in 12 s."""
    cluster, kube = base_world
    for obj in objects(replicas=2):
        kube.create_object(obj)
    cluster.start()
    address, _ = await localcluster.find_leader([n.api_address for n in cluster.nodes],
                                                timeout=nc.START_DEADLINE)
    await nc.tables_are(cluster, {nc.key(ZERO): 2}, what=f"{ZERO}=2 in every node's map",
                        timeout=nc.START_DEADLINE)
    for node in cluster.nodes:
        await nc.until(f"{node.name} saying it is blind", lambda n=node: blind_says(n),
                       timeout=nc.CONVERGE_DEADLINE)
    await nc.until("the leader blocking web's scale-down on a blind node",
                   lambda: blocked_as_blind(address), timeout=SCALE_DEADLINE)
    reason = await blocked_as_blind(address)
    assert reason.startswith("scale-down blocked: node node-") and "is blind" in reason
    assert "no counting program" in reason, reason
    # Idle time 3 s, report window 1.5 s, rounds every 0.3 s: hold well past all of them.
    held_until = time.monotonic() + 3 * (IDLE + 1.5 + 0.3)
    while time.monotonic() < held_until:
        assert replicas(kube) == 2 and scale_patches(kube) == 0, "a blind cluster scaled down"
        await asyncio.sleep(0.1)
    log = nc._tail(cluster.nodes[0].log_path, lines=2000)
    assert "this node is blind: no counting program" in log, log


async def blind_says(node: netns.Node) -> str:
    reply = await localcluster.call(node.api_address, "GetState", pb.GetStateRequest())
    assert isinstance(reply, pb.GetStateResponse)
    return reply.blind


async def follower_state(leader_api: str, follower: netns.Node) -> str:
    """How the leader's membership sees `follower` now ("alive", "suspect", "dead"...)."""
    reply = await localcluster.call(leader_api, "ListPeers", pb.ListPeersRequest())
    assert isinstance(reply, pb.ListPeersResponse)
    states = [p.state for p in reply.peers if p.node == follower.name]
    return states[0] if states else "unlisted"


async def test_a_node_whose_agent_is_down_blocks_scale_down_until_it_is_declared_dead(
    world: tuple[netns.Cluster, fakekube.FakeKube],
) -> None:
    cluster, kube = world
    leader, leader_api = await web_up(cluster, kube)
    follower = next(n for n in cluster.nodes if n is not leader)
    cluster.kill_agent(follower)
    # Idle everywhere, one agent down. Sampled throughout: while the leader's membership does
    # not count it dead, web stays up (missing facts are not idleness); then web goes down
    # exactly once, on the two live nodes' facts.
    started = time.monotonic()
    deadline = started + 4 * SCALE_DEADLINE
    seen_dead = False
    while replicas(kube) != 0:
        state = await follower_state(leader_api, follower)
        seen_dead = seen_dead or state == "dead"
        if time.monotonic() > deadline:
            pytest.fail(f"web never scaled down; {follower.name} is {state} at the leader")
        await asyncio.sleep(0.05)
    assert seen_dead or await follower_state(leader_api, follower) == "dead", (
        f"scaled down while {follower.name} (down, no reports) was not declared dead")
    assert scale_patches(kube) == 1
    # The leader's one log line for it names the facts: the two live nodes, not the dead one.
    (line,) = await scale_down_lines(leader)
    assert "idle on all 2 live node(s)" in line and follower.name not in line, line
    assert time.monotonic() - started >= IDLE - 0.5


async def test_after_a_leader_change_one_node_s_traffic_still_keeps_the_service_up(
    world: tuple[netns.Cluster, fakekube.FakeKube],
) -> None:
    """The new leader trusts no fact from before its term: it waits one report window and then
    needs every live node's own summary. Traffic through one follower keeps the service up
    across the change (a leader that counted missing facts as idleness would scale it down);
    when the traffic stops, the new leader scales it down exactly once, on all three nodes'
    facts (the old leader's agent restarted as a follower)."""
    cluster, kube = world
    old, _ = await web_up(cluster, kube)
    sender = next(n for n in cluster.nodes if n is not old)
    traffic = asyncio.create_task(keep_sending(cluster, sender, seconds=3600),
                                  name="e2e.traffic")
    try:
        await asyncio.sleep(1.0)  # the old leader has the sender's facts
        assert cluster.kill_agent(old) == -signal.SIGKILL
        survivors = [n.api_address for n in cluster.nodes if n is not old]
        _, reply = await localcluster.find_leader(survivors, timeout=nc.START_DEADLINE)
        new = cluster.node(reply.leader_node)
        assert new is not old
        cluster.start_agent(old)  # back as a follower: three live nodes again
        # Past the new leader's window and twice the idle time, with traffic through one node.
        await asyncio.sleep(2 * IDLE + 2.0)
        assert replicas(kube) == 1 and scale_patches(kube) == 0, "scaled down a served service"
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
    stopped = time.monotonic()
    await nc.until("web scaled down by the new leader", lambda: replicas(kube) == 0,
                   timeout=SCALE_DEADLINE)
    assert time.monotonic() - stopped >= IDLE - 0.5
    assert scale_patches(kube) == 1
    (line,) = await scale_down_lines(new)
    assert "idle on all 3 live node(s)" in line, line


async def test_dependencies_wake_first_and_the_hpa_comes_back_after_a_leader_change(
    world: tuple[netns.Cluster, fakekube.FakeKube],
) -> None:
    """web needs api (scale-to-zero/dependencies); api has an HPA. Idle everywhere: web goes
    down before api, and api's HPA is suspended (its spec saved on the Deployment). The leader
    is SIGKILLed; a packet to web through a survivor makes the NEW leader wake api, then web,
    and re-create the HPA with exactly the spec it had."""
    cluster, kube = world
    for obj in (*workload("web", ZERO, annotations={policy.DEPENDENCIES: "api"}),
                *workload("api", API_IP, annotations={policy.HPA_ENABLED: "true",
                                                      policy.HPA_NAME: "api-cpu"})):
        kube.create_object(obj)
    kube.create_object({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                        "metadata": {"name": "api-cpu", "namespace": "default"},
                        "spec": HPA_SPEC})
    cluster.start()
    old, _ = await nc.enforcing(cluster)
    async with endpoints_following(kube, ("web", "api")):
        await nc.until("web and api scaled down", lambda: (
            replicas_of(kube, "web"), replicas_of(kube, "api")) == (0, 0), timeout=SCALE_DEADLINE)
        assert scale_writes(kube) == ["web", "api"], "api went down before web"
        assert kube.get_object("horizontalpodautoscalers", "api-cpu") is None
        api = kube.get_object("deployments", "api")
        assert api is not None and workloads.SUSPENDED_HPA in api["metadata"]["annotations"]
        await nc.tables_are(cluster, {nc.key(ZERO): 0, nc.key(API_IP): 0},
                            what="web and api at 0 in every node's map")

        assert cluster.kill_agent(old) == -signal.SIGKILL
        survivors = [n for n in cluster.nodes if n is not old]
        _, reply = await localcluster.find_leader([n.api_address for n in survivors],
                                                  timeout=nc.START_DEADLINE)
        assert reply.leader_node != old.name
        cluster.send_from_pod(survivors[0], ZERO, port=nc.PORT, count=5)
        await nc.until("web woken by the new leader", lambda: replicas_of(kube, "web") == 1,
                       timeout=SCALE_DEADLINE)
        assert scale_writes(kube)[2:] == ["api", "web"], "web woke before api"
        assert replicas_of(kube, "api") == 1
        await nc.until("api's HPA re-created", lambda: kube.get_object(
            "horizontalpodautoscalers", "api-cpu") is not None, timeout=SCALE_DEADLINE)
    hpa = kube.get_object("horizontalpodautoscalers", "api-cpu")
    assert hpa is not None and hpa["spec"] == HPA_SPEC
    api = kube.get_object("deployments", "api")
    assert api is not None
    assert workloads.SUSPENDED_HPA not in (api["metadata"].get("annotations") or {})
