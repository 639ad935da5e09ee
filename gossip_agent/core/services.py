"""Kubernetes Services and EndpointSlices -> the desired SERVICE_LIST (pure: no I/O, no client).

The kubernetes source (sources/kubernetes.py) feeds raw API objects (plain JSON dicts) into an
Inventory; Inventory.desired() is the table the leader publishes. Rules, and where they come from:

- Opt-in is the scale-to-zero controller's own annotations, so its users keep their Services as
  they are: a Service with `scale-to-zero/reference` or `scale-to-zero/scale-down-time` is watched
  (the controller's test is "either is present"). Both must then be valid:
    reference        deployment/NAME, deployment/NAMESPACE/NAME, statefulset/... (lower case, as
                     the controller matches them; NAME without a namespace is in the Service's)
    scale-down-time  whole seconds, >= 0 (the controller parses an i64)
  A malformed value makes that one Service a Skip with a reason (the source logs it once and
  picks the Service up when it is corrected); the controller instead stops its whole watcher.
- Key: the Service's IPv4 ClusterIP (the first IPv4 of spec.clusterIPs, so a dual-stack Service
  with an IPv6 primary still counts). Headless (`None`), ExternalName and IPv6-only Services are
  Skips: the XDP program matches IPv4 destination addresses only.
- Value: the distinct ready endpoint addresses over every EndpointSlice labelled
  `kubernetes.io/service-name: <service>` in the Service's namespace, counted as kube-proxy
  counts them: only slices of the key's family (addressType IPv4), only an endpoint's first
  address, `conditions.ready` absent means ready. A Service with no slices has 0.
- Name: "namespace/name" (the snapshot's service name).

Invariant: desired() depends only on the objects currently held, never on the order they arrived
in, so a relist (replace) that returns the same objects gives the same table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gossip_agent import errors
from gossip_agent.core import snapshots

REFERENCE = "scale-to-zero/reference"
SCALE_DOWN_TIME = "scale-to-zero/scale-down-time"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WORKLOAD_KINDS = ("deployment", "statefulset")
MAX_SCALE_DOWN_SECONDS = 2**63 - 1  # the controller parses an i64

# DNS-1123 label (namespaces, Service names) and subdomain (Deployment/StatefulSet names).
# Used with fullmatch (a `$` would accept a trailing newline).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

ObjectKey = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True)
class OptIn:
    """The controller's view of one Service: which workload it scales and after how long."""

    workload_kind: str
    workload_namespace: str
    workload_name: str
    scale_down_seconds: int


@dataclasses.dataclass(frozen=True)
class Entry:
    """An opted-in Service that has a SERVICE_LIST key."""

    key: int
    name: str
    opt_in: OptIn
    # The Service's scale-to-zero/* annotations, for the scaler's policy (core.policy): kept
    # raw so that a malformed dependency list costs that feature, not the whole Service.
    annotations: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)


@dataclasses.dataclass(frozen=True)
class Skip:
    """An opted-in Service that cannot be in SERVICE_LIST, and why (one log line)."""

    name: str
    reason: str


def opted_in(annotations: Mapping[str, str]) -> bool:
    return REFERENCE in annotations or SCALE_DOWN_TIME in annotations


def parse_opt_in(annotations: Mapping[str, str], *, namespace: str) -> OptIn:
    """The two annotations of an opted-in Service; AnnotationInvalid names the bad one."""
    reference = annotations.get(REFERENCE)
    kind, workload_namespace, name = parse_reference(reference, namespace=namespace)
    seconds = parse_scale_down_time(annotations.get(SCALE_DOWN_TIME))
    return OptIn(kind, workload_namespace, name, seconds)


def parse_reference(value: str | None, *, namespace: str) -> tuple[str, str, str]:
    if value is None:
        raise errors.AnnotationInvalid(f"{REFERENCE} is missing (needed with {SCALE_DOWN_TIME})")
    parts = value.split("/")
    if len(parts) == 2:
        parts = [parts[0], namespace, parts[1]]
    if len(parts) != 3:
        raise errors.AnnotationInvalid(
            f"{REFERENCE}={value!r}: expected KIND/NAME or KIND/NAMESPACE/NAME")
    kind, workload_namespace, name = parts
    if kind not in WORKLOAD_KINDS:
        raise errors.AnnotationInvalid(
            f"{REFERENCE}={value!r}: kind {kind!r} is not one of {', '.join(WORKLOAD_KINDS)}")
    if not is_dns_label(workload_namespace):
        raise errors.AnnotationInvalid(
            f"{REFERENCE}={value!r}: {workload_namespace!r} is not a namespace name")
    if not _is_subdomain(name):
        raise errors.AnnotationInvalid(f"{REFERENCE}={value!r}: {name!r} is not a {kind} name")
    return kind, workload_namespace, name


def is_dns_label(name: str) -> bool:
    """A DNS-1123 label, as namespace and Service names must be."""
    return _LABEL.fullmatch(name) is not None


def _is_subdomain(name: str) -> bool:
    return len(name) <= 253 and all(is_dns_label(part) for part in name.split("."))


