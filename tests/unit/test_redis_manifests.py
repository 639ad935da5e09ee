"""k8s/coordination-redis: the seed's Redis overlay renders, its DaemonSet env is a valid redis
configuration pointing at the redis-coordination Service it deploys, and
k8s/coordination-redis.yaml is that render."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gossip_agent import config
from tests.unit.test_docs_and_manifests import K8S, by_kind, kustomize, resolve_env

pytestmark = pytest.mark.unit

OVERLAY = K8S / "coordination-redis"
RENDERED = K8S / "coordination-redis.yaml"


@pytest.fixture(scope="module")
def rendered() -> list[Any]:
    return kustomize(OVERLAY)


def named(documents: list[Any], kind: str, name: str) -> Any:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_redis_overlay_env_is_a_valid_redis_configuration(rendered: list[Any]) -> None:
    (container,) = by_kind(rendered, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    env = resolve_env(container["env"], {
        "spec.nodeName": "node-a", "status.podIP": "10.244.1.7", "metadata.namespace": "ops",
    })
    cfg = config.from_env(env)
    assert cfg.lease.backend == "redis"
    assert cfg.lease.redis is not None
    assert cfg.lease.redis.url == "redis://redis-coordination:6379/0"
    assert cfg.lease.redis.key_prefix == "ebpf:"  # the seed's key names


def test_redis_overlay_deploys_the_redis_its_url_names(rendered: list[Any]) -> None:
    service = named(rendered, "Service", "redis-coordination")
    deployment = named(rendered, "Deployment", "redis-coordination")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6379
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (redis,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "redis", "containerPort": 6379} in redis["ports"]


def test_redis_rendered_file_is_the_overlay_rendered(rendered: list[Any]) -> None:
    committed = [d for d in yaml.safe_load_all(RENDERED.read_text(encoding="utf-8"))
                 if d is not None]
    assert committed == rendered, (
        "k8s/coordination-redis.yaml differs from the overlay: run `.venv/bin/kubectl "
        "kustomize k8s/coordination-redis > k8s/coordination-redis.yaml`")
