"""The Workloads Protocol: what the leader's scaler does to Deployments and StatefulSets, and an
in-memory implementation with the same preconditions (tests, local runs).

Contract (kube.py implements it against the API server):
- get_scale(ref) -> Scale: the /scale subresource's spec.replicas and its resourceVersion.
- set_scale(ref, replicas, resource_version): writes /scale with that resourceVersion as a
  precondition; a workload changed since it was read fails with ScaleFailed (HTTP 409), so the
  scaler never overwrites a change it has not seen (never shrinks 5 replicas to 1).
- suspend_hpa(ref, hpa): saves the HPA's spec in an annotation on the workload (SUSPENDED_HPA:
  where a new leader finds it), then deletes the HPA. Nothing to do when it does not exist.
- resume_hpa(ref, hpa): re-creates the HPA with exactly the saved spec and removes the
  annotation. Nothing to do when nothing is saved.
Every failure is errors.ScaleFailed with a sentence naming the workload.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Protocol

from gossip_agent import errors

# Workload annotation holding a suspended HPA's spec (JSON), so that whichever agent leads when
# the workload wakes restores it exactly.
SUSPENDED_HPA = "gossip-agent/suspended-hpa"


@dataclasses.dataclass(frozen=True, order=True)
class WorkloadRef:
    kind: str  # "deployment" or "statefulset" (core.services.WORKLOAD_KINDS)
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Scale:
    replicas: int
    resource_version: str


class Workloads(Protocol):
    async def get_scale(self, ref: WorkloadRef) -> Scale: ...

    async def set_scale(self, ref: WorkloadRef, *, replicas: int,
                        resource_version: str) -> Scale: ...

    async def suspend_hpa(self, ref: WorkloadRef, *, hpa: str) -> bool: ...

    async def resume_hpa(self, ref: WorkloadRef, *, hpa: str) -> bool: ...


@dataclasses.dataclass
class _Workload:
    replicas: int
    version: int
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


class MemoryWorkloads:
    """Workloads and HPAs in a dict, with resourceVersion preconditions; records every write."""

    def __init__(self) -> None:
        self._workloads: dict[WorkloadRef, _Workload] = {}
        self.hpas: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> spec
        self.writes: list[tuple[str, WorkloadRef, int]] = []  # ("scale", ref, replicas)
        self._version = 0

    def add(self, ref: WorkloadRef, *, replicas: int) -> None:
        self._version += 1
        self._workloads[ref] = _Workload(replicas, self._version)

    def replicas(self, ref: WorkloadRef) -> int:
        return self._find(ref).replicas

    def annotations(self, ref: WorkloadRef) -> dict[str, str]:
        return dict(self._find(ref).annotations)

    def _find(self, ref: WorkloadRef) -> _Workload:
        try:
            return self._workloads[ref]
        except KeyError:
            raise errors.ScaleFailed(f"{ref} does not exist") from None

    def _bump(self, workload: _Workload) -> None:
        self._version += 1
        workload.version = self._version

    async def get_scale(self, ref: WorkloadRef) -> Scale:
        workload = self._find(ref)
        return Scale(workload.replicas, str(workload.version))

    async def set_scale(self, ref: WorkloadRef, *, replicas: int,
                        resource_version: str) -> Scale:
        workload = self._find(ref)
        if resource_version != str(workload.version):
            raise errors.ScaleFailed(f"{ref} changed since it was read (resourceVersion "
                                     f"{resource_version}, now {workload.version})")
        workload.replicas = replicas
        self._bump(workload)
        self.writes.append(("scale", ref, replicas))
        return Scale(replicas, str(workload.version))

    async def suspend_hpa(self, ref: WorkloadRef, *, hpa: str) -> bool:
        workload = self._find(ref)
        spec = self.hpas.pop((ref.namespace, hpa), None)
        if spec is None:
            return False
        workload.annotations[SUSPENDED_HPA] = json.dumps({"name": hpa, "spec": spec})
        self._bump(workload)
        return True

    async def resume_hpa(self, ref: WorkloadRef, *, hpa: str) -> bool:
        workload = self._find(ref)
        saved = workload.annotations.pop(SUSPENDED_HPA, None)
        if saved is None:
            return False
        record = json.loads(saved)
        self.hpas[(ref.namespace, record["name"])] = copy.deepcopy(record["spec"])
        self._bump(workload)
        return True
