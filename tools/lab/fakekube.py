"""A stateful fake Kubernetes API server over real HTTP, for tests and benchmarks.

No kube-apiserver can run on these machines, and no fake on PyPI enforces resourceVersions, so
this one does, for what gossip-agent and kubectl rely on. The official `kubernetes` client and
the real kubectl reach it through an ordinary kubeconfig (write_kubeconfig), as they reach a
cluster. It runs on its own threads, so sync tests, async tests and tools/ all use it alike:

    with fakekube.FakeKube() as kube:
        kube.write_kubeconfig(path)          # KUBECONFIG=path for agents and kubectl

Semantics enforced (as the real API server does them):
- Objects: uid, creationTimestamp, generation, and a resourceVersion taken from ONE increasing
  integer counter (sent as a string) on every write. Namespaced objects need their Namespace.
- Verbs: get, list, watch, create (POST; 409 AlreadyExists), update (PUT; 409 Conflict on a
  stale metadata.resourceVersion, none means unconditional; 404 on a missing object except for
  kinds that allow create-on-update, Leases and Services among them), patch (strategic merge,
  merge, JSON patch; a resourceVersion in the patch is a precondition), delete (preconditions
  honoured; answers a Success Status). Every error is a full Status object (kind, apiVersion,
  metadata, status, message, reason, details, code) with the real messages' wording.
- Lists: kind <Kind>List, metadata.resourceVersion, always `items`; labelSelector (=, ==, !=,
  exists, in, notin) and fieldSelector (metadata.name / metadata.namespace).
- Watch (watch=true): chunked newline-delimited JSON events. Without resourceVersion (or "0")
  a synthetic ADDED per existing object first; with one, only events after it; one older than
  the kept history gets an ERROR event carrying a 410 Expired Status. A MODIFIED object that
  stops (starts) matching the selector is sent as DELETED (ADDED). timeoutSeconds ends the
  stream; BOOKMARK events only with allowWatchBookmarks=true.
- Services get a ClusterIP from 10.96.0.0/16 unless they bring one (or "None": headless).
- Deployments and StatefulSets have the /scale subresource (autoscaling/v1 Scale: get, update,
  patch); a stand-in controller makes status.replicas/readyReplicas follow spec.replicas.
- Discovery for kubectl: /version, /api, /api/v1, /apis, /apis/<group>/<version>, and an
  /openapi/v3 index with no paths (kubectl then validates nothing client-side and sends
  fieldValidation to the server, which accepts it: see README, "Fake Kubernetes API").

Hooks for failure tests (thread-safe, callable from any thread):
- fail(status=409|403|500|..., verb=, resource=, times=): the next matching requests fail
  with that Status (403 names the verb, resource and namespace as RBAC does).
- pause() / resume(): requests hang (their clients time out) until resumed: an API server
  that stopped answering. close_streams(): every open watch ends. compact(): history is
  dropped, so a watch from an older resourceVersion gets 410.
- stop() / start() on the same port: an API server that went away and came back.
- request_count(...) / requests: what clients asked, with time, verb, resource and user agent.

HTTPS mode (FakeKube(tls=(cert, key), token=...)): TLS with that certificate, and every request
must carry `Authorization: Bearer <token>` or gets the real server's 401 Unauthorized Status.
That is what a pod's in-cluster configuration speaks (KUBERNETES_SERVICE_HOST/PORT, the
service-account token and ca.crt under /var/run/secrets/kubernetes.io/serviceaccount), so a
test can run an agent exactly as a pod runs it (tests/e2e/test_image_pods.py).

Not implemented (nothing here needs it): real RBAC, server-side apply, finalizers and graceful
deletion, managedFields, status subresources, protobuf.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime
import http.server
import ipaddress
import itertools
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from lab import kubepatch

JSON = Any

SERVER_VERSION = {
    "major": "1", "minor": "34", "gitVersion": "v1.34.0-fakekube", "gitCommit": "fakekube",
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
    "compiler": "gc", "platform": "linux/amd64",
}
ALL_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SCALE_VERBS = ["get", "patch", "update"]
HISTORY_LIMIT = 20000  # events kept for watches from an old resourceVersion (then 410)
DEFAULT_WATCH_SECONDS = 1800  # the real server picks 30-60 min when the client gives none
JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    create_on_update: bool = False  # PUT of a missing object creates it (the kind's strategy)
    scalable: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The resource as messages name it: configmaps, leases.coordination.k8s.io."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    Kind("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "services", "Service", short_names=("svc",), create_on_update=True),
    Kind("", "v1", "endpoints", "Endpoints", short_names=("ep",), create_on_update=True),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Kind("", "v1", "pods", "Pod", short_names=("po",)),
    Kind("apps", "v1", "deployments", "Deployment", short_names=("deploy",), scalable=True),
    Kind("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), scalable=True),
    Kind("apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",)),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", create_on_update=True),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler",
         short_names=("hpa",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
         namespaced=False),
)
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")


class ApiError(Exception):
    """An answer with a Status body; raised anywhere in request handling."""

    def __init__(self, code: int, reason: str, message: str, *, details: JSON = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": str(self), "reason": self.reason,
                      "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed",
           409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
           429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
           504: "Timeout"}


def _details(kind: Kind, name: str) -> JSON:
    details: JSON = {"name": name, "kind": kind.plural}
    if kind.group:
        details["group"] = kind.group
    return details


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found',
                    details=_details(kind, name))


def conflict(kind: Kind, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.qualified} '
                    f'"{name}": the object has been modified; please apply your changes to the '
                    "latest version and try again", details=_details(kind, name))


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time(text: str) -> str:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"invalid MicroTime {text!r}") from exc
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    kind: Kind
    type: str  # ADDED / MODIFIED / DELETED
    obj: JSON
    old: JSON  # the object before (MODIFIED), for selector transitions


@dataclasses.dataclass
class Fault:
    status: int
    verb: str | None
    resource: str | None
    remaining: int | None  # None: until clear_faults()
    message: str


@dataclasses.dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    verb: str  # get list watch create update patch delete, or "discovery"
    resource: str  # plural, "configmaps" or "deployments/scale"; "" for discovery
    namespace: str
    name: str
    user_agent: str


@dataclasses.dataclass
class Target:
    """What a request path names."""

    kind: Kind
    namespace: str
    name: str
    subresource: str

    @property
    def resource(self) -> str:
        return f"{self.kind.plural}/{self.subresource}" if self.subresource else self.kind.plural


class Store:
    """Objects, the resourceVersion counter and the event history; every call under one lock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[tuple[str, str, str], JSON] = {}  # (plural.group, ns, name)
        self.rv = 0
        self.history: collections.deque[Event] = collections.deque(maxlen=HISTORY_LIMIT)
        self.oldest_kept = 1  # events with rv >= oldest_kept are in history
        self.stream_epoch = 0  # bumped by close_streams(): watches from older epochs end
        self._ips = (ipaddress.IPv4Address("10.96.0.0") + n for n in itertools.count(10))

    @staticmethod
    def key(kind: Kind, namespace: str, name: str) -> tuple[str, str, str]:
        return (kind.qualified, namespace, name)

    def get(self, kind: Kind, namespace: str, name: str) -> JSON:
        obj = self.objects.get(self.key(kind, namespace, name))
        if obj is None:
            raise not_found(kind, name)
        return obj

    def find(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        return self.objects.get(self.key(kind, namespace, name))

    def items(self, kind: Kind, namespace: str) -> list[JSON]:
        found = [o for (q, ns, _), o in self.objects.items()
                 if q == kind.qualified and (not namespace or ns == namespace)]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""),
                                            o["metadata"]["name"]))

    def commit(self, kind: Kind, event_type: str, obj: JSON, old: JSON = None) -> JSON:
        """Stores (or deletes) obj with the next resourceVersion and records the event."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self.key(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if len(self.history) == self.history.maxlen:
            self.oldest_kept = self.history[1].rv
        self.history.append(Event(self.rv, kind, event_type, obj, old))
        self.cond.notify_all()
        return copy.deepcopy(obj)

    def compact(self) -> None:
        self.history.clear()
        self.oldest_kept = self.rv + 1
        self.cond.notify_all()

    def next_cluster_ip(self) -> str:
        used = {o.get("spec", {}).get("clusterIP") for (q, _, _), o in self.objects.items()
                if q == "services"}
        while True:
            ip = str(next(self._ips))
            if ip not in used:
                return ip


class FakeKube:
    """The server. Use as a context manager, or start() / close()."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 bookmark_interval: float = 5.0, user: str = "system:serviceaccount:"
                 "gossip-agent:gossip-agent", tls: tuple[str, str] | None = None,
                 token: str | None = None) -> None:
        """tls: (certificate, key) files: serve HTTPS with them. token: the bearer token every
        request must present (401 otherwise); None accepts any caller, as before."""
        self.host, self.port = host, port
        self.token = token
        self.ssl_context: ssl.SSLContext | None = None
        if tls is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(*tls)
        self.bookmark_interval = bookmark_interval
        self.user = user  # named in 403 messages, as RBAC names the caller
        self.store = Store()
        self.kinds = {k.plural: k for k in KINDS}
        self.requests: collections.deque[Request] = collections.deque(maxlen=500_000)
        self._faults: list[Fault] = []
        self._running = threading.Event()
        self._running.set()  # not paused
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._connections: set[Any] = set()  # open client sockets, cut by stop()
        for name in INITIAL_NAMESPACES:
            self.create_object({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name}})

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> None:
        """Listens (again, on the same port after stop()); returns once connections work."""
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = _Server((self.host, self.port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd, self._closing = httpd, False
        self._thread = threading.Thread(target=httpd.serve_forever, name="fakekube.http",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops listening and ends every open stream: the API server went away."""
        self._closing = True
        self.resume()
        with self.store.cond:
            self.store.stream_epoch += 1
            self.store.cond.notify_all()
        with self.store.cond:
            connections, self._connections = self._connections, set()
        for connection in connections:  # kept-alive connections would go on being served
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    close = stop

    def write_kubeconfig(self, path: str, *, namespace: str = "default",
                         ca_file: str | None = None) -> str:
        """An ordinary kubeconfig pointing at this server; returns the path. In HTTPS mode
        pass the CA that signed the server's certificate as ca_file."""
        cluster: dict[str, str] = {"server": self.url}
        if ca_file is not None:
            cluster["certificate-authority"] = ca_file
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fakekube",
            "clusters": [{"name": "fakekube", "cluster": cluster}],
            "users": [{"name": "fakekube", "user": {"token": self.token or "fakekube-token"}}],
            "contexts": [{"name": "fakekube", "context": {
                "cluster": "fakekube", "user": "fakekube", "namespace": namespace}}],
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)  # JSON is YAML: every client reads it
        return path

    # -- hooks --------------------------------------------------------------------------------

    def fail(self, *, status: int, verb: str | None = None, resource: str | None = None,
             times: int | None = 1, message: str = "") -> None:
        """The next `times` requests matching verb/resource (None = any) answer `status`."""
        with self.store.cond:
            self._faults.append(Fault(status, verb, resource, times, message))

    def clear_faults(self) -> None:
        with self.store.cond:
            self._faults.clear()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close_streams(self) -> None:
        with self.store.cond:
            self.store.stream_epoch += 1
            self.store.cond.notify_all()

    def compact(self) -> None:
        with self.store.cond:
            self.store.compact()

    def request_count(self, *, since: float = 0.0, verb: str | None = None,
                      resource: str | None = None, user_agent: str | None = None) -> int:
        return sum(1 for r in list(self.requests) if r.at >= since
                   and (verb is None or r.verb == verb)
                   and (resource is None or r.resource == resource)
                   and (user_agent is None or user_agent in r.user_agent))

    # -- direct access for tests (same semantics as over HTTP) -------------------------------

    def get_object(self, plural: str, name: str, namespace: str = "default") -> JSON | None:
        kind = self.kinds[plural]
        with self.store.cond:
            obj = self.store.find(kind, namespace if kind.namespaced else "", name)
            return copy.deepcopy(obj)

    def create_object(self, obj: JSON) -> JSON:
        kind = self._kind_of(obj)
        namespace = obj.get("metadata", {}).get("namespace", "default") if kind.namespaced else ""
        with self.store.cond:
            return self._create(Target(kind, namespace, "", ""), obj, dry_run=False)

    def delete_object(self, plural: str, name: str, namespace: str = "default") -> None:
        kind = self.kinds[plural]
        with self.store.cond:
            self._delete(Target(kind, namespace if kind.namespaced else "", name, ""), None,
                         dry_run=False)

    def _kind_of(self, obj: JSON) -> Kind:
        for kind in KINDS:
            if kind.kind == obj.get("kind") and kind.api_version == obj.get("apiVersion"):
                return kind
        raise ApiError(400, "BadRequest", f"no kind {obj.get('kind')!r} is registered for "
                       f"version {obj.get('apiVersion')!r}")

    # -- request handling (called by _Handler) ------------------------------------------------

    def check_faults(self, verb: str, target: Target) -> None:
        with self.store.cond:
            for fault in self._faults:
                if fault.verb not in (None, verb) or fault.resource not in (None, target.resource):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                raise self._fault_error(fault, verb, target)

    def _fault_error(self, fault: Fault, verb: str, target: Target) -> ApiError:
        kind, name = target.kind, target.name
        if fault.status == 403:
            subject = f'{kind.qualified} "{name}"' if name else kind.qualified
            where = f' in the namespace "{target.namespace}"' if target.namespace else ""
            return ApiError(403, "Forbidden", f'{subject} is forbidden: User "{self.user}" '
                            f'cannot {verb} resource "{target.resource}" in API group '
                            f'"{kind.group}"{where}', details=_details(kind, name))
        if fault.status == 409:
            return conflict(kind, name)
        if fault.status == 500:
            return ApiError(500, "InternalError", "Internal error occurred: "
                            f"{fault.message or 'injected by fakekube'}")
        reason = REASONS.get(fault.status, "Unknown")
        return ApiError(fault.status, reason, fault.message or f"injected {fault.status}")

    def wait_running(self) -> None:
        while not self._running.wait(timeout=0.1):
            if self._closing:
                raise ConnectionAbortedError("fakekube is stopping")

    def resolve(self, path: str) -> Target | None:
        """Target of a resource path, or None when the path is not a resource."""
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        kind = self.kinds.get(rest[0])
        if kind is None or (kind.group, kind.version) != (group, version):
            return None
        if kind.namespaced is False and namespace:
            return None
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and not (subresource == "scale" and kind.scalable):
            return None
        return Target(kind, namespace, name, subresource)

    # -- verbs (caller holds store.cond) ------------------------------------------------------

    def _check_namespace(self, target: Target) -> None:
        if target.kind.namespaced and self.store.find(
                self.kinds["namespaces"], "", target.namespace) is None:
            raise ApiError(404, "NotFound", f'namespaces "{target.namespace}" not found',
                           details={"name": target.namespace, "kind": "namespaces"})

    def _validate(self, target: Target, obj: JSON, *, name: str) -> JSON:
        kind = target.kind
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body is not a Kubernetes object")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if obj.get("kind", kind.kind) != kind.kind or obj.get(
                "apiVersion", kind.api_version) != kind.api_version:
            raise ApiError(400, "BadRequest", f"the body is a {obj.get('kind')} "
                           f"{obj.get('apiVersion')}, not a {kind.kind} {kind.api_version}")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if name and meta.get("name") and meta["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object "
                           f"({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = meta.get("name") or name
        if not meta["name"]:
            raise ApiError(422, "Invalid", f'{kind.kind} "" is invalid: metadata.name: '
                           "Required value: name or generateName is required",
                           details={"kind": kind.kind, "causes": [{
                               "reason": "FieldValueRequired", "field": "metadata.name",
                               "message": "Required value: name or generateName is required"}]})
        ns = meta.get("namespace", target.namespace)
        if kind.namespaced and ns != target.namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")
        if kind.namespaced:
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        for field in ("labels", "annotations"):
            values = meta.get(field) or {}
            if not isinstance(values, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
                raise ApiError(422, "Invalid", f"metadata.{field}: values must be strings")
        return obj

    def _defaults(self, kind: Kind, obj: JSON, old: JSON) -> None:
        """What the API server's defaulting and the controllers would fill in."""
        meta = obj["metadata"]
        if kind.plural == "leases":  # the server re-encodes MicroTime: RFC3339, 6 digits, Z
            spec = obj.setdefault("spec", {})
            for field in ("acquireTime", "renewTime"):
                if spec.get(field):
                    spec[field] = _micro_time(spec[field])
        if kind.plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if old is not None and not spec.get("clusterIP"):
                spec["clusterIP"] = old.get("spec", {}).get("clusterIP", "")
            if not spec.get("clusterIP"):
                spec["clusterIP"] = self.store.next_cluster_ip()
            spec["clusterIPs"] = [spec["clusterIP"]]
        if kind.scalable:
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            replicas = spec["replicas"]
            obj["status"] = dict(obj.get("status") or {}, replicas=replicas,
                                 readyReplicas=replicas, availableReplicas=replicas)
        old_spec = old.get("spec") if old is not None else None
        generation = old["metadata"].get("generation", 1) if old is not None else 0
        if "spec" in obj or kind.scalable:
            meta["generation"] = generation + 1 if obj.get("spec") != old_spec else generation

    def _create(self, target: Target, body: JSON, *, dry_run: bool) -> JSON:
        self._check_namespace(target)
        obj = self._validate(target, body, name="")
        meta = obj["metadata"]
        if self.store.find(target.kind, target.namespace, meta["name"]) is not None:
            raise ApiError(409, "AlreadyExists", f'{target.kind.qualified} "{meta["name"]}" '
                           "already exists", details=_details(target.kind, meta["name"]))
        if meta.get("resourceVersion"):
            raise ApiError(400, "BadRequest", "resourceVersion should not be set on objects "
                           "to be created")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        self._defaults(target.kind, obj, None)
        if dry_run:
            obj["metadata"]["resourceVersion"] = str(self.store.rv)
            return obj
        return self.store.commit(target.kind, "ADDED", obj)

    def _update(self, target: Target, body: JSON, *, dry_run: bool) -> JSON:
        old = self.store.find(target.kind, target.namespace, target.name)
        if old is None:
            if not target.kind.create_on_update:
                raise not_found(target.kind, target.name)
            body = copy.deepcopy(body)
            body.get("metadata", {}).pop("resourceVersion", None)
            return self._create(target, body, dry_run=dry_run)
        obj = self._validate(target, body, name=target.name)
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(target.kind, target.name)
        return self._replace(target, old, obj, dry_run=dry_run)

    def _replace(self, target: Target, old: JSON, obj: JSON, *, dry_run: bool) -> JSON:
        """Writes obj over old, keeping what clients cannot change."""
        for field in ("uid", "creationTimestamp"):
            obj["metadata"][field] = old["metadata"][field]
        self._defaults(target.kind, obj, old)
        if dry_run:
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return obj
        return self.store.commit(target.kind, "MODIFIED", obj, old)

    def _patch(self, target: Target, body: JSON, content_type: str, *, dry_run: bool) -> JSON:
        old = self.store.get(target.kind, target.namespace, target.name)
        patched = apply_patch(old, body, content_type)
        obj = self._validate(target, patched, name=target.name)
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(target.kind, target.name)
        return self._replace(target, old, obj, dry_run=dry_run)

    def _delete(self, target: Target, options: JSON, *, dry_run: bool) -> JSON:
        old = self.store.get(target.kind, target.namespace, target.name)
        preconditions = (options or {}).get("preconditions") or {}
        for field in ("resourceVersion", "uid"):
            want = preconditions.get(field)
            if want and want != old["metadata"].get(field):
                raise ApiError(409, "Conflict", f"Operation cannot be fulfilled on "
                               f'{target.kind.qualified} "{target.name}": Precondition failed: '
                               f"{field}: {want}, {field}: {old['metadata'].get(field)}",
                               details=_details(target.kind, target.name))
        if not dry_run:
            self.store.commit(target.kind, "DELETED", old, old)
        details = dict(_details(target.kind, target.name), uid=old["metadata"]["uid"])
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details}

    # -- scale subresource --------------------------------------------------------------------

    @staticmethod
    def to_scale(obj: JSON) -> JSON:
        meta = obj["metadata"]
        labels = obj.get("spec", {}).get("selector", {}).get("matchLabels", {})
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": obj["spec"]["replicas"]},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
        }

    def _write_scale(self, target: Target, scale: JSON, *, dry_run: bool) -> JSON:
        old = self.store.get(target.kind, target.namespace, target.name)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(target.kind, target.name)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{target.name}" is invalid: '
                           "spec.replicas: Invalid value: must be greater than or equal to 0")
        obj = copy.deepcopy(old)
        obj["spec"]["replicas"] = replicas
        obj["metadata"].pop("resourceVersion")
        return self.to_scale(self._replace(target, old, obj, dry_run=dry_run))

    def scale(self, method: str, target: Target, body: JSON, content_type: str,
              *, dry_run: bool) -> JSON:
        current = self.to_scale(self.store.get(target.kind, target.namespace, target.name))
        if method == "GET":
            return current
        if method == "PATCH":
            body = apply_patch(current, body, content_type)
        return self._write_scale(target, body, dry_run=dry_run)

    # -- lists and watches --------------------------------------------------------------------

    def list_objects(self, target: Target, query: dict[str, str]) -> JSON:
        matches = self.matcher(query)
        with self.store.cond:
            items = [copy.deepcopy(o) for o in self.store.items(target.kind, target.namespace)
                     if matches(o)]
            rv = self.store.rv
        for item in items:  # list items carry no kind/apiVersion, as the real server's
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{target.kind.kind}List", "apiVersion": target.kind.api_version,
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    @staticmethod
    def matcher(query: dict[str, str]) -> Callable[[JSON], bool]:
        try:
            labels = kubepatch.parse_label_selector(query.get("labelSelector", ""))
            fields = kubepatch.parse_field_selector(query.get("fieldSelector", ""))
        except kubepatch.SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc

        def matches(obj: JSON) -> bool:
            have = obj.get("metadata", {}).get("labels") or {}
            return all(r(have) for r in labels) and all(f(obj) for f in fields)
        return matches

    def watch_events(self, target: Target, query: dict[str, str]) -> Iterator[JSON]:
        """The events of one watch, as JSON objects, until timeout, close or compaction.

        Not a generator itself: a bad query raises ApiError here, before the 200 goes out, and
        a good one returns at once, so the headers are sent before any event exists (a real API
        server answers a quiet watch with its headers at once, not with the first event)."""
        matches = self.matcher(query)
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        since = query.get("resourceVersion", "")
        with self.store.cond:
            epoch = self.store.stream_epoch
            if since in ("", "0"):
                cursor = self.store.rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in
                           self.store.items(target.kind, target.namespace) if matches(o)]
            else:
                cursor, initial = self._watch_start(since)
        return self._follow(target, matches=matches, initial=initial, cursor=cursor,
                            epoch=epoch, deadline=time.monotonic() + timeout,
                            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"))

    def _follow(self, target: Target, *, matches: Callable[[JSON], bool], initial: list[JSON],
                cursor: int, epoch: int, deadline: float, bookmarks: bool) -> Iterator[JSON]:
        yield from initial
        if any(e["type"] == "ERROR" for e in initial):
            return
        next_bookmark = time.monotonic() + self.bookmark_interval
        while True:
            with self.store.cond:
                events = self._events_after(cursor)
                wait = min(deadline, next_bookmark) - time.monotonic()
                if not events and self.store.stream_epoch == epoch and wait > 0:
                    self.store.cond.wait(timeout=min(wait, 0.5))
                    events = self._events_after(cursor)
                ended = self.store.stream_epoch != epoch or self._closing
                gone = cursor + 1 < self.store.oldest_kept
                current = self.store.rv
            for event in [] if gone else events:
                cursor = event.rv
                sent = self._visible(event, target, matches)
                if sent is not None:
                    yield sent
            if gone:  # compacted past this watch while it lagged behind
                yield {"type": "ERROR", "object": self._expired(cursor).status()}
                return
            if ended or time.monotonic() >= deadline:
                return
            if bookmarks and time.monotonic() >= next_bookmark:
                next_bookmark = time.monotonic() + self.bookmark_interval
                yield {"type": "BOOKMARK", "object": {
                    "kind": target.kind.kind, "apiVersion": target.kind.api_version,
                    "metadata": {"resourceVersion": str(max(cursor, current))}}}

    def _watch_start(self, since: str) -> tuple[int, list[JSON]]:
        if not since.isdigit():
            raise ApiError(400, "BadRequest", f'invalid resource version "{since}"')
        start = int(since)
        if start + 1 < self.store.oldest_kept:
            return start, [{"type": "ERROR", "object": self._expired(start).status()}]
        return start, []

    def _expired(self, start: int) -> ApiError:
        return ApiError(410, "Expired", f"too old resource version: {start} "
                        f"({self.store.oldest_kept - 1})")

    def _events_after(self, cursor: int) -> list[Event]:
        return [e for e in self.store.history if e.rv > cursor]

    @staticmethod
    def _visible(event: Event, target: Target, matches: Callable[[JSON], bool]) -> JSON | None:
        """The event as this watch sees it (selector transitions become ADDED / DELETED)."""
        if event.kind != target.kind:
            return None
        if target.namespace and event.obj["metadata"].get("namespace") != target.namespace:
            return None
        now, before = matches(event.obj), event.old is not None and matches(event.old)
        kind = event.type
        if kind == "MODIFIED" and now != before:
            kind = "ADDED" if now else "DELETED"
        elif not now and kind != "DELETED":
            return None
        elif kind == "DELETED" and not before:
            return None
        return {"type": kind, "object": copy.deepcopy(event.obj)}

    # -- discovery ----------------------------------------------------------------------------

    def discovery(self, path: str) -> JSON | None:
        groups: dict[str, list[Kind]] = {}
        for kind in KINDS:
            groups.setdefault(kind.api_version, []).append(kind)
        path = path.rstrip("/")
        if path == "/version":
            return SERVER_VERSION
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                self._group(gv) for gv in groups if "/" in gv]}
        if path == "/openapi/v3":
            return {"paths": {self._gv_path(gv): {"serverRelativeURL": f"/openapi/v3/"
                              f"{self._gv_path(gv)}"} for gv in groups}}
        if path.startswith("/openapi/v3/"):
            gv = path.removeprefix("/openapi/v3/").removeprefix("api/").removeprefix("apis/")
            return self._openapi(groups[gv]) if gv in groups else None
        if path == "/openapi/v2":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if gv in groups and (path.startswith("/apis/") or gv == "v1"):
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": [r for k in groups[gv] for r in self._resources(k)]}
        if path.startswith("/apis/") and gv in {g.split("/")[0] for g in groups}:
            return self._group(next(g for g in groups if g.startswith(gv + "/")))
        return None

    @staticmethod
    def _gv_path(group_version: str) -> str:
        return f"apis/{group_version}" if "/" in group_version else f"api/{group_version}"

    def _openapi(self, kinds: list[Kind]) -> JSON:
        """Just enough OpenAPI v3 for kubectl: each kind's PATCH operation names the
        fieldValidation parameter, so kubectl leaves validation to the server (which accepts
        any fields) instead of needing schemas; no schemas are served."""
        paths = {}
        for kind in kinds:
            prefix = "/" + self._gv_path(kind.api_version)
            scope = "/namespaces/{namespace}" if kind.namespaced else ""
            gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
            paths[f"{prefix}{scope}/{kind.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch",
                "parameters": [{"name": "fieldValidation", "in": "query",
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}}}
        return {"openapi": "3.0.0", "info": {"title": "fakekube", "version": "v1"},
                "paths": paths, "components": {"schemas": {}}}

    @staticmethod
    def _group(group_version: str) -> JSON:
        name, version = group_version.split("/")
        entry = {"groupVersion": group_version, "version": version}
        return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [entry],
                "preferredVersion": entry}

    @staticmethod
    def _resources(kind: Kind) -> list[JSON]:
        main = {"name": kind.plural, "singularName": kind.kind.lower(),
                "namespaced": kind.namespaced, "kind": kind.kind, "verbs": ALL_VERBS,
                "shortNames": list(kind.short_names)}
        if not kind.scalable:
            return [main]
        return [main, {"name": f"{kind.plural}/scale", "singularName": "",
                       "namespaced": True, "group": "autoscaling", "version": "v1",
                       "kind": "Scale", "verbs": SCALE_VERBS}]