def parse_scale_down_time(value: str | None) -> int:
    if value is None:
        raise errors.AnnotationInvalid(f"{SCALE_DOWN_TIME} is missing (needed with {REFERENCE})")
    # Digits only: the controller's i64 parse rejects spaces and units ("60s") too.
    if not value.isascii() or not value.isdigit() or int(value) > MAX_SCALE_DOWN_SECONDS:
        raise errors.AnnotationInvalid(
            f"{SCALE_DOWN_TIME}={value!r}: expected whole seconds (0..{MAX_SCALE_DOWN_SECONDS})")
    return int(value)


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def service_view(service: Mapping[str, Any]) -> Entry | Skip | None:
    """What one Service contributes: an Entry, a Skip with its reason, or None (not opted in)."""
    namespace, name = object_key(service)
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    if not opted_in(annotations):
        return None
    full_name = f"{namespace}/{name}"
    try:
        opt_in = parse_opt_in(annotations, namespace=namespace)
    except errors.AnnotationInvalid as exc:
        return Skip(full_name, str(exc))
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return Skip(full_name, "an ExternalName Service has no ClusterIP")
    ips = list(spec.get("clusterIPs") or []) or [spec.get("clusterIP") or ""]
    if ips[0] == "None":
        return Skip(full_name, "headless (clusterIP None): no ClusterIP to match")
    if ips[0] == "":
        return Skip(full_name, "no ClusterIP assigned")
    for ip in ips:
        if _is_ipv4(ip):
            return Entry(snapshots.parse_ip(ip), full_name, opt_in, annotations=tuple(sorted(
                (k, str(v)) for k, v in annotations.items() if k.startswith("scale-to-zero/"))))
    return Skip(full_name, f"no IPv4 ClusterIP ({', '.join(ips)}): the XDP program matches IPv4")


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def slice_owner(endpoint_slice: Mapping[str, Any]) -> ObjectKey | None:
    """The Service a slice belongs to (namespace, service name), or None if unlabelled."""
    labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        return None
    return object_key(endpoint_slice)[0], str(service)


def ready_addresses(endpoint_slice: Mapping[str, Any]) -> frozenset[str]:
    """The addresses kube-proxy would route to in one IPv4 slice."""
    if endpoint_slice.get("addressType") != "IPv4":
        return frozenset()
    ready: set[str] = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        addresses = endpoint.get("addresses") or []
        conditions = endpoint.get("conditions") or {}
        if addresses and conditions.get("ready") is not False:  # absent (None) means ready
            ready.add(str(addresses[0]))
    return frozenset(ready)


@dataclasses.dataclass(frozen=True)
class SliceView:
    owner: ObjectKey
    ready: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Table:
    entries: dict[int, int]
    names: dict[int, str]
    skipped: dict[str, str]  # "namespace/name" -> reason


class Inventory:
    """The Services and EndpointSlices currently known, reduced to what the table needs.

    Objects are kept per kind and (namespace, name); `scope` is the namespace a list covered
    ("" = all namespaces), so relisting one namespace replaces only that namespace's objects.
    """

    def __init__(self) -> None:
        self.services: dict[ObjectKey, Entry | Skip] = {}
        self.slices: dict[ObjectKey, SliceView] = {}

    def replace_services(self, *, scope: str, items: Iterable[Mapping[str, Any]]) -> None:
        self.services = {k: v for k, v in self.services.items() if not _in_scope(k, scope)}
        for item in items:
            self.put_service(item)

    def replace_slices(self, *, scope: str, items: Iterable[Mapping[str, Any]]) -> None:
        self.slices = {k: v for k, v in self.slices.items() if not _in_scope(k, scope)}
        for item in items:
            self.put_slice(item)

    def put_service(self, service: Mapping[str, Any]) -> None:
        view = service_view(service)
        if view is None:
            self.services.pop(object_key(service), None)
        else:
            self.services[object_key(service)] = view

    def delete_service(self, service: Mapping[str, Any]) -> None:
        self.services.pop(object_key(service), None)

    def put_slice(self, endpoint_slice: Mapping[str, Any]) -> None:
        owner = slice_owner(endpoint_slice)
        if owner is None:
            self.slices.pop(object_key(endpoint_slice), None)
        else:
            self.slices[object_key(endpoint_slice)] = SliceView(
                owner, ready_addresses(endpoint_slice))

    def delete_slice(self, endpoint_slice: Mapping[str, Any]) -> None:
        self.slices.pop(object_key(endpoint_slice), None)

    def desired(self) -> Table:
        """The table now. Two Services on one ClusterIP (only possible for a moment, while an
        IP is reused): the first by name wins and the other is reported."""
        ready: dict[ObjectKey, set[str]] = {}
        for piece in self.slices.values():
            ready.setdefault(piece.owner, set()).update(piece.ready)
        entries: dict[int, int] = {}
        names: dict[int, str] = {}
        skipped: dict[str, str] = {}
        for key in sorted(self.services):
            view = self.services[key]
            if isinstance(view, Skip):
                skipped[view.name] = view.reason
            elif view.key in entries:
                skipped[view.name] = (f"ClusterIP {snapshots.format_ip(view.key)} is also "
                                      f"{names[view.key]}'s")
            else:
                entries[view.key] = len(ready.get(key, ()))
                names[view.key] = view.name
        return Table(entries, names, skipped)


def _in_scope(key: ObjectKey, scope: str) -> bool:
    return scope == "" or key[0] == scope


@dataclasses.dataclass(frozen=True)
class SkipReport:
    new: dict[str, str]  # newly skipped, or skipped for a different reason now
    resolved: list[str]  # skipped before, now in the table or gone


def report_skips(*, before: Mapping[str, str], now: Mapping[str, str]) -> SkipReport:
    """What to log after a change: each skip once, and once more when it is fixed."""
    new = {name: reason for name, reason in now.items() if before.get(name) != reason}
    resolved = sorted(name for name in before if name not in now)
    return SkipReport(new, resolved)
