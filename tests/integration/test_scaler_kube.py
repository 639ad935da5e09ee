"""The leader's scaler against the fake Kubernetes API over real HTTP, through the official client
(scaler.kube.KubeWorkloads driven by scaler.loop.Scaler).

What the API server sees is checked exactly (its request log and objects): one /scale PATCH per
wake-up however many requests, a resourceVersion precondition on every scaling write, no write
without a proven lease, dependencies first, HPAs suspended and restored with the same spec, also
by a different leader. Traffic facts are fed as the inbox feeds them; the facts' clock is the
test's (core.scaling is clock-free), the loop's round timer is real and short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from gossip_agent import errors
from gossip_agent.core import policy, scaling, traffic
from gossip_agent.observability import telemetry
from gossip_agent.scaling import base as workloads
from gossip_agent.scaling import kube, loop
from gossip_agent.sources import base as source_base
from gossip_agent.sources import kubernetes as kube_source
from lab import fakekube

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds: a few HTTP round trips on a loaded 2-core machine, many times over
S = scaling.NS
HPA_SPEC = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
    "minReplicas": 2, "maxReplicas": 7,
    "metrics": [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}],
    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}},
}


def deployment(name: str, *, replicas: int, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "x"}]}}}}


def hpa(name: str) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": "default", "labels": {"team": "shop"}},
            "spec": HPA_SPEC}


def replicas(kube: fakekube.FakeKube, name: str) -> int:
    obj = kube.get_object("deployments", name)
    assert obj is not None
    return int(obj["spec"]["replicas"])


def ref(name: str) -> workloads.WorkloadRef:
    return workloads.WorkloadRef("deployment", "default", name)


def target(name: str, key: int, *, idle_s: int = 60, **policy_args: Any) -> loop.Target:
    return loop.Target(key=key, name=f"default/{name}", ref=ref(name), idle_ns=idle_s * S,
                       policy=policy.Policy(name=f"default/{name}", **policy_args))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


class World:
    """What the scaler reads: targets, the snapshot's ready replicas, membership, leadership."""

    def __init__(self, targets: list[loop.Target]) -> None:
        self.targets = {t.key: t for t in targets}
        self.ready: dict[int, int] = {t.key: 1 for t in targets}
        self.live = ["a", "b", "c"]
        self.leading = True
        self.proven = True
        self.known = True  # the source has listed every Service this term


@pytest.fixture
def api_factory(fake_kube: fakekube.FakeKube, kubeconfig: str,
                monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    return kube_source.new_api_client


@pytest.fixture
def kube_workloads(api_factory: Callable[[], Any]) -> Iterator[kube.KubeWorkloads]:
    made = kube.KubeWorkloads(api_factory=api_factory)
    yield made
    made.close()


def make_scaler(world: World, wl: workloads.Workloads, clock: Clock, *,
                recorder: telemetry.Recorder | None = None,
                leading: Callable[[], bool] | None = None) -> loop.Scaler:
    return loop.Scaler(
        targets=lambda: world.targets, targets_known=lambda: world.known,
        ready=lambda: world.ready, live_nodes=lambda: world.live,
        leading=leading or (lambda: world.leading), proven=lambda: world.proven, workloads=wl,
        timing=loop.Timing(cooldown_ns=5 * S, window_ns=10 * S, round_interval=0.05),
        telemetry=recorder or telemetry.Recorder(), status=scaling.Status(), clock=clock)


@contextlib.asynccontextmanager
async def running(scaler: loop.Scaler) -> AsyncIterator[loop.Scaler]:
    task = asyncio.create_task(scaler.run(), name="scaler.loop")
    try:
        yield scaler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def rounds(scaler: loop.Scaler, count: int = 3) -> None:
    """Lets the loop run a few scale-down rounds (0.05 s apart)."""
    await asyncio.sleep(count * 0.05 + 0.1)


def request(key: int, node: str = "a") -> source_base.ScaleUp:
    return source_base.ScaleUp(service_ip=key, name="", node=node, source_ip=1, events=1)


def scale_patches(kube: fakekube.FakeKube, since: float) -> list[str]:
    return [r.name for r in list(kube.requests)
            if r.at >= since and r.verb == "patch" and r.resource == "deployments/scale"]


# -- KubeWorkloads ----------------------------------------------------------------------------


async def test_a_scale_write_with_a_stale_resource_version_is_refused_and_changes_nothing(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=0))
    scale = await kube_workloads.get_scale(ref("api"))
    assert scale.replicas == 0
    # Someone (an HPA, kubectl) scales api to 5 after the leader read it at 0.
    fake_kube.delete_object("deployments", "api")
    fake_kube.create_object(deployment("api", replicas=5))
    with pytest.raises(errors.ScaleFailed, match="409"):
        await kube_workloads.set_scale(ref("api"), replicas=1,
                                       resource_version=scale.resource_version)
    assert replicas(fake_kube, "api") == 5  # never shrunk from 5 to 1


