"""lab.pods reads a pod spec as the kubelet and containerd do: service links, $(VAR)
expansion, Downward API fields, ENTRYPOINT/CMD against command/args, capabilities."""

from __future__ import annotations

import pathlib

import pytest

from lab import pods

pytestmark = pytest.mark.unit


def test_service_links_and_expansion_follow_the_kubelet() -> None:
    env = pods.service_links({"redis-coordination": ("10.96.0.7", 6379)})
    assert env["REDIS_COORDINATION_SERVICE_HOST"] == "10.96.0.7"
    assert env["REDIS_COORDINATION_PORT_6379_TCP"] == "tcp://10.96.0.7:6379"
    assert pods.expand("a.$(NS).b $(MISSING) $$(NS)", {"NS": "x"}) == "a.x.b $(MISSING) $(NS)"
    container = {"env": [{"name": "NS", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.namespace"}}}, {"name": "PEER", "value": "svc.$(NS).cluster"}],
        "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["BPF"]}}}
    facts = pods.PodFacts(name="p", namespace="ns1", node_name="n", pod_ip="1.2.3.4",
                          host_ip="1.2.3.4")
    image = pods.ImageConfig(entrypoint=("agent",), cmd=("run",), env={"PATH": "/bin"},
                             workdir="/", user="0:0")
    env = pods.container_env(container, facts, image=image, links={})
    assert env == {"PATH": "/bin", "NS": "ns1", "PEER": "svc.ns1.cluster"}
    assert pods.command_line(container, image, env) == ["agent", "run"]
    assert pods.command_line({"args": ["env"]}, image, env) == ["agent", "env"]
    assert pods.capability_names(container) == ["BPF"]
    assert "NET_RAW" in pods.capability_names({"securityContext": {}})


def test_mount_targets_resolve_links_inside_the_root_never_out_to_the_host(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # as in Debian: absolute, meant inside the root
    (root / "etc").mkdir()
    (root / "etc" / "alias").symlink_to("../run")
    inside = pods._inside(str(root), "/var/run/secrets/kubernetes.io/serviceaccount")
    assert inside == f"{root}/run/secrets/kubernetes.io/serviceaccount"
    assert pods._inside(str(root), "/etc/alias/x") == f"{root}/run/x"
    assert pods._inside(str(root), "/../../etc") == f"{root}/etc"
