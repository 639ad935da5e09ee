"""The Workloads Protocol: what the leader's scaler does to Deployments and StatefulSets.

Implementations: kube.py against the API server; memory.py in a dict with the same
preconditions (tests, local runs).

Contract:
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

import dataclasses
from typing import Protocol

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