async def test_an_hpa_is_suspended_and_restored_with_exactly_its_spec(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=3))
    fake_kube.create_object(hpa("api-hpa"))
    assert await kube_workloads.suspend_hpa(ref("api"), hpa="api-hpa") is True
    assert fake_kube.get_object("horizontalpodautoscalers", "api-hpa") is None
    saved = fake_kube.get_object("deployments", "api")
    assert saved is not None and workloads.SUSPENDED_HPA in saved["metadata"]["annotations"]
    assert await kube_workloads.suspend_hpa(ref("api"), hpa="api-hpa") is False  # nothing left
    assert await kube_workloads.resume_hpa(ref("api"), hpa="api-hpa") is True
    restored = fake_kube.get_object("horizontalpodautoscalers", "api-hpa")
    assert restored is not None
    assert restored["spec"] == HPA_SPEC and restored["metadata"]["labels"] == {"team": "shop"}
    after = fake_kube.get_object("deployments", "api")
    assert after is not None
    assert workloads.SUSPENDED_HPA not in (after["metadata"].get("annotations") or {})
    assert await kube_workloads.resume_hpa(ref("api"), hpa="api-hpa") is False


async def test_an_unreachable_api_server_is_a_scale_failure(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=0))
    fake_kube.fail(status=500, verb="get", resource="deployments/scale")
    with pytest.raises(errors.ScaleFailed, match="HTTP 500"):
        await kube_workloads.get_scale(ref("api"))


# -- Scaler: scale-up -------------------------------------------------------------------------


async def test_a_burst_of_requests_from_every_node_is_one_scale_up_patch(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=0))
    world = World([target("api", 10)])
    world.ready[10] = 0
    recorder = telemetry.Recorder()
    scaler = make_scaler(world, kube_workloads, Clock(), recorder=recorder)
    since = time.monotonic()
    async with running(scaler):
        for _ in range(20):
            for node in ("a", "b", "c"):
                scaler.scale_up(request(10, node))
        await until(lambda: replicas(fake_kube, "api") == 1, "api scaled to 1")
        await until(lambda: recorder.scale_requests["coalesced"] == 59, "59 coalesced")
    assert scale_patches(fake_kube, since) == ["api"]
    assert recorder.scale_requests["scaled"] == 1 and recorder.scale_requests["received"] == 60


