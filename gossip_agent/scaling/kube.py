"""Workloads (scaling/base.py) through the official kubernetes client.

- /scale of Deployments and StatefulSets: read, then a merge PATCH carrying the read
  resourceVersion, which the API server treats as a precondition (409 Conflict when the
  workload changed in between: the scaler then re-reads on its next round).
- HPAs (autoscaling/v2): read and kept raw (JSON as the server sent it, so the spec is restored
  field for field, including fields this client version does not model), saved in the
  workload's SUSPENDED_HPA annotation, deleted; re-created from that annotation on wake-up.

The client is synchronous: calls run in a small thread pool of their own so the event loop
never waits on HTTP. Its exceptions become errors.ScaleFailed here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable
from typing import Any

import kubernetes.client
import urllib3

from gossip_agent import errors
from gossip_agent.scaling import base as workloads

log = logging.getLogger("gossip_agent.scaler")

# Scaling calls in flight at once: scale-ups of distinct services proceed in parallel, and a
# hung API server ties up only these threads.
WORKERS = 4
# The client would send a dict as a JSON patch (its first JSON content type); these are merge
# patches, where a resourceVersion is a precondition and null deletes an annotation.
MERGE = "application/merge-patch+json"
# Seconds one scaling call may take: a wake-up is waiting on it, but an API server under load
# answers a /scale PATCH within a few seconds.
TIMEOUT = 10.0


class KubeWorkloads:
    def __init__(self, *, api_factory: Callable[[], kubernetes.client.ApiClient],
                 timeout: float = TIMEOUT) -> None:
        self._api_factory = api_factory  # called on first use, as the source's client is
        self._apps: kubernetes.client.AppsV1Api | None = None
        self._autoscaling: kubernetes.client.AutoscalingV2Api | None = None
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=WORKERS, thread_name_prefix="scaler.kube")

    def _connect(self) -> None:
        try:
            api = self._api_factory()
        except errors.GossipAgentError as exc:
            raise errors.ScaleFailed(f"no Kubernetes API client: {exc}") from exc
        self._apps = kubernetes.client.AppsV1Api(api)
        self._autoscaling = kubernetes.client.AutoscalingV2Api(api)

    @property
    def apps(self) -> kubernetes.client.AppsV1Api:
        if self._apps is None:
            self._connect()
        assert self._apps is not None
        return self._apps

    @property
    def autoscaling(self) -> kubernetes.client.AutoscalingV2Api:
        if self._autoscaling is None:
            self._connect()
        assert self._autoscaling is not None
        return self._autoscaling

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        kwargs["_request_timeout"] = self.timeout
        try:
            return await loop.run_in_executor(self._pool, lambda: call(**kwargs))
        except kubernetes.client.ApiException as exc:
            raise errors.ScaleFailed(f"{what}: HTTP {exc.status} {exc.reason}: "
                                     f"{_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.ScaleFailed(f"{what}: API server unreachable: {exc}") from exc

    def _scale_calls(self, ref: workloads.WorkloadRef) -> tuple[Callable[..., Any], ...]:
        if ref.kind == "deployment":
            return (self.apps.read_namespaced_deployment_scale,
                    self.apps.patch_namespaced_deployment_scale,
                    self.apps.patch_namespaced_deployment)
        if ref.kind == "statefulset":
            return (self.apps.read_namespaced_stateful_set_scale,
                    self.apps.patch_namespaced_stateful_set_scale,
                    self.apps.patch_namespaced_stateful_set)
        raise errors.ScaleFailed(f"{ref}: kind {ref.kind!r} cannot be scaled")

    async def get_scale(self, ref: workloads.WorkloadRef) -> workloads.Scale:
        read, _, _ = self._scale_calls(ref)
        scale = await self._call(f"read /scale of {ref}", read, name=ref.name,
                                 namespace=ref.namespace)
        return workloads.Scale(int(scale.spec.replicas or 0),
                               str(scale.metadata.resource_version))

    async def set_scale(self, ref: workloads.WorkloadRef, *, replicas: int,
                        resource_version: str) -> workloads.Scale:
        _, patch, _ = self._scale_calls(ref)
        body = {"metadata": {"resourceVersion": resource_version},
                "spec": {"replicas": replicas}}
        scale = await self._call(f"scale {ref} to {replicas}", patch, name=ref.name,
                                 namespace=ref.namespace, body=body, _content_type=MERGE)
        return workloads.Scale(int(scale.spec.replicas or 0),
                               str(scale.metadata.resource_version))

    async def suspend_hpa(self, ref: workloads.WorkloadRef, *, hpa: str) -> bool:
        response = await self._call(
            f"read HPA {ref.namespace}/{hpa}", self._read_hpa, name=hpa,
            namespace=ref.namespace)
        if response is None:
            return False  # none to suspend (or suspended already: its spec is saved)
        saved = {"name": hpa, "labels": response["metadata"].get("labels") or {},
                 "spec": response["spec"]}
        await self._annotate(ref, json.dumps(saved, sort_keys=True))
        await self._call(f"delete HPA {ref.namespace}/{hpa}",
                         self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
                         name=hpa, namespace=ref.namespace,
                         body={"preconditions": {
                             "resourceVersion": response["metadata"]["resourceVersion"]}})
        return True

    def _read_hpa(self, *, name: str, namespace: str,
                  _request_timeout: float) -> dict[str, Any] | None:
        try:
            response: Any = self.autoscaling.read_namespaced_horizontal_pod_autoscaler(
                name=name, namespace=namespace, _preload_content=False,
                _request_timeout=_request_timeout)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = json.loads(response.data)
        return result

    async def resume_hpa(self, ref: workloads.WorkloadRef, *, hpa: str) -> bool:
        saved = await self._saved(ref)
        if saved is None:
            return False
        body = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": saved["name"], "namespace": ref.namespace,
                             "labels": saved.get("labels") or {}},
                "spec": saved["spec"]}
        try:
            await self._call(f"re-create HPA {ref.namespace}/{saved['name']}",
                             self.autoscaling.create_namespaced_horizontal_pod_autoscaler,
                             namespace=ref.namespace, body=body)
        except errors.ScaleFailed as exc:
            cause = exc.__cause__
            if not (isinstance(cause, kubernetes.client.ApiException) and cause.status == 409):
                raise
            log.info("HPA %s/%s exists already; keeping it", ref.namespace, saved["name"])
        await self._annotate(ref, None)
        return True

    async def _saved(self, ref: workloads.WorkloadRef) -> dict[str, Any] | None:
        read = (self.apps.read_namespaced_deployment if ref.kind == "deployment"
                else self.apps.read_namespaced_stateful_set)
        obj = await self._call(f"read {ref}", read, name=ref.name, namespace=ref.namespace)
        raw = (obj.metadata.annotations or {}).get(workloads.SUSPENDED_HPA)
        if raw is None:
            return None
        try:
            saved: dict[str, Any] = json.loads(raw)
            if not isinstance(saved.get("spec"), dict) or not saved.get("name"):
                raise ValueError("no name or spec")
        except ValueError as exc:
            raise errors.ScaleFailed(
                f"{ref}: annotation {workloads.SUSPENDED_HPA} is not a saved HPA: {exc}") from exc
        return saved

    async def _annotate(self, ref: workloads.WorkloadRef, value: str | None) -> None:
        _, _, patch = self._scale_calls(ref)
        body = {"metadata": {"annotations": {workloads.SUSPENDED_HPA: value}}}
        await self._call(f"annotate {ref}", patch, name=ref.name, namespace=ref.namespace,
                         body=body, _content_type=MERGE)


def _message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", "")) or str(exc.body)
    except (TypeError, ValueError):
        return str(exc.body or "")
