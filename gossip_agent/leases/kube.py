"""The Kubernetes lease backends: COORDINATION_BACKEND=configmap and =lease, one implementation.

Both hold client-go's leader-election record (leases/kuberecord.py) in one Kubernetes object:
- configmap: JSON in the annotation control-plane.alpha.kubernetes.io/leader on the ConfigMap
  COORDINATION_CONFIGMAP (the seed's ebpf-service-list), as client-go's ConfigMap lock wrote
  it; the ConfigMap's other annotations and data are kept (we write back what we read).
- lease: a coordination.k8s.io/v1 Lease COORDINATION_LEASE_NAME (holderIdentity,
  leaseDurationSeconds, acquireTime/renewTime as MicroTime, leaseTransitions), what current
  clusters and their tools expect (client-go removed ConfigMap locks).
The two differ only in how the record sits in the object (_ConfigMapLock / _LeaseLock); the
election (KubeLease) is written once.

Election, as client-go's leaderelection does it:
- Every write is an update carrying the resourceVersion that was read: a 409 means someone else
  wrote first; we re-read and step down only if the holder changed, never overwrite blindly.
- Expiry is judged on this agent's monotonic clock from when it last saw the record's bytes
  change (never by comparing wall clocks): a record is free once observed + its
  leaseDurationSeconds has passed without a change, or when its holder is empty (released).
- The leader renews every LEASE_RENEW_INTERVAL; a renewal that fails (500, timeout, API down)
  keeps it leading only until LEASE_RENEW_DEADLINE after the start of its last successful
  renewal, then it steps down. LEASE_DURATION > LEASE_RENEW_DEADLINE leaves the margin that
  makes a follower's takeover (observed + duration) come after the old leader stopped.
- term = leaderTransitions, raised on every change of holder (kuberecord says why a new
  holder may raise it further).

Followers do not poll while gossip shows the leader renewing (core.beats): each renewal is
recorded as a beat that digests spread; while a newer beat arrived within LEASE_DURATION minus
one retry interval, try_acquire answers None without calling the API. When beats stop, the
follower reads the record, and if it is the record the last beat described, it counts as
observed when that beat was heard, so failover takes about LEASE_DURATION after the leader's
last renewal, plus one retry, not LEASE_DURATION after the first poll. The leader hands each
renewal's beat to one peer at once (leader.Leadership._spread_beat, because spreads_beats is
set), so even a leader killed right after renewing has told someone.

The official client blocks, so each call runs in a worker thread (asyncio.to_thread) with a
request timeout. Its exceptions become errors.LeaseUnavailable here, with a message naming the
verb and the resource (a 403 tells which RBAC rule is missing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3.exceptions

from gossip_agent import errors
from gossip_agent.core import beats as beats_mod
from gossip_agent.core import terms
from gossip_agent.leases import base, kuberecord
from gossip_agent.system import kubeclient

log = logging.getLogger("gossip_agent.lease")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
T = TypeVar("T")
READ_TIMEOUT = 2.0  # seconds, for read() (operators' GetLeader), not for the election


@dataclasses.dataclass(frozen=True)
class KubeTiming:
    """client-go's three durations (LeaseDuration, RenewDeadline, RetryPeriod) plus our renew
    cadence; config.py checks duration > renew_deadline > 1.2 x retry."""

    duration: int  # seconds, written to the record
    renew_deadline: float
    retry_interval: float
    renew_interval: float


@dataclasses.dataclass(frozen=True)
class Stored:
    """One read of the lock object: its record (None: the object has none yet), the record's
    bytes as stored (their change is what 'observed' means), and the object to write back."""

    record: kuberecord.ElectionRecord | None
    raw: str
    obj: Any


class _Lock(Protocol):
    """Where the record sits in one kind of object."""

    resource: str  # for messages: configmaps, leases.coordination.k8s.io

    def read(self, *, timeout: float) -> Stored | None: ...

    def create(self, record: kuberecord.ElectionRecord, *, timeout: float) -> Stored: ...

    def write(self, stored: Stored, record: kuberecord.ElectionRecord, *,
              timeout: float) -> Stored: ...


def _unless_missing(read: Callable[[], Any]) -> Any:
    """read(), or None when the object does not exist (404)."""
    try:
        return read()
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


class _ConfigMapLock:
    resource = "configmaps"

    def __init__(self, api: k8s.ApiClient, *, namespace: str, name: str) -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace, self.name = namespace, name

    def _stored(self, obj: Any) -> Stored:
        raw = (obj.metadata.annotations or {}).get(kuberecord.ANNOTATION, "")
        if not raw:
            return Stored(None, "", obj)
        try:
            return Stored(kuberecord.decode(raw), raw, obj)
        except ValueError as exc:
            raise errors.LeaseUnavailable(
                f"annotation {kuberecord.ANNOTATION} on configmap {self.namespace}/{self.name} "
                f"is not a leader-election record ({exc}); delete the annotation to reset it"
            ) from exc

    def read(self, *, timeout: float) -> Stored | None:
        obj = _unless_missing(lambda: self.core.read_namespaced_config_map(
            self.name, self.namespace, _request_timeout=timeout))
        return None if obj is None else self._stored(obj)

    def create(self, record: kuberecord.ElectionRecord, *, timeout: float) -> Stored:
        body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(
            name=self.name, namespace=self.namespace,
            annotations={kuberecord.ANNOTATION: kuberecord.encode(record)}))
        return self._stored(self.core.create_namespaced_config_map(
            self.namespace, body, _request_timeout=timeout))

    def write(self, stored: Stored, record: kuberecord.ElectionRecord, *,
              timeout: float) -> Stored:
        obj = stored.obj  # as read: resourceVersion makes this a compare-and-swap
        obj.metadata.annotations = dict(obj.metadata.annotations or {},
                                        **{kuberecord.ANNOTATION: kuberecord.encode(record)})
        return self._stored(self.core.replace_namespaced_config_map(
            self.name, self.namespace, obj, _request_timeout=timeout))


class _LeaseLock:
    resource = "leases.coordination.k8s.io"

    def __init__(self, api: k8s.ApiClient, *, namespace: str, name: str) -> None:
        self.coordination = k8s.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name

    @staticmethod
    def _stored(obj: Any) -> Stored:
        spec = obj.spec
        if spec is None or (spec.holder_identity is None and spec.lease_transitions is None):
            return Stored(None, "", obj)
        record = kuberecord.ElectionRecord(
            spec.holder_identity or "", spec.lease_duration_seconds or 0,
            kuberecord.parse_time(spec.acquire_time), kuberecord.parse_time(spec.renew_time),
            spec.lease_transitions or 0)
        raw = json.dumps([record.holder, record.duration_seconds,
                          kuberecord.format_micro_time(record.acquire_time),
                          kuberecord.format_micro_time(record.renew_time), record.transitions])
        return Stored(record, raw, obj)

    @staticmethod
    def _spec(record: kuberecord.ElectionRecord) -> Any:
        return k8s.V1LeaseSpec(
            holder_identity=record.holder, lease_duration_seconds=record.duration_seconds,
            acquire_time=record.acquire_time, renew_time=record.renew_time,
            lease_transitions=record.transitions)

    def read(self, *, timeout: float) -> Stored | None:
        obj = _unless_missing(lambda: self.coordination.read_namespaced_lease(
            self.name, self.namespace, _request_timeout=timeout))
        return None if obj is None else self._stored(obj)

    def create(self, record: kuberecord.ElectionRecord, *, timeout: float) -> Stored:
        body = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                           spec=self._spec(record))
        return self._stored(self.coordination.create_namespaced_lease(
            self.namespace, body, _request_timeout=timeout))

    def write(self, stored: Stored, record: kuberecord.ElectionRecord, *,
              timeout: float) -> Stored:
        obj = stored.obj
        obj.spec = self._spec(record)
        return self._stored(self.coordination.replace_namespaced_lease(
            self.name, self.namespace, obj, _request_timeout=timeout))


def default_namespace(configured: str) -> str:
    """COORDINATION_NAMESPACE, else the pod's own namespace (service account file), else the
    kubeconfig context's namespace, else "default"."""
    if configured:
        return configured
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            found = handle.read().strip()
        if found:
            return found
    except OSError:
        pass
    try:
        _, context = k8s_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str(context.get("context", {}).get("namespace") or "default")
    except (k8s_config.ConfigException, OSError, TypeError, KeyError):
        return "default"


