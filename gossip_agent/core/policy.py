"""The scale-to-zero controller's other annotations, and the order they impose on scaling.

Annotations on an opted-in Service (beside `scale-to-zero/reference` and
`scale-to-zero/scale-down-time`, parsed in core.services):

  scale-to-zero/dependencies      "a,b" or "ns/a,b": Services this one needs; they are woken
                                  first (and with it), and are not put to sleep while it is up.
  scale-to-zero/dependents        "c,d": Services that need this one (the same edge, declared
                                  from the other end); they are put to sleep first.
  scale-to-zero/scaling-priority  integer (default 0): among Services with no order between
                                  them, the higher priority is scaled first.
  scale-to-zero/hpa-enabled       "true"/"false" (default false): the workload has an HPA to
                                  suspend while it is at zero (an HPA cannot hold 0 replicas).
  scale-to-zero/hpa-name          the HPA's name (default: the workload's name).

A name without a namespace is in the Service's own namespace. A malformed value is a
PolicyInvalid naming the annotation (the Service is then scaled without that feature: the
caller logs it once); a dependency cycle is broken deterministically and reported.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from gossip_agent import errors

DEPENDENCIES = "scale-to-zero/dependencies"
DEPENDENTS = "scale-to-zero/dependents"
SCALING_PRIORITY = "scale-to-zero/scaling-priority"
HPA_ENABLED = "scale-to-zero/hpa-enabled"
HPA_NAME = "scale-to-zero/hpa-name"

# Names per list annotation: far beyond real dependency fan-out, small enough that a typo
# cannot make the leader plan over thousands of names.
MAX_NAMES = 64
_NAME = re.compile(r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Policy:
    """One Service's scaling relations ("namespace/name" throughout)."""

    name: str
    dependencies: frozenset[str] = frozenset()
    dependents: frozenset[str] = frozenset()
    priority: int = 0
    hpa_name: str = ""  # "" when hpa-enabled is not true


def parse(annotations: Mapping[str, str], *, name: str, workload: str) -> Policy:
    """The policy of Service `name` ("ns/svc") scaling `workload` (its name)."""
    namespace = name.split("/", 1)[0]
    enabled = _parse_bool(annotations.get(HPA_ENABLED, "false"))
    hpa = annotations.get(HPA_NAME, workload) if enabled else ""
    if hpa and _SUBDOMAIN.fullmatch(hpa) is None:
        raise errors.PolicyInvalid(f"{HPA_NAME}={hpa!r} is not a HorizontalPodAutoscaler name")
    return Policy(
        name=name,
        dependencies=_parse_names(annotations.get(DEPENDENCIES, ""), DEPENDENCIES, namespace),
        dependents=_parse_names(annotations.get(DEPENDENTS, ""), DEPENDENTS, namespace),
        priority=_parse_priority(annotations.get(SCALING_PRIORITY, "0")),
        hpa_name=hpa,
    )


def _parse_names(value: str, annotation: str, namespace: str) -> frozenset[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    if len(names) > MAX_NAMES:
        raise errors.PolicyInvalid(f"{annotation} lists {len(names)} names; at most {MAX_NAMES}")
    for part in names:
        if _NAME.fullmatch(part) is None:
            raise errors.PolicyInvalid(
                f"{annotation}={value!r}: {part!r} is not a Service name (NAME or NAMESPACE/NAME)")
    return frozenset(part if "/" in part else f"{namespace}/{part}" for part in names)


def _parse_priority(value: str) -> int:
    try:
        priority = int(value.strip())
    except ValueError:
        priority = None
    if priority is None or not -(2**31) <= priority < 2**31:  # the controller's i32
        raise errors.PolicyInvalid(f"{SCALING_PRIORITY}={value!r}: expected an integer")
    return priority


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise errors.PolicyInvalid(f"{HPA_ENABLED}={value!r}: expected true or false")
    return lowered == "true"


# -- ordering ---------------------------------------------------------------------------------


def needs(policies: Mapping[str, Policy]) -> dict[str, set[str]]:
    """X -> the Services X needs, from both ends' annotations (only Services known here)."""
    edges: dict[str, set[str]] = {name: set() for name in policies}
    for policy in policies.values():
        for dependency in policy.dependencies:
            if dependency in policies and dependency != policy.name:
                edges[policy.name].add(dependency)
        for dependent in policy.dependents:
            if dependent in policies and dependent != policy.name:
                edges[dependent].add(policy.name)
    return edges


def wake_order(target: str, policies: Mapping[str, Policy]) -> list[str]:
    """The Services to wake for `target`: its transitive dependencies first, then it."""
    edges = needs(policies)
    wanted: set[str] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(edges.get(name, ()))
    return _order(wanted, edges, policies)


def sleep_order(names: Iterable[str], policies: Mapping[str, Policy]) -> list[str]:
    """The given Services ordered for scale-down: dependents before what they need."""
    needed_by: dict[str, set[str]] = {name: set() for name in policies}
    for name, required in needs(policies).items():
        for dependency in required:
            needed_by[dependency].add(name)
    return _order(set(names), needed_by, policies)


def held_up_by(name: str, policies: Mapping[str, Policy], *, awake: set[str]) -> list[str]:
    """The awake Services that need `name` (it must not go to sleep under them)."""
    return sorted(x for x, required in needs(policies).items() if name in required and x in awake)


def _order(names: set[str], edges: Mapping[str, set[str]],
           policies: Mapping[str, Policy]) -> list[str]:
    """A topological order of `names` (each after what `edges` says must come first); among
    the ready ones the highest priority, then the name. A cycle is broken at its
    highest-priority member."""

    def rank(name: str) -> tuple[int, str]:
        return (-(policies[name].priority if name in policies else 0), name)

    remaining = {name: {d for d in edges.get(name, ()) if d in names} for name in names}
    order: list[str] = []
    while remaining:
        ready = [name for name, required in remaining.items() if not required]
        chosen = min(ready or remaining, key=rank)  # no ready one: a cycle, broken here
        order.append(chosen)
        del remaining[chosen]
        for required in remaining.values():
            required.discard(chosen)
    return order


def has_cycle(policies: Mapping[str, Policy]) -> bool:
    edges = needs(policies)
    remaining = {name: set(required) for name, required in edges.items()}
    while remaining:
        ready = [name for name, required in remaining.items() if not required]
        if not ready:
            return True
        for name in ready:
            del remaining[name]
        for required in remaining.values():
            required.difference_update(ready)
    return False