PATCHERS: dict[str, Callable[[JSON, JSON], JSON]] = {
    "application/strategic-merge-patch+json": kubepatch.strategic_merge_patch,
    "application/merge-patch+json": kubepatch.merge_patch,
    "application/json-patch+json": kubepatch.json_patch,
}


def apply_patch(current: JSON, patch: JSON, content_type: str) -> JSON:
    apply = PATCHERS.get(content_type)
    if apply is None:
        raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                       f"format - accepted media types include: {', '.join(PATCHERS)}")
    try:
        return apply(current, patch)
    except kubepatch.PatchError as exc:
        raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from exc


class _Server(http.server.ThreadingHTTPServer):
    """A client that drops a TLS handshake or a connection is no server error to print."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP/1.1 connection; every answer is JSON."""

    fake: FakeKube
    protocol_version = "HTTP/1.1"
    server_version = "fakekube"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK of the headers (40 ms on Linux) on every answer, a latency no real API server
    # adds (found by the wake-up benchmark, issue 8).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        if self.fake.ssl_context is not None:  # the handshake runs on this connection's thread
            wrapped = self.fake.ssl_context.wrap_socket(self.request, server_side=True,
                                                        do_handshake_on_connect=False)
            try:
                wrapped.do_handshake()
            except OSError:
                wrapped.close()  # a client that gave up mid-handshake: nothing to serve
                raise
            self.request = wrapped
        super().setup()
        with self.fake.store.cond:
            self.fake._connections.add(self.connection)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()  # a client that gave up (timeout, stop()) is no server error

    def finish(self) -> None:
        with self.fake.store.cond:
            self.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()
        if isinstance(self.request, ssl.SSLSocket):
            # socketserver closes the plain socket it accepted, which the TLS wrapper took over.
            self.request.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a test's output is for the test

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.fake
        try:
            fake.wait_running()
        except ConnectionAbortedError:
            self.close_connection = True
            return
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        try:
            self._authenticate()
            body = self._read_body()
            answer = self._route(method, parsed.path, query, body)
        except ApiError as exc:
            self._send(exc.code, exc.status())
            return
        if answer is not None:
            self._send(*answer)

    def _authenticate(self) -> None:
        """HTTPS mode: the bearer token or the real server's 401 (which names nobody)."""
        token = self.fake.token
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        # The scheme is case-insensitive, as the real server's bearer-token authenticator reads
        # it: the Python client's in-cluster configuration sends "bearer <token>".
        if token is not None and (scheme.lower() != "bearer" or presented.strip() != token):
            self._read_body()  # keep the connection's framing intact
            self._record("unauthorized", None)
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _read_body(self) -> JSON:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc

    def _record(self, verb: str, target: Target | None) -> None:
        self.fake.requests.append(Request(
            time.monotonic(), verb, target.resource if target else "",
            target.namespace if target else "", target.name if target else "",
            self.headers.get("User-Agent", "")))

    def _route(self, method: str, path: str, query: dict[str, str],
               body: JSON) -> tuple[int, JSON] | None:
        fake = self.fake
        target = fake.resolve(path)
        if target is None:
            self._record("discovery", None)
            found = fake.discovery(path) if method == "GET" else None
            if found is None:
                raise ApiError(404, "NotFound", "the server could not find the requested "
                               "resource")
            return 200, found
        verb = _verb(method, target, query)
        self._record(verb, target)
        fake.check_faults(verb, target)
        if verb == "watch":
            self._stream(target, query)
            return None
        if verb == "list":
            return 200, fake.list_objects(target, query)
        dry_run = "dryRun" in query
        with fake.store.cond:
            if target.subresource:
                return 200, fake.scale(method, target, body, self._content_type(),
                                       dry_run=dry_run)
            return self._write(verb, target, body, dry_run=dry_run)

    def _write(self, verb: str, target: Target, body: JSON, *,
               dry_run: bool) -> tuple[int, JSON]:
        fake = self.fake
        if verb == "get":
            return 200, copy.deepcopy(fake.store.get(target.kind, target.namespace, target.name))
        if verb == "create":
            return 201, fake._create(target, body, dry_run=dry_run)
        if verb == "update":
            existed = fake.store.find(target.kind, target.namespace, target.name) is not None
            return (200 if existed else 201), fake._update(target, body, dry_run=dry_run)
        if verb == "patch":
            return 200, fake._patch(target, body, self._content_type(), dry_run=dry_run)
        return 200, fake._delete(target, body, dry_run=dry_run)

    def _content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def _send(self, code: int, body: JSON) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, target: Target, query: dict[str, str]) -> None:
        events = self.fake.watch_events(target, query)  # validates before the 200 goes out
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the client went away: its watch is over


def _verb(method: str, target: Target, query: dict[str, str]) -> str:
    if method == "GET":
        if target.name:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method == "POST" and target.name or method != "POST" and not target.name:
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the "
                       f"requested resource ({method} {target.resource})")
    return verbs[method]


def main() -> None:
    """Runs a fake API server for local experiments: PYTHONPATH=tools python -m lab.fakekube."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", default="fakekube.kubeconfig")
    args = parser.parse_args()
    with FakeKube(port=args.port) as kube:
        kube.write_kubeconfig(args.kubeconfig)
        print(f"fake Kubernetes API at {kube.url}; KUBECONFIG={args.kubeconfig}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