def api_client(*, node: str) -> k8s.ApiClient:
    """In a pod: the service account (in-cluster config); elsewhere: KUBECONFIG, as kubectl."""
    configuration = kubeclient.load_configuration(unavailable=errors.LeaseUnavailable)
    # No retries inside urllib3: the election loop retries on its own clock, and a renewal
    # must fail fast enough to be judged against LEASE_RENEW_DEADLINE.
    configuration.retries = 0
    api = k8s.ApiClient(configuration)
    api.user_agent = f"gossip-agent/{node}"  # the API server's audit log shows who asked
    return api


def describe_failure(exc: Exception, *, verb: str, resource: str, where: str) -> str:
    """One sentence naming what failed; for 403 the RBAC rule that is missing."""
    if isinstance(exc, k8s.ApiException):
        reason = exc.reason or ""
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = ""
        detail = f"{exc.status} {reason}" + (f": {message}" if message else "")
        if exc.status == 403:
            return (f"the API server forbids {verb} on {resource} {where} ({detail}); grant "
                    f"the agent's ServiceAccount '{verb}' on {resource} (RBAC)")
        return f"{verb} {resource} {where} failed: {detail}"
    return f"{verb} {resource} {where}: Kubernetes API unreachable ({exc})"


class KubeLease:
    """leases.base.Lease over a ConfigMap or a Lease object."""

    note = ""
    spreads_beats = True  # leader.Leadership._spread_beat hands each renewal to a peer

    def __init__(self, *, kind: str, api: k8s.ApiClient, namespace: str, name: str, node: str,
                 timing: KubeTiming, beats: beats_mod.BeatBoard,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
                     datetime.UTC), sink: ConfigMapSink | None = None) -> None:
        self.backend = kind
        self.holder = base.holder_identity(node)
        self.timing = timing
        self.beats = beats
        self.api = api
        self.clock = clock
        self.wall = wall  # for the record's times, which are for people: never judged
        self.sink = sink  # the ConfigMap mirror (gossip.mirror.Sink), delegated to below
        lock_class = _ConfigMapLock if kind == "configmap" else _LeaseLock
        self.lock: _Lock = lock_class(api, namespace=namespace, name=name)
        self.namespace = namespace
        self.where = f'"{name}" in namespace "{namespace}"'
        self._observed_raw: str | None = None
        self._observed_at = 0.0
        self._held: Stored | None = None  # what this agent last wrote while holding
        self._renewed_at = 0.0  # start of the last successful write while holding
        self._seq = 0
        self.api_calls = 0  # every request this lease sent (benchmarks, tests)

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, verb: str, fn: Callable[[float], T], *, timeout: float) -> T:
        """Runs one blocking client call in a thread; client errors other than the ones the
        caller handles (404 on read, 409 on write) become LeaseUnavailable."""
        self.api_calls += 1
        try:
            return await asyncio.to_thread(fn, max(0.05, timeout))
        except k8s.ApiException as exc:
            if exc.status in (404, 409) and verb != "get":
                raise
            raise errors.LeaseUnavailable(describe_failure(
                exc, verb=verb, resource=self.lock.resource, where=self.where)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.LeaseUnavailable(describe_failure(
                exc, verb=verb, resource=self.lock.resource, where=self.where)) from exc

    def _new_record(self, old: kuberecord.ElectionRecord | None, *, min_term: int,
                    wall: datetime.datetime) -> kuberecord.ElectionRecord:
        """The record this agent writes to take the lease: a new term even when the record
        still names this agent (it stepped down meanwhile, e.g. past its renew deadline)."""
        backend_term = (old.transitions if old is not None else 0) + 1
        term = terms.next_term(backend_term=backend_term, max_seen=min_term - 1)
        return kuberecord.ElectionRecord(self.holder, self.timing.duration, wall, wall, term)

    def _beat(self, stored: Stored) -> None:
        self._seq += 1
        record = stored.record
        assert record is not None
        self.beats.offer(beats_mod.Beat(record.holder, record.transitions, self._seq,
                                        kuberecord.fingerprint(stored.raw)), now=self.clock())

    def _observe(self, stored: Stored) -> float:
        """When this agent saw these record bytes first (client-go's observedTime)."""
        if stored.raw != self._observed_raw:
            record = stored.record
            heard = None
            if record is not None:
                heard = self.beats.first_heard(holder=record.holder,
                                               stamp=kuberecord.fingerprint(stored.raw))
            self._observed_raw = stored.raw
            self._observed_at = heard if heard is not None else self.clock()
        return self._observed_at

    # -- the Lease protocol -------------------------------------------------------------------

    async def try_acquire(self, *, min_term: int) -> base.Grant | None:
        now = self.clock()
        window = self.timing.duration - self.timing.retry_interval
        if self.beats.quiet(holder=self.holder, window=window, now=now):
            return None  # gossip shows the leader renewing: no need to ask the API
        timeout = self.timing.retry_interval + self.timing.renew_deadline
        stored = await self._call("get", lambda t: self.lock.read(timeout=t), timeout=timeout)
        wall = self.wall()
        if stored is None:
            return await self._create(min_term=min_term, wall=wall, timeout=timeout)
        record = stored.record
        if record is not None and record.holder and record.holder != self.holder:
            observed = self._observe(stored)
            if self.clock() < observed + record.duration_seconds:
                return None  # held, and not expired as far as this agent has seen
            log.info("lease %s: holder %s has not renewed for %ss; taking over", self.where,
                     record.holder, record.duration_seconds)
        new = self._new_record(record, min_term=min_term, wall=wall)
        return await self._write_acquired(stored, new, timeout=timeout)

    async def _create(self, *, min_term: int, wall: datetime.datetime,
                      timeout: float) -> base.Grant | None:
        record = self._new_record(None, min_term=min_term, wall=wall)
        started = self.clock()
        try:
            stored = await self._call("create", lambda t: self.lock.create(record, timeout=t),
                                      timeout=timeout)
        except k8s.ApiException as exc:
            if exc.status == 409:  # AlreadyExists: someone else created it first
                return None
            raise errors.LeaseUnavailable(describe_failure(
                exc, verb="create", resource=self.lock.resource, where=self.where)) from exc
        return self._took(stored, started)

    async def _write_acquired(self, stored: Stored, record: kuberecord.ElectionRecord, *,
                              timeout: float) -> base.Grant | None:
        started = self.clock()
        try:
            written = await self._call("update", lambda t: self.lock.write(
                stored, record, timeout=t), timeout=timeout)
        except k8s.ApiException as exc:  # 409: another candidate wrote first; 404: deleted
            log.info("lease %s: lost the race to acquire (%s)", self.where, exc.status)
            self._observed_raw = None
            return None
        return self._took(written, started)

    def _took(self, stored: Stored, started: float) -> base.Grant:
        assert stored.record is not None
        self._held, self._renewed_at = stored, started
        self._observed_raw = None
        self._beat(stored)
        return base.Grant(self.holder, stored.record.transitions)

    async def renew(self) -> bool:
        held = self._held
        if held is None:
            return False
        started = self.clock()
        left = self._renewed_at + self.timing.renew_deadline - started
        if left <= 0:
            log.warning("lease %s: no successful renewal within LEASE_RENEW_DEADLINE=%gs",
                        self.where, self.timing.renew_deadline)
            return self._lost()
        try:
            written = await self._update_held(held, lambda old: dataclasses.replace(
                old, renew_time=self.wall()), timeout=left)
        except errors.LeaseUnavailable as exc:
            # client-go keeps trying until the renew deadline: one failed call is no loss.
            log.warning("lease %s: renewal failed, %.1fs left before stepping down: %s",
                        self.where, left - (self.clock() - started), exc)
            return self.clock() < self._renewed_at + self.timing.renew_deadline
        except errors.LeaseLost as exc:
            log.warning("%s", exc)
            return self._lost()
        self._held, self._renewed_at = written, started
        self._beat(written)
        return True

    # -- gossip.mirror.Sink: the view in the ConfigMap (ConfigMapSink) ---------------------------

    async def mirror_snapshot(self, *, term: int, seq: int, document: str) -> bool:
        return self.sink is not None and await self.sink.mirror_snapshot(
            term=term, seq=seq, document=document)

    async def heartbeat(self, *, term: int, seq: int, leader: str, period: float) -> None:
        return None  # see ConfigMapSink.heartbeat

    async def read_mirror(self) -> str | None:
        return await self.sink.read_mirror() if self.sink is not None else None

    def proven(self) -> bool:
        """Held, and the last successful renewal started less than the renew deadline ago (a
        leader frozen by SIGSTOP must not publish before its next renew() steps it down)."""
        return self._held is not None and (
            self.clock() < self._renewed_at + self.timing.renew_deadline)

    def _lost(self) -> bool:
        self._held = None
        return False

    async def _update_held(self, held: Stored, change: Callable[[
            kuberecord.ElectionRecord], kuberecord.ElectionRecord], *, timeout: float) -> Stored:
        """Writes change(record) over what this agent holds; on 409 re-reads and retries once
        if this agent is still the holder (someone edited other fields), else LeaseLost."""
        deadline = self.clock() + timeout
        stored = held
        for _ in range(2):
            try:
                return await self._write_changed(stored, change, timeout=deadline - self.clock())
            except k8s.ApiException as exc:
                if exc.status == 404:
                    raise errors.LeaseLost(f"lease {self.where} was deleted") from exc
            fresh = await self._call("get", lambda t: self.lock.read(timeout=t),
                                     timeout=deadline - self.clock())
            if fresh is None or fresh.record is None or fresh.record.holder != self.holder:
                holder = fresh.record.holder if fresh and fresh.record else "nobody"
                raise errors.LeaseLost(f"lease {self.where} lost to {holder or 'nobody'}")
            stored = fresh
        raise errors.LeaseUnavailable(f"lease {self.where} kept changing under this agent")

    async def _write_changed(self, stored: Stored, change: Callable[[
            kuberecord.ElectionRecord], kuberecord.ElectionRecord], *, timeout: float) -> Stored:
        assert stored.record is not None
        record = change(stored.record)
        return await self._call("update", lambda t: self.lock.write(stored, record, timeout=t),
                                timeout=timeout)

    async def bump(self, *, min_term: int) -> int:
        held = self._held
        if held is None:
            raise errors.LeaseLost(f"lease {self.where} is not held by this agent")
        timeout = max(0.05, self._renewed_at + self.timing.renew_deadline - self.clock())
        written = await self._update_held(held, lambda old: dataclasses.replace(
            old, transitions=max(old.transitions + 1, min_term),
            renew_time=self.wall()), timeout=timeout)
        self._held, self._renewed_at = written, self.clock()
        self._beat(written)
        assert written.record is not None
        return written.record.transitions

    async def release(self) -> None:
        """client-go's release: empty holder, duration 1, transitions kept."""
        held, self._held = self._held, None
        if held is None:
            return
        now = self.wall()
        try:
            await self._update_held(held, lambda old: kuberecord.ElectionRecord(
                "", 1, now, now, old.transitions), timeout=self.timing.renew_deadline)
        except errors.LeaseError as exc:
            log.warning("lease %s: release failed (followers take over after expiry): %s",
                        self.where, exc)

    async def read(self) -> base.LeaseRecord | None:
        # GetLeader calls this: answer fast when the API is slow (it then shows gossip's view).
        stored = await self._call("get", lambda t: self.lock.read(timeout=t),
                                  timeout=min(self.timing.renew_deadline, READ_TIMEOUT))
        if stored is None or stored.record is None:
            return None
        record = stored.record
        acquired = record.acquire_time.timestamp() if record.acquire_time else 0.0
        return base.LeaseRecord(record.holder, record.transitions, acquired)

    async def close(self) -> None:
        await self.release()
        await asyncio.to_thread(self.api.close)


class ConfigMapSink:
    """gossip.mirror's Sink in COORDINATION_CONFIGMAP's data, so the seed's kubectl commands
    show the state: data["service-list"] is JSON {"10.96.0.10": 3, ...} (the seed's key), beside
    data["version"] ("term.seq"), data["leader"] (node) and data["snapshot"] (gossip.mirror's
    document, hash-checked, for a new node's warm start).

    Written only by the leader (gossip.mirror.Mirror), never with a version at or below the
    stored one (a read, then an update with that resourceVersion: a 409 means someone wrote
    meanwhile and the next round tries again), and at most once per
    COORDINATION_MIRROR_INTERVAL (refused sooner; the Mirror retries on its next round). The
    leader record in the annotation is never touched. heartbeat() writes nothing: per-node
    heartbeats would put every node on the API server at rest, which the beats in gossip
    exist to avoid; GetState on each node shows the same.
    """

    def __init__(self, *, api: k8s.ApiClient, namespace: str, name: str, interval: float,
                 timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.interval, self.timeout, self.clock = interval, timeout, clock
        self.where = f'"{name}" in namespace "{namespace}"'
        self._written_at: float | None = None

    @staticmethod
    def data_of(document: str) -> dict[str, str]:
        parsed = json.loads(document)
        services = {s["ip"]: s["replicas"] for s in parsed["services"]}
        return {"service-list": json.dumps(services, separators=(",", ":")),
                "version": f"{parsed['term']}.{parsed['seq']}", "leader": parsed["leader"],
                "snapshot": document}

    async def mirror_snapshot(self, *, term: int, seq: int, document: str) -> bool:
        now = self.clock()
        if self._written_at is not None and now - self._written_at < self.interval:
            return False
        written = await self._call("update", lambda: self._write((term, seq), document))
        if written:
            self._written_at = now
        return written

    async def heartbeat(self, *, term: int, seq: int, leader: str, period: float) -> None:
        return None

    async def read_mirror(self) -> str | None:
        obj = await self._call("get", self._read)
        return ((obj.data or {}).get("snapshot") if obj is not None else None) or None

    def _read(self) -> Any:
        return _unless_missing(lambda: self.core.read_namespaced_config_map(
            self.name, self.namespace, _request_timeout=self.timeout))

    def _write(self, version: tuple[int, int], document: str) -> bool:
        obj = self._read()
        data = self.data_of(document)
        if obj is None:
            body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(
                name=self.name, namespace=self.namespace), data=data)
            self.core.create_namespaced_config_map(self.namespace, body,
                                                   _request_timeout=self.timeout)
            return True
        if _stored_version(obj.data or {}) >= version:
            return False  # never go back, even behind a slower leader's write
        obj.data = dict(obj.data or {}, **data)
        try:
            self.core.replace_namespaced_config_map(self.name, self.namespace, obj,
                                                    _request_timeout=self.timeout)
        except k8s.ApiException as exc:
            if exc.status in (404, 409):  # deleted or written meanwhile: next round
                return False
            raise
        return True

    async def _call(self, verb: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.LeaseUnavailable(describe_failure(
                exc, verb=verb, resource="configmaps", where=self.where)) from exc


def _stored_version(data: dict[str, str]) -> tuple[int, int]:
    try:
        term, _, seq = data.get("version", "").partition(".")
        return int(term), int(seq)
    except ValueError:
        return (0, 0)  # absent or edited by hand: any real version replaces it


def open_lease(*, kind: str, namespace: str, name: str, node: str, timing: KubeTiming,
               beats: beats_mod.BeatBoard, configmap: str, mirror_interval: float) -> KubeLease:
    api = api_client(node=node)
    namespace = default_namespace(namespace)
    sink = ConfigMapSink(api=api, namespace=namespace, name=configmap,
                         interval=mirror_interval, timeout=timing.renew_deadline)
    return KubeLease(kind=kind, api=api, namespace=namespace, name=name, node=node,
                     timing=timing, beats=beats, sink=sink)
