"""core.services: the scale-to-zero annotations, ready counting as kube-proxy counts, the table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip_agent import errors
from gossip_agent.core import services, snapshots

pytestmark = pytest.mark.unit

OPT_IN = {services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "60"}


def service(name: str = "web", *, namespace: str = "default", ip: str | list[str] = "10.96.0.10",
            annotations: dict[str, str] | None = None, kind: str = "ClusterIP") -> dict[str, Any]:
    ips = ip if isinstance(ip, list) else [ip]
    spec: dict[str, Any] = {"type": kind, "clusterIPs": ips}
    if ips:
        spec["clusterIP"] = ips[0]
    return {
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": OPT_IN if annotations is None else annotations},
        "spec": spec,
    }


def endpoint(address: str, ready: bool | None = True, *more: str) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [address, *more], "conditions": conditions}


def endpoint_slice(name: str, *endpoints: dict[str, Any], owner: str | None = "web",
                   namespace: str = "default", family: str = "IPv4") -> dict[str, Any]:
    labels = {} if owner is None else {services.SERVICE_NAME_LABEL: owner}
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "addressType": family, "endpoints": list(endpoints)}


def test_the_controllers_two_reference_forms_are_accepted() -> None:
    same_namespace = services.parse_opt_in(OPT_IN, namespace="shop")
    assert same_namespace == services.OptIn("deployment", "shop", "web", 60)
    other = services.parse_opt_in(
        {services.REFERENCE: "statefulset/data/db-0.x", services.SCALE_DOWN_TIME: "0"},
        namespace="shop")
    assert other == services.OptIn("statefulset", "data", "db-0.x", 0)


@pytest.mark.parametrize(("annotations", "complaint"), [
    ({services.REFERENCE: "deployment"}, "expected KIND/NAME"),
    ({services.REFERENCE: "deployment/a/b/c", services.SCALE_DOWN_TIME: "5"}, "expected KIND/NAME"),
    ({services.REFERENCE: "Deployment/web", services.SCALE_DOWN_TIME: "5"}, "kind 'Deployment'"),
    ({services.REFERENCE: "daemonset/web", services.SCALE_DOWN_TIME: "5"}, "kind 'daemonset'"),
    ({services.REFERENCE: "deployment/Web", services.SCALE_DOWN_TIME: "5"}, "not a deployment"),
    ({services.REFERENCE: "deployment//web", services.SCALE_DOWN_TIME: "5"}, "not a namespace"),
    ({services.REFERENCE: "deployment/web\n", services.SCALE_DOWN_TIME: "5"}, "not a deployment"),
    ({services.SCALE_DOWN_TIME: "60"}, "scale-to-zero/reference is missing"),
    ({services.REFERENCE: "deployment/web"}, "scale-to-zero/scale-down-time is missing"),
    ({services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "60s"}, "whole seconds"),
    ({services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "-1"}, "whole seconds"),
    ({services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: " 60"}, "whole seconds"),
    ({services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "١٢"}, "whole seconds"),
    ({services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: str(2**63)}, "whole seconds"),
])
def test_a_malformed_annotation_is_refused_with_a_message_naming_it(
    annotations: dict[str, str], complaint: str,
) -> None:
    with pytest.raises(errors.AnnotationInvalid, match="scale-to-zero/") as caught:
        services.parse_opt_in(annotations, namespace="default")
    assert complaint in str(caught.value)


def test_a_service_without_either_annotation_is_not_watched() -> None:
    assert services.service_view(service(annotations={"other": "x"})) is None


def test_an_opted_in_service_is_keyed_by_its_ipv4_cluster_ip() -> None:
    view = services.service_view(service(ip="10.96.0.10"))
    assert view == services.Entry(snapshots.parse_ip("10.96.0.10"), "default/web",
                                  services.OptIn("deployment", "default", "web", 60))


def test_a_dual_stack_service_with_an_ipv6_primary_uses_its_ipv4_address() -> None:
    view = services.service_view(service(ip=["fd00::10", "10.96.0.11"]))
    assert isinstance(view, services.Entry)
    assert view.key == snapshots.parse_ip("10.96.0.11")


@pytest.mark.parametrize(("svc", "reason"), [
    (service(ip="None"), "headless"),
    (service(ip=[]), "no ClusterIP assigned"),
    (service(ip="fd00::10"), "no IPv4 ClusterIP"),
    (service(ip="", kind="ExternalName"), "ExternalName"),
    (service(annotations={services.REFERENCE: "deployment/web", services.SCALE_DOWN_TIME: "x"}),
     "scale-down-time='x'"),
])
def test_services_that_cannot_be_in_the_map_are_skipped_with_a_reason(
    svc: dict[str, Any], reason: str,
) -> None:
    view = services.service_view(svc)
    assert isinstance(view, services.Skip)
    assert view.name == "default/web"
    assert reason in view.reason


def test_ready_addresses_count_as_kube_proxy_counts_them() -> None:
    piece = endpoint_slice(
        "web-1",
        endpoint("10.0.0.1", True),
        endpoint("10.0.0.2", None),  # conditions.ready absent: ready
        endpoint("10.0.0.3", False),  # not ready (starting, or terminating)
        endpoint("10.0.0.4", True, "10.0.0.9"),  # only the first address is used
        {"addresses": [], "conditions": {"ready": True}},  # no address: nothing to route to
    )
    assert services.ready_addresses(piece) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}


def test_ipv6_and_fqdn_slices_do_not_count_for_an_ipv4_key() -> None:
    ipv6 = endpoint_slice("a", endpoint("fd00::1"), family="IPv6")
    fqdn = endpoint_slice("b", endpoint("db.example"), family="FQDN")
    assert services.ready_addresses(ipv6) == services.ready_addresses(fqdn) == set()


def test_the_value_is_the_distinct_ready_addresses_across_all_slices_of_the_service() -> None:
    inventory = services.Inventory()
    inventory.put_service(service())
    inventory.put_slice(endpoint_slice("web-1", endpoint("10.0.0.1"), endpoint("10.0.0.2")))
    # The same pod in two slices (a slice being split or merged) is one replica.
    inventory.put_slice(endpoint_slice("web-2", endpoint("10.0.0.2"), endpoint("10.0.0.3")))
    inventory.put_slice(endpoint_slice("other-1", endpoint("10.0.0.7"), owner="other"))
    inventory.put_slice(endpoint_slice("web-x", endpoint("10.0.0.8"), namespace="elsewhere"))
    inventory.put_slice(endpoint_slice("loose", endpoint("10.0.0.9"), owner=None))
    table = inventory.desired()
    key = snapshots.parse_ip("10.96.0.10")
    assert table.entries == {key: 3}
    assert table.names == {key: "default/web"}
    inventory.delete_slice(endpoint_slice("web-2"))
    assert inventory.desired().entries == {key: 2}


def test_a_service_with_no_slices_has_zero_replicas_and_deleting_it_removes_the_entry() -> None:
    inventory = services.Inventory()
    inventory.put_service(service())
    assert inventory.desired().entries == {snapshots.parse_ip("10.96.0.10"): 0}
    inventory.delete_service(service())
    assert inventory.desired().entries == {}


def test_removing_the_annotations_takes_the_service_out_and_correcting_them_puts_it_back() -> None:
    inventory = services.Inventory()
    inventory.put_service(service())
    inventory.put_service(service(annotations={services.REFERENCE: "deployment/web",
                                               services.SCALE_DOWN_TIME: "soon"}))
    broken = inventory.desired()
    assert broken.entries == {}
    assert "scale-down-time='soon'" in broken.skipped["default/web"]
    inventory.put_service(service())
    assert inventory.desired().entries == {snapshots.parse_ip("10.96.0.10"): 0}
    inventory.put_service(service(annotations={}))
    assert inventory.desired() == services.Table({}, {}, {})


def test_two_services_on_one_cluster_ip_keep_the_first_by_name_and_report_the_other() -> None:
    inventory = services.Inventory()
    inventory.put_service(service("b"))
    inventory.put_service(service("a"))
    table = inventory.desired()
    assert table.names == {snapshots.parse_ip("10.96.0.10"): "default/a"}
    assert "default/a" in table.skipped["default/b"]


def test_relisting_one_namespace_replaces_only_that_namespace() -> None:
    inventory = services.Inventory()
    inventory.put_service(service("web", namespace="a", ip="10.96.0.1"))
    inventory.put_service(service("web", namespace="b", ip="10.96.0.2"))
    inventory.replace_services(scope="a", items=[service("new", namespace="a", ip="10.96.0.3")])
    assert sorted(inventory.desired().names.values()) == ["a/new", "b/web"]
    inventory.replace_services(scope="", items=[])
    assert inventory.desired().entries == {}


def test_each_skip_is_reported_once_and_again_when_resolved() -> None:
    first = services.report_skips(before={}, now={"a/x": "bad"})
    assert (first.new, first.resolved) == ({"a/x": "bad"}, [])
    same = services.report_skips(before={"a/x": "bad"}, now={"a/x": "bad"})
    assert (same.new, same.resolved) == ({}, [])
    changed = services.report_skips(before={"a/x": "bad"}, now={"a/x": "worse"})
    assert changed.new == {"a/x": "worse"}
    fixed = services.report_skips(before={"a/x": "worse"}, now={})
    assert (fixed.new, fixed.resolved) == ({}, ["a/x"])


# -- properties ---------------------------------------------------------------------------------

_addresses = st.sampled_from([f"10.0.0.{i}" for i in range(1, 7)])
_slices = st.lists(
    st.tuples(st.sampled_from(["s1", "s2", "s3", "s4"]), st.sampled_from(["web", "api"]),
              st.lists(st.tuples(_addresses, st.sampled_from([True, False, None])), max_size=5)),
    max_size=8,
)


def _objects(raw: list[Any]) -> list[dict[str, Any]]:
    latest = {name: (owner, eps) for name, owner, eps in raw}  # one object per name
    return [endpoint_slice(name, *(endpoint(a, r) for a, r in eps), owner=owner)
            for name, (owner, eps) in latest.items()]


@given(_slices, st.randoms(use_true_random=False))
def test_the_table_does_not_depend_on_the_order_objects_arrive_in(
    raw: list[Any], rng: Any,
) -> None:
    objects = [service("web", ip="10.96.0.1"), service("api", ip="10.96.0.2"), *_objects(raw)]
    forward, shuffled = services.Inventory(), services.Inventory()
    for obj in objects:
        (forward.put_slice if "addressType" in obj else forward.put_service)(obj)
    rng.shuffle(objects)
    for obj in objects:
        (shuffled.put_slice if "addressType" in obj else shuffled.put_service)(obj)
    assert forward.desired() == shuffled.desired()
    relisted = services.Inventory()
    relisted.replace_services(scope="", items=[o for o in objects if "addressType" not in o])
    relisted.replace_slices(scope="", items=[o for o in objects if "addressType" in o])
    assert relisted.desired() == forward.desired()
