"""SOURCE=kubernetes against the fake API server over real HTTP, through the official client.

The source is reached as an agent reaches a cluster: a kubeconfig in KUBECONFIG. Objects are
created, changed and deleted on the server (fake_kube's direct access has the same semantics as
its HTTP API and commits real watch events); the source only ever sees them through list and
watch. Deadlines are liveness bounds (several times the timers involved); what the source
publishes is checked exactly at every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from gossip_agent.core import services, snapshots
from gossip_agent.sources import base
from gossip_agent.sources import kubernetes as kube_source
from lab import fakekube

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # seconds: list + watch round trips on a loaded 2-core machine, many times over
OPT_IN = {services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "60"}


class Office:
    """Leadership as the source sees it (sources.base.Office), switched by the test."""

    def __init__(self, *, leading: bool) -> None:
        self.leading = leading
        self.office_changed = asyncio.Event()

    def set(self, leading: bool) -> None:
        self.leading = leading
        self.office_changed.set()


class Published:
    """Every table the source hands to the leader, in order."""

    def __init__(self) -> None:
        self.tables: list[base.Desired] = []

    def __call__(self, desired: base.Desired) -> None:
        self.tables.append(desired)

    @property
    def last(self) -> dict[str, int]:
        return by_name(self.tables[-1]) if self.tables else {}

    async def until(self, expected: dict[str, int], what: str) -> None:
        await until(lambda: self.last == expected,
                    f"{what}: expected {expected}, last published {self.last}")


def by_name(desired: base.Desired) -> dict[str, int]:
    return {desired.names[key]: value for key, value in desired.entries.items()}


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def service(name: str, *, namespace: str = "default", ip: str = "",
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 80}], "selector": {"app": name}}
    if ip:
        spec["clusterIP"] = ip
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": OPT_IN if annotations is None else annotations},
            "spec": spec}


def endpoint_slice(name: str, owner: str, ready: dict[str, bool | None], *,
                   namespace: str = "default") -> dict[str, Any]:
    endpoints = []
    for address, is_ready in ready.items():
        conditions = {} if is_ready is None else {"ready": is_ready}
        endpoints.append({"addresses": [address], "conditions": conditions})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {services.SERVICE_NAME_LABEL: owner}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 80}]}


@pytest.fixture
def fake_kube() -> Iterator[fakekube.FakeKube]:
    """conftest's fake_kube with frequent bookmarks: the fake sends a watch's response headers
    with its first event, and a watch that has not received them cannot be cut, only dropped;
    a bookmark soon ends it, so a test can see the source's threads gone without waiting."""
    with fakekube.FakeKube(bookmark_interval=0.2) as kube:
        yield kube


def replace(kube: fakekube.FakeKube, obj: dict[str, Any]) -> None:
    """An update as a controller makes it: delete + create keeps this test independent of
    the fake's PUT path, and the watch sees DELETED then ADDED like any other change."""
    metadata = obj["metadata"]
    plural = "services" if obj["kind"] == "Service" else "endpointslices"
    kube.delete_object(plural, metadata["name"], metadata.get("namespace", "default"))
    kube.create_object(obj)


def source_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("source.kubernetes")]


@contextlib.asynccontextmanager
async def watching(source: kube_source.KubernetesSource) -> AsyncIterator[Published]:
    """The source's watch() running as the agent runs it; cancelled (as at shutdown) after."""
    published = Published()
    task = asyncio.create_task(source.watch(published), name="source.kubernetes.test")
    try:
        yield published
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture
async def running(
    fake_kube: fakekube.FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[kube_source.KubernetesSource, Published]]:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    source = make_source()
    async with watching(source) as published:
        yield source, published


def make_source(**overrides: Any) -> kube_source.KubernetesSource:
    settings: dict[str, Any] = {
        "namespaces": (), "watch_timeout": 30.0, "backoff_base": 0.05, "backoff_cap": 0.2,
        "coalesce_window": 0.01, "max_entries": 1024,
    }
    settings.update(overrides)
    return kube_source.KubernetesSource(**settings)