async def test_a_workload_that_is_up_but_not_ready_is_not_written(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    """The map says 0 (no ready endpoint), /scale says 5: nothing is written."""
    fake_kube.create_object(deployment("api", replicas=5))
    world = World([target("api", 10)])
    world.ready[10] = 0
    recorder = telemetry.Recorder()
    scaler = make_scaler(world, kube_workloads, Clock(), recorder=recorder)
    since = time.monotonic()
    async with running(scaler):
        scaler.scale_up(request(10))
        await until(lambda: recorder.scale_requests["coalesced"] == 1, "the request handled")
    assert scale_patches(fake_kube, since) == [] and replicas(fake_kube, "api") == 5


async def test_a_leader_whose_lease_is_not_proven_writes_nothing(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_kube.create_object(deployment("api", replicas=0))
    world = World([target("api", 10)])
    world.ready[10] = 0
    world.proven = False
    recorder = telemetry.Recorder()
    scaler = make_scaler(world, kube_workloads, Clock(), recorder=recorder)
    since = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gossip_agent.scaler"):
        async with running(scaler):
            scaler.scale_up(request(10))
            await until(lambda: recorder.scale_requests["failed"] == 1, "the refused write")
    assert scale_patches(fake_kube, since) == [] and replicas(fake_kube, "api") == 0
    assert "lease is not proven" in caplog.text


async def test_a_followers_loop_looks_at_the_lease_once_a_round_and_acts_on_taking_office(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    """A follower's loop sleeps between rounds: it once spun on a zero timeout (a deadline only
    the leader moved on), burning a core per follower; 8 agents saturated 2 cores at rest."""
    fake_kube.create_object(deployment("api", replicas=0))
    world = World([target("api", 10)])
    world.ready[10] = 0
    world.leading = False
    looks = 0

    def leading() -> bool:
        nonlocal looks
        looks += 1
        return world.leading

    scaler = make_scaler(world, kube_workloads, Clock(), leading=leading)
    async with running(scaler):
        await asyncio.sleep(0.5)  # ten rounds
        # One look per round, give or take a wake-up; a spinning loop looks thousands of times.
        assert 1 <= looks <= 30, f"a follower's loop looked at the lease {looks} times in 0.5 s"
        scaler.scale_up(request(10))  # a follower drops it: the reporter re-raises it later
        await rounds(scaler)
        assert replicas(fake_kube, "api") == 0
        world.leading = True
        scaler.scale_up(request(10))
        await until(lambda: replicas(fake_kube, "api") == 1, "api scaled up by the new leader")


async def test_a_request_before_the_sources_first_list_is_held_then_acted_on(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads,
        caplog: pytest.LogCaptureFixture) -> None:
    """A new leader's source has not listed the Services yet, so the request's ClusterIP is
    unknown: it is held (the reporting node was acknowledged and will not ask again), and acted
    on once the list is complete. After that, an unknown ClusterIP is dropped with a warning."""
    fake_kube.create_object(deployment("api", replicas=0))
    world = World([])
    world.known = False
    scaler = make_scaler(world, kube_workloads, Clock())
    since = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gossip_agent.scaler"):
        async with running(scaler):
            for node in ("a", "b", "c") * 100:  # nodes keep asking while it is held
                scaler.scale_up(request(10, node))
            await rounds(scaler)
            assert scale_patches(fake_kube, since) == [] and "no opted-in" not in caplog.text
            assert len(scaler._requests) == 1, "held requests for one service piled up"
            world.targets = {10: target("api", 10)}
            world.ready[10] = 0
            world.known = True
            await until(lambda: replicas(fake_kube, "api") == 1, "the held request acted on")
            scaler.scale_up(request(99))
            await until(lambda: "no opted-in Service has that ClusterIP" in caplog.text,
                        "the unknown ClusterIP dropped once the list is complete")
    assert scale_patches(fake_kube, since) == ["api"]


async def test_dependencies_are_scaled_up_first_in_the_annotated_order(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    for name in ("web", "api", "db"):
        fake_kube.create_object(deployment(name, replicas=0))
    world = World([
        target("web", 1, dependencies=frozenset({"default/api"})),
        target("api", 2),
        target("db", 3, dependents=frozenset({"default/api"})),
    ])
    world.ready = {1: 0, 2: 0, 3: 0}
    scaler = make_scaler(world, kube_workloads, Clock())
    since = time.monotonic()
    async with running(scaler):
        scaler.scale_up(request(1))
        await until(lambda: replicas(fake_kube, "web") == 1, "web scaled up")
    assert scale_patches(fake_kube, since) == ["db", "api", "web"]


async def test_an_hpa_comes_back_with_the_same_spec_after_scale_up_by_a_new_leader(
        fake_kube: fakekube.FakeKube, api_factory: Callable[[], Any]) -> None:
    """Leader 1 scales api down (suspending its HPA) and loses office; leader 2, another
    process's worth of state, wakes it and restores the HPA from the workload's annotation."""
    fake_kube.create_object(deployment("api", replicas=3))
    fake_kube.create_object(hpa("api-hpa"))
    api_target = target("api", 10, hpa_name="api-hpa")
    clock = Clock()
    first = World([api_target])
    first.live = ["a"]
    old = kube.KubeWorkloads(api_factory=api_factory)
    try:
        scaler = make_scaler(first, old, clock)
        async with running(scaler):
            await until(lambda: scaler.facts is not None, "leader 1 in office")
            clock.now += 70 * S
            scaler.record("a", (traffic.Fact(10, 0, 0, 65 * S),))
            await until(lambda: replicas(fake_kube, "api") == 0, "api scaled down")
        assert fake_kube.get_object("horizontalpodautoscalers", "api-hpa") is None
    finally:
        old.close()
    second = World([api_target])
    second.ready[10] = 0
    new = kube.KubeWorkloads(api_factory=api_factory)
    try:
        async with running(make_scaler(second, new, clock)) as scaler:
            scaler.scale_up(request(10))
            await until(lambda: fake_kube.get_object("horizontalpodautoscalers", "api-hpa")
                        is not None, "the HPA restored")
    finally:
        new.close()
    restored = fake_kube.get_object("horizontalpodautoscalers", "api-hpa")
    assert restored is not None and restored["spec"] == HPA_SPEC
    assert replicas(fake_kube, "api") == 1


# -- Scaler: scale-down -----------------------------------------------------------------------


def report(scaler: loop.Scaler, idle: dict[str, float], key: int = 10) -> None:
    for node, idle_s in idle.items():
        scaler.record(node, (traffic.Fact(key, 0, 0, int(idle_s * S)),))


async def test_traffic_through_one_node_prevents_scale_down_until_it_stops_everywhere(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_kube.create_object(deployment("api", replicas=2))
    world = World([target("api", 10, idle_s=60)])
    clock = Clock()
    scaler = make_scaler(world, kube_workloads, clock)
    since = time.monotonic()
    with caplog.at_level(logging.INFO, logger="gossip_agent.scaler"):
        async with running(scaler):
            await until(lambda: scaler.facts is not None, "in office")
            for _ in range(4):  # 4 minutes of traffic through node a only
                clock.now += 60 * S
                report(scaler, {"a": 1, "b": 200, "c": 200})
                await rounds(scaler)
                assert replicas(fake_kube, "api") == 2
            clock.now += 30 * S
            report(scaler, {"a": 31, "b": 300, "c": 300})
            await rounds(scaler)
            assert replicas(fake_kube, "api") == 2  # 31 s idle < 60 s
            clock.now += 35 * S
            report(scaler, {"a": 66, "b": 335, "c": 335})
            await until(lambda: replicas(fake_kube, "api") == 0, "api scaled down")
            world.ready[10] = 0  # the snapshot that follows
            await rounds(scaler)
    assert scale_patches(fake_kube, since) == ["api"]
    downs = [r.message for r in caplog.records if "from 2 to 0" in r.message]
    assert len(downs) == 1 and "idle on all 3 live node(s) (a, b, c)" in downs[0]


async def test_a_silent_node_blocks_scale_down_until_membership_declares_it_dead(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=1))
    world = World([target("api", 10, idle_s=60)])
    clock = Clock()
    scaler = make_scaler(world, kube_workloads, clock)
    async with running(scaler):
        await until(lambda: scaler.facts is not None, "in office")
        clock.now += 100 * S
        report(scaler, {"a": 100, "b": 100})  # c never reports: down or partitioned
        await rounds(scaler)
        assert replicas(fake_kube, "api") == 1
        world.live = ["a", "b"]  # membership: c is dead
        await until(lambda: replicas(fake_kube, "api") == 0, "api scaled down")


async def test_a_new_leader_does_not_scale_down_on_facts_from_before_its_term(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    fake_kube.create_object(deployment("api", replicas=1))
    world = World([target("api", 10, idle_s=60)])
    world.live = ["a"]
    clock = Clock()
    scaler = make_scaler(world, kube_workloads, clock)
    async with running(scaler):
        await until(lambda: scaler.facts is not None, "in office")
        clock.now += 5 * S
        report(scaler, {"a": 100})  # idle, but only 5 s into the term (window 10 s)
        await rounds(scaler)
        assert replicas(fake_kube, "api") == 1
        world.leading = False  # deposed: its facts go
        await until(lambda: scaler.facts is None, "out of office")
        world.leading = True  # leads again: a new term, nothing known
        await until(lambda: scaler.facts is not None, "back in office")
        clock.now += 20 * S  # a full window later, but no node reported in this term
        await rounds(scaler)
        assert replicas(fake_kube, "api") == 1
        report(scaler, {"a": 120})
        await until(lambda: replicas(fake_kube, "api") == 0, "api scaled down")


async def test_dependents_go_down_before_what_they_need(
        fake_kube: fakekube.FakeKube, kube_workloads: kube.KubeWorkloads) -> None:
    for name in ("web", "db"):
        fake_kube.create_object(deployment(name, replicas=1))
    world = World([target("web", 1, dependencies=frozenset({"default/db"})),
                   target("db", 2)])
    world.live = ["a"]
    clock = Clock()
    scaler = make_scaler(world, kube_workloads, clock)
    since = time.monotonic()
    async with running(scaler):
        await until(lambda: scaler.facts is not None, "in office")
        clock.now += 100 * S
        scaler.record("a", (traffic.Fact(1, 0, 0, 100 * S), traffic.Fact(2, 0, 0, 100 * S)))
        await until(lambda: replicas(fake_kube, "web") == 0, "web scaled down")
        world.ready[1] = 0  # the snapshot after web went down
        await until(lambda: replicas(fake_kube, "db") == 0, "db scaled down")
    assert scale_patches(fake_kube, since) == ["web", "db"]
