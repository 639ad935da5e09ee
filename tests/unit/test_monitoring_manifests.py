"""k8s/monitoring renders with kustomize and fits the agents it monitors: the ServiceMonitor
selects the metrics Service, that Service selects the agent pods, and the Grafana dashboard
queries only metrics the agent exposes (docs/operating.md's metrics table, itself checked
against a real scrape in tests/integration/test_observability.py). The PromQL itself is
evaluated by a real Prometheus in tests/e2e/test_operating.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.test_docs_and_manifests import K8S, OPERATING, by_kind, kustomize

pytestmark = pytest.mark.unit

MONITORING = K8S / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRICS_PORT = 9102  # docs/operating.md: "k8s/monitoring expects 9102"


@pytest.fixture(scope="module")
def rendered() -> list[Any]:
    return kustomize(MONITORING)


def documented_metrics() -> set[str]:
    section = OPERATING.read_text().split("<!-- metrics-table:start -->")[1]
    section = section.split("<!-- metrics-table:end -->")[0]
    return set(re.findall(r"^\| `(gossip_agent_[a-z_]+)`", section, flags=re.M))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_monitoring_renders_the_metrics_service_the_servicemonitor_and_the_dashboard(
    rendered: list[Any],
) -> None:
    assert sorted(d["kind"] for d in rendered) == ["ConfigMap", "Service", "ServiceMonitor"]
    config_map = by_kind(rendered, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["grafana-dashboard.json"]) == json.loads(
        DASHBOARD.read_text())


def test_servicemonitor_selects_the_metrics_service_and_its_port(rendered: list[Any]) -> None:
    service = by_kind(rendered, "Service")
    monitor = by_kind(rendered, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert port["targetPort"] == METRICS_PORT
    assert service["spec"]["clusterIP"] == "None"


def test_metrics_service_selects_the_agent_pods_of_the_daemonset() -> None:
    daemonset = by_kind(kustomize(K8S / "base"), "DaemonSet")
    (service,) = [d for d in kustomize(MONITORING) if d["kind"] == "Service"]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert f"k8s/monitoring expects {METRICS_PORT}" in OPERATING.read_text()


def test_dashboard_queries_only_documented_metrics_and_has_the_first_look_panels() -> None:
    documented = documented_metrics()
    used = set()
    for expr in dashboard_exprs():
        for name in re.findall(r"\bgossip_agent_[a-z_]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used, "the dashboard queries nothing"
    assert used <= documented, f"not exposed by the agent: {sorted(used - documented)}"
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for wanted in ("version per node", "leader", "term", "convergence latency",
                   "map apply time", "scale-up requests", "events"):
        assert wanted in titles, f"no panel about {wanted}: {titles}"


def test_dashboard_panel_ids_are_unique_and_every_target_names_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            uid = target["datasource"]["uid"]
            assert uid.startswith("${") and uid[2:-1] in variables, target