async def test_opted_in_services_are_published_with_their_ready_endpoints(
    fake_kube: fakekube.FakeKube, running: tuple[kube_source.KubernetesSource, Published],
) -> None:
    source, published = running
    fake_kube.create_object(service("web", ip="10.96.1.10"))
    fake_kube.create_object(service("plain", ip="10.96.1.11", annotations={}))
    fake_kube.create_object(service("headless", ip="None"))
    fake_kube.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True, "10.0.0.2": None,
                                                              "10.0.0.3": False}))
    fake_kube.create_object(endpoint_slice("web-b", "web", {"10.0.0.2": True, "10.0.0.4": True}))
    await published.until({"default/web": 3}, "web's three distinct ready endpoints")
    assert published.tables[-1].entries == {snapshots.parse_ip("10.96.1.10"): 3}
    assert source.read() == published.tables[-1]


async def test_scaling_and_deleting_reach_the_table(
    fake_kube: fakekube.FakeKube, running: tuple[kube_source.KubernetesSource, Published],
) -> None:
    _, published = running
    fake_kube.create_object(service("web"))
    fake_kube.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True}))
    await published.until({"default/web": 1}, "one replica")
    replace(fake_kube, endpoint_slice("web-a", "web", {"10.0.0.1": True, "10.0.0.2": True}))
    await published.until({"default/web": 2}, "scaled to two")
    replace(fake_kube, endpoint_slice("web-a", "web", {"10.0.0.1": False, "10.0.0.2": False}))
    await published.until({"default/web": 0}, "scaled to zero (endpoints not ready)")
    fake_kube.delete_object("endpointslices", "web-a")
    fake_kube.create_object(service("api"))
    await published.until({"default/web": 0, "default/api": 0}, "a second service")
    fake_kube.delete_object("services", "web")
    await published.until({"default/api": 0}, "web deleted")


async def test_a_malformed_annotation_is_logged_once_and_picked_up_when_corrected(
    fake_kube: fakekube.FakeKube, running: tuple[kube_source.KubernetesSource, Published],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, published = running
    caplog.set_level(logging.INFO, logger="gossip_agent.sources.kubernetes")
    fake_kube.create_object(service("web"))
    await published.until({"default/web": 0}, "web opted in")
    bad = {services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "1m"}
    replace(fake_kube, service("web", annotations=bad))
    await published.until({}, "web skipped while its annotation is malformed")
    for index in range(3):  # unrelated changes recompute the table; the skip is not re-logged
        fake_kube.create_object(service(f"other-{index}"))
    await published.until({f"default/other-{i}": 0 for i in range(3)}, "three more services")
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skips == ["Service default/web skipped: scale-to-zero/scale-down-time='1m': "
                     "expected whole seconds (0..9223372036854775807)"]
    replace(fake_kube, service("web"))
    await published.until({"default/web": 0, **{f"default/other-{i}": 0 for i in range(3)}},
                          "web back once corrected")
    assert any(r.getMessage() == "Service default/web no longer skipped" for r in caplog.records)


async def test_a_410_relists_without_losing_or_duplicating_state(
    fake_kube: fakekube.FakeKube, running: tuple[kube_source.KubernetesSource, Published],
) -> None:
    _, published = running
    fake_kube.create_object(service("web"))
    fake_kube.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True}))
    await published.until({"default/web": 1}, "the first list")
    lists_before = fake_kube.request_count(verb="list")
    # The server goes away (every stream cut: no watch can see what follows), changes are made
    # and their history compacted away, and it comes back on the same address: the watches
    # resume from their versions and get 410.
    fake_kube.stop()
    fake_kube.create_object(endpoint_slice("web-b", "web", {"10.0.0.1": True, "10.0.0.2": True}))
    fake_kube.create_object(service("api"))
    fake_kube.delete_object("endpointslices", "web-a")
    fake_kube.compact()
    fake_kube.start()
    await published.until({"default/web": 2, "default/api": 0}, "the state after the relist")
    # Each kind relists on its own 410; one may land after the table above was published.
    await until(lambda: fake_kube.request_count(verb="list") >= lists_before + 2,
                "a relist of services and of endpointslices")
    assert fake_kube.request_count(verb="list") == lists_before + 2
    # Nothing in between was published from a half-updated view.
    assert [by_name(t) for t in published.tables][-1] == {"default/web": 2, "default/api": 0}
    assert {"default/web": 3} not in [by_name(t) for t in published.tables]


