"""End to end: agent processes with SOURCE=kubernetes against the fake API server.

Three lab.localcluster agents (real pinned BPF maps, the bpffs lease) reach the fake
Kubernetes API over real HTTP through an ordinary kubeconfig (KUBECONFIG), as they would reach a
cluster. The test changes Services and EndpointSlices on the server and reads every agent's
pinned SERVICE_LIST directly (bpf(), independently of the agents).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_agent.core import services
from lab import fakekube, localcluster
from tests.e2e import test_local_cluster as lc
from tests.e2e.test_local_cluster import clients, e2e_root, start_cluster  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

OPT_IN = {services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "30"}
BOUND = 20.0  # seconds: a list, a watch event, a publish and a push, on a loaded 2-core machine


@pytest.fixture
def api() -> Iterator[fakekube.FakeKube]:
    with fakekube.FakeKube() as kube:
        yield kube


def service(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": OPT_IN},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}


def endpoint_slice(name: str, owner: str, ready: dict[str, bool]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {services.SERVICE_NAME_LABEL: owner}},
            "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": r}}
                          for a, r in ready.items()]}


def replace_slice(api: fakekube.FakeKube, obj: dict[str, Any]) -> None:
    api.delete_object("endpointslices", obj["metadata"]["name"])
    api.create_object(obj)


async def test_service_changes_on_the_api_reach_every_agents_map_and_a_410_relists(
    start_cluster: Callable[..., localcluster.LocalCluster],  # noqa: F811
    clients: lc.Clients,  # noqa: F811
    api: fakekube.FakeKube, tmp_path: Path,
) -> None:
    web, other = "10.96.5.10", "10.96.5.11"
    api.create_object(service("web", web))
    api.create_object(service("api", other))
    api.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True, "10.0.0.2": True,
                                                      "10.0.0.3": False}))
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    cluster = start_cluster(3, {"SOURCE": "kubernetes", "KUBECONFIG": kubeconfig})
    agents = cluster.agents
    await lc.wait_serving(clients, agents)
    await lc.until("every map to hold the listed services",
                   lc.pins_hold(agents, {lc.key(web): 2, lc.key(other): 0}, (1, 1)),
                   timeout=BOUND, running=agents)
    # Only the leader lists and watches: one list per kind, not one per agent, all by it.
    assert api.request_count(verb="list", resource="services") == 1
    assert api.request_count(verb="list", resource="endpointslices") == 1
    _, leader = await localcluster.find_leader(cluster.addresses, timeout=BOUND)
    source_calls = api.request_count(user_agent=" source")
    assert source_calls >= 4  # two lists, two watches
    assert api.request_count(user_agent=f"gossip-agent/{leader.leader_node} source") == (
        source_calls)

    replace_slice(api, endpoint_slice("web-a", "web", {"10.0.0.1": False, "10.0.0.2": False}))
    await lc.until("web scaled to zero everywhere",
                   lc.pins_hold(agents, {lc.key(web): 0, lc.key(other): 0}, (1, 2)),
                   timeout=BOUND, running=agents)
    api.create_object(endpoint_slice("api-a", "api", {"10.0.1.1": True}))
    api.delete_object("services", "web")
    await lc.until("api scaled up and web gone everywhere",
                   lc.pins_hold(agents, {lc.key(other): 1}, (1, 3)),
                   timeout=BOUND, running=agents)

    # The API server goes away (every stream and connection cut, so no watch can see what
    # follows); a change is made and the history it is in compacted away; the server comes
    # back on the same address. The leader's watches resume from their versions, get 410 and
    # relist: the change arrives, nothing is lost or counted twice.
    lists = api.request_count(verb="list")
    api.stop()
    api.create_object(endpoint_slice("api-b", "api", {"10.0.1.1": True, "10.0.1.2": True}))
    api.compact()
    api.start()
    await lc.until("the relisted state everywhere",
                   lc.pins_hold(agents, {lc.key(other): 2}, (1, 4)),
                   timeout=BOUND, running=agents)
    # Each kind relists on its own 410 (one may land after the table above was published).
    await lc.until("a relist of each kind", lambda: (
        api.request_count(verb="list") >= lists + 2, api.request_count(verb="list")),
        timeout=BOUND)
    assert api.request_count(verb="list") == lists + 2  # once per kind, by one agent


async def test_a_new_leader_takes_over_the_watch_and_no_map_goes_blank(
    start_cluster: Callable[..., localcluster.LocalCluster],  # noqa: F811
    clients: lc.Clients,  # noqa: F811
    api: fakekube.FakeKube, tmp_path: Path,
) -> None:
    web = "10.96.6.10"
    api.create_object(service("web", web))
    api.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True}))
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    cluster = start_cluster(3, {"SOURCE": "kubernetes", "KUBECONFIG": kubeconfig})
    await lc.wait_serving(clients, cluster.agents)
    await lc.until("every map to hold web", lc.pins_hold(cluster.agents, {lc.key(web): 1}, (1, 1)),
                   timeout=BOUND, running=cluster.agents)
    leader_address, before = await localcluster.find_leader(cluster.addresses, timeout=BOUND)
    old = lc.agent_at(cluster, leader_address)
    survivors = [a for a in cluster.agents if a is not old]
    lists = api.request_count(verb="list")

    async def survivors_maps() -> dict[str, dict[str, int]]:
        return {a.node: lc.show(lc.pin_table(a.pin_dir)) for a in survivors}

    # Every survivor's pinned map, sampled through the whole takeover: the new leader starts
    # from the snapshot it holds, never from an empty table while its first list runs.
    async with lc.Sampler("e2e.survivor-maps", survivors_maps, interval=0.02) as maps:
        old.signal(signal.SIGKILL)
        assert await lc.wait_exit(old, timeout=5) == -signal.SIGKILL
        _, after = await localcluster.find_leader(
            [a.address for a in survivors], BOUND)
        assert after.term > before.term
        replace_slice(api, endpoint_slice("web-a", "web", {"10.0.0.1": True, "10.0.0.2": True}))
        await lc.until("the new leader's watch to bring web's second replica to every survivor",
                       lc.pins_hold(survivors, {lc.key(web): 2}, (after.term, 1)),
                       timeout=BOUND, running=survivors)
    tables = [table for _, sample in maps.samples for table in sample.values()]
    assert len(maps.samples) > 3
    assert all(table in ({web: 1}, {web: 2}) for table in tables), tables
    await lc.until("the new leader's list of each kind", lambda: (
        api.request_count(verb="list") >= lists + 2, api.request_count(verb="list")),
        timeout=BOUND)
    assert api.request_count(verb="list") == lists + 2  # the new leader listed both kinds, once
