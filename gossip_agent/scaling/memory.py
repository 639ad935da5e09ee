"""Workloads (scaling/base.py) in a dict, with the API server's resourceVersion preconditions:
the scaler's in-memory twin for tests, simulations and local runs."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from gossip_agent import errors
from gossip_agent.scaling import base


@dataclasses.dataclass
class _Workload:
    replicas: int
    version: int
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


class MemoryWorkloads:
    """Workloads and HPAs in a dict, with resourceVersion preconditions; records every write."""

    def __init__(self) -> None:
        self._workloads: dict[base.WorkloadRef, _Workload] = {}
        self.hpas: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> spec
        self.writes: list[tuple[str, base.WorkloadRef, int]] = []  # ("scale", ref, replicas)
        self._version = 0

    def add(self, ref: base.WorkloadRef, *, replicas: int) -> None:
        self._version += 1
        self._workloads[ref] = _Workload(replicas, self._version)

    def replicas(self, ref: base.WorkloadRef) -> int:
        return self._find(ref).replicas

    def annotations(self, ref: base.WorkloadRef) -> dict[str, str]:
        return dict(self._find(ref).annotations)

    def _find(self, ref: base.WorkloadRef) -> _Workload:
        try:
            return self._workloads[ref]
        except KeyError:
            raise errors.ScaleFailed(f"{ref} does not exist") from None

    def _bump(self, workload: _Workload) -> None:
        self._version += 1
        workload.version = self._version

    async def get_scale(self, ref: base.WorkloadRef) -> base.Scale:
        workload = self._find(ref)
        return base.Scale(workload.replicas, str(workload.version))

    async def set_scale(self, ref: base.WorkloadRef, *, replicas: int,
                        resource_version: str) -> base.Scale:
        workload = self._find(ref)
        if resource_version != str(workload.version):
            raise errors.ScaleFailed(f"{ref} changed since it was read (resourceVersion "
                                     f"{resource_version}, now {workload.version})")
        workload.replicas = replicas
        self._bump(workload)
        self.writes.append(("scale", ref, replicas))
        return base.Scale(replicas, str(workload.version))

    async def suspend_hpa(self, ref: base.WorkloadRef, *, hpa: str) -> bool:
        workload = self._find(ref)
        spec = self.hpas.pop((ref.namespace, hpa), None)
        if spec is None:
            return False
        workload.annotations[base.SUSPENDED_HPA] = json.dumps({"name": hpa, "spec": spec})
        self._bump(workload)
        return True

    async def resume_hpa(self, ref: base.WorkloadRef, *, hpa: str) -> bool:
        workload = self._find(ref)
        saved = workload.annotations.pop(base.SUSPENDED_HPA, None)
        if saved is None:
            return False
        record = json.loads(saved)
        self.hpas[(ref.namespace, record["name"])] = copy.deepcopy(record["spec"])
        self._bump(workload)
        return True