async def test_api_errors_are_retried_with_backoff_and_a_403_names_the_verb_and_resource(
    fake_kube: fakekube.FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    fake_kube.create_object(service("web"))
    fake_kube.fail(status=403, verb="list", resource="endpointslices", times=2)
    fake_kube.fail(status=500, verb="list", resource="services", times=3)
    async with watching(make_source()) as published:
        await published.until({"default/web": 0}, "the list once the API recovers")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("cannot list endpointslices.discovery.k8s.io in all namespaces: 403 Forbidden"
               in e and 'cannot list resource "endpointslices"' in e for e in errors), errors
    assert any("cannot list services in all namespaces: 500" in e for e in errors), errors
    assert fake_kube.request_count(verb="list", resource="services") >= 4
    assert len(published.tables) == 1  # nothing was published before both kinds had listed


async def test_a_burst_of_changes_is_coalesced(
    fake_kube: fakekube.FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    window = 1.0
    fake_kube.create_object(service("web"))
    async with watching(make_source(coalesce_window=window)) as published:
        await published.until({"default/web": 0}, "the first list")
        started = time.monotonic()
        for index in range(40):
            fake_kube.create_object(endpoint_slice(f"web-{index}", "web",
                                                   {f"10.0.1.{index}": True}))
            # Paced (the load, not a wait for anything): each change reaches the source on its
            # own, so without coalescing this would be up to forty tables.
            await asyncio.sleep(0.01)
        burst = time.monotonic() - started
        await published.until({"default/web": 40}, "all forty endpoints")
    # Leading edge plus one table per window while the burst lasted, plus the trailing one.
    assert len(published.tables) - 1 <= 2 + int(burst / window), (burst, len(published.tables))


async def test_only_the_leader_watches_and_a_follower_makes_no_api_calls(
    fake_kube: fakekube.FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    fake_kube.create_object(service("web"))
    office = Office(leading=False)
    source = make_source()
    source.follow(office)
    async with watching(source) as published:
        await asyncio.sleep(0)  # let the source start: following, it must not call the API
        assert source.read() is None and not source.synced
        assert fake_kube.request_count(resource="services") == 0
        office.set(True)
        await published.until({"default/web": 0}, "the table once leading")
        assert source.read() is not None and source.synced  # the scaler trusts its inventory
        office.set(False)
        await until(lambda: not source_threads(),
                    "the source's watch threads to end after stepping down")
        assert source.read() is None and not source.synced  # a later term lists afresh
        calls = fake_kube.request_count()
        fake_kube.create_object(service("api"))
        office.set(True)
        await published.until({"default/web": 0, "default/api": 0}, "a fresh list next term")
        assert fake_kube.request_count(verb="list") >= 4  # two kinds, listed in both terms
        assert fake_kube.request_count() > calls
    await until(lambda: not source_threads(), "the source's threads to end at cancellation")


async def test_namespaces_limit_what_is_watched(
    fake_kube: fakekube.FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    for namespace in ("shop", "other"):
        fake_kube.create_object({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": namespace}})
        fake_kube.create_object(service("web", namespace=namespace))
        fake_kube.create_object(endpoint_slice("web-a", "web", {"10.0.0.1": True},
                                               namespace=namespace))
    async with watching(make_source(namespaces=("shop",))) as published:
        await published.until({"shop/web": 1}, "only the shop namespace")
