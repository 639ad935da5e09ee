"""SOURCE=kubernetes: opted-in Services and their EndpointSlices, watched by the leader only.

What counts and how is core.services (pure); this module is the I/O around it:

- One reflector per (kind, scope): kind is services or endpointslices, scope is a namespace from
  SOURCE_NAMESPACES or "" for all namespaces. Each lists (paged), replaces its scope in the
  Inventory, then watches from the list's resourceVersion, resuming from the last version seen
  (bookmarks included) each time the server ends the watch (SOURCE_WATCH_TIMEOUT).
- 410 Gone (the version is older than the server's history, on the watch or on a list page):
  relist at once; the relist replaces the scope, so nothing is lost or counted twice.
- Any other failure (unreachable, 5xx, 403 from RBAC): one log line naming the verb and the
  resource, then retry after an exponential backoff (SOURCE_BACKOFF_BASE..SOURCE_BACKOFF_CAP).
  The last published table stays in force meanwhile.
- Bursts: reflectors only mark the inventory dirty; one publish loop turns the changes into at
  most one table per COALESCE_WINDOW (core.coalesce), and only after every reflector has listed
  once, so a half-listed cluster is never published as "scaled to zero".
- Only while this agent leads (sources.base.LeaderOnly): at rest the followers make no API calls.

The official client's calls block, so they run on this source's own threads (never the event
loop, never the default executor that other modules share). Objects stay plain JSON dicts
(`_preload_content=False`): the source reads a handful of fields and the client's strict models
would reject or slow down nothing we need. Only this module (and the Kubernetes lease backends)
import `kubernetes`; its exceptions become errors.SourceUnavailable here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3

from gossip_agent import errors
from gossip_agent.core import coalesce, peers, services, snapshots
from gossip_agent.sources import base
from gossip_agent.system import kubeclient

log = logging.getLogger("gossip_agent.sources.kubernetes")

LIST_PAGE = 500  # objects per list page: bounded memory per response on large clusters
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server
LIST_READ_TIMEOUT = 60.0  # seconds one list page may take
WATCH_READ_MARGIN = 30.0  # a watch read may be silent this much longer than its timeoutSeconds
ABORT_WAIT = 1.0  # seconds a stopping reflector waits for its watch thread to return


@dataclasses.dataclass(frozen=True)
class Kind:
    """One watched resource: its REST path pieces and the Inventory's methods for it."""

    resource: str  # as RBAC names it
    group_version: str  # "v1" (core) or "group/version"
    api_class: str  # the client's API class
    method: str  # list_namespaced_<method>, list_<method>_for_all_namespaces

    def describe(self, scope: str) -> str:
        group = self.group_version.rpartition("/")[0]
        resource = f"{self.resource}.{group}" if group else self.resource
        return f"{resource} in namespace {scope}" if scope else f"{resource} in all namespaces"


SERVICES = Kind("services", "v1", "CoreV1Api", "service")
ENDPOINT_SLICES = Kind("endpointslices", "discovery.k8s.io/v1", "DiscoveryV1Api", "endpoint_slice")


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; relist from scratch."""


def new_api_client() -> kubernetes.client.ApiClient:
    """In a pod: the service account (in-cluster config); elsewhere: KUBECONFIG or ~/.kube/config,
    exactly as kubectl finds its cluster."""
    return kubernetes.client.ApiClient(
        kubeclient.load_configuration(unavailable=errors.SourceUnavailable))


class ListWatch:
    """The blocking HTTP side of one reflector; run on a worker thread, aborted from the loop."""

    def __init__(self, *, api: kubernetes.client.ApiClient, kind: Kind, scope: str) -> None:
        self.api = api
        self.kind = kind
        self.scope = scope
        self._lock = threading.Lock()
        self._response: urllib3.HTTPResponse | None = None
        self.aborted = False

    def list(self) -> tuple[list[dict[str, Any]], str]:
        """Every object in scope and the list's resourceVersion, page by page."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                query["_continue"] = token
            page = json.loads(self._call("list", query, (CONNECT_TIMEOUT, LIST_READ_TIMEOUT)).data)
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or ""
            if not token:
                return items, str(metadata.get("resourceVersion") or "")

    def watch(self, *, version: str, timeout: float,
              emit: Callable[[str, dict[str, Any]], None]) -> str:
        """Streams events newer than `version` to emit() until the server ends the watch;
        returns the newest resourceVersion seen (where the next watch resumes)."""
        query = {"watch": True, "resource_version": version, "allow_watch_bookmarks": True,
                 "timeout_seconds": max(1, int(timeout))}
        response = self._call("watch", query, (CONNECT_TIMEOUT, timeout + WATCH_READ_MARGIN))
        with self._lock:
            self._response = response
            if self.aborted:
                _cut(response)
        ended = False
        try:
            for event in _events(response):
                version = self._handle(event, version, emit)
            ended = True
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self.aborted:
                return version
            raise self._unavailable("watch", exc) from exc
        finally:
            with self._lock:
                self._response = None
            # A stream read to its end leaves a reusable connection; any other is closed.
            response.release_conn() if ended else response.close()
        return version

    def _handle(self, event: dict[str, Any], version: str,
                emit: Callable[[str, dict[str, Any]], None]) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message") or "410 Gone")
            raise errors.SourceUnavailable(
                f"watch {self.kind.describe(self.scope)}: {obj.get('code')} "
                f"{obj.get('reason')}: {obj.get('message')}")
        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            emit(kind, obj)
        return version

    def abort(self) -> None:
        """Ends a watch in progress from another thread, at once."""
        with self._lock:
            self.aborted = True
            if self._response is not None:
                _cut(self._response)

    def _call(self, verb: str, query: dict[str, Any],
              timeout: tuple[float, float]) -> urllib3.HTTPResponse:
        api_class = getattr(kubernetes.client, self.kind.api_class)
        if self.scope:
            method = getattr(api_class(self.api), f"list_namespaced_{self.kind.method}")
            query = {"namespace": self.scope, **query}
        else:
            method = getattr(api_class(self.api), f"list_{self.kind.method}_for_all_namespaces")
        try:
            return method(**query, _preload_content=False,  # type: ignore[no-any-return]
                          _request_timeout=timeout)
        except kubernetes.client.ApiException as exc:
            if exc.status == 410:
                raise Gone(f"{verb} {self.kind.describe(self.scope)}: 410 Gone") from exc
            raise self._refused(verb, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(verb, exc) from exc

    def _refused(self, verb: str, exc: Any) -> errors.SourceUnavailable:
        """The API server's own message: for a 403 it names the user, verb and resource."""
        try:
            message = json.loads(exc.body or b"{}").get("message", "")
        except ValueError:
            message = str(exc.body)[:200]
        hint = " (see the ClusterRole in k8s/base/rbac.yaml)" if exc.status == 403 else ""
        return errors.SourceUnavailable(
            f"cannot {verb} {self.kind.describe(self.scope)}: {exc.status} {exc.reason}: "
            f"{message}{hint}")

    def _unavailable(self, verb: str, exc: Exception) -> errors.SourceUnavailable:
        return errors.SourceUnavailable(f"cannot {verb} {self.kind.describe(self.scope)}: {exc}")


def _cut(response: Any) -> None:
    """Wakes the thread blocked reading this response: shutdown(SHUT_RDWR) of its socket makes
    the read return at once (urllib3's own HTTPResponse.shutdown() is SHUT_RD only, which on
    Linux does not wake a recv already waiting). The connection is not reused afterwards."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """Newline-delimited JSON watch events as the chunks arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


class Reflector:
    """list-then-watch of one (kind, scope) into the inventory: the task
    `source.kubernetes[<resource>/<scope or *>]`."""

    def __init__(self, *, source: KubernetesSource, kind: Kind, scope: str) -> None:
        self.source = source
        self.kind = kind
        self.scope = scope
        self.listed = False
        self.name = f"source.kubernetes[{kind.resource}/{scope or '*'}]"
        self._failures = 0

    async def run(self) -> None:
        version = ""  # "" = list first; else watch on from here
        while True:
            try:
                if not version:
                    version = await self._list()
                version = await self._watch(version)
            except Gone as exc:
                log.info("%s: %s; relisting", self.kind.describe(self.scope), exc)
                version = ""
            except errors.SourceUnavailable as exc:
                # A broken stream resumes from the last version seen (a 410 then relists).
                await self._back_off(exc)
            else:
                self._failures = 0

    async def _list(self) -> str:
        lister = self._new_list_watch()
        items, version = await self.source.blocking(lister.list)
        replace = (self.source.inventory.replace_services if self.kind is SERVICES
                   else self.source.inventory.replace_slices)
        replace(scope=self.scope, items=items)
        self.listed = True
        self._failures = 0
        self.source.mark_dirty()
        return str(version)

    async def _watch(self, version: str) -> str:
        watcher = self._new_list_watch()
        loop = asyncio.get_running_loop()

        def emit(kind: str, obj: dict[str, Any]) -> None:  # on the worker thread
            if not watcher.aborted:
                loop.call_soon_threadsafe(self._apply, watcher, kind, obj)

        future = self.source.blocking(
            watcher.watch, version=version, timeout=self.source.watch_timeout, emit=emit)
        try:
            return str(await asyncio.shield(future))
        except asyncio.CancelledError:
            watcher.abort()
            # Usually immediate (the read was cut). A request still waiting for its response
            # headers cannot be cut; it ends at its first event or its timeout, and whatever
            # it still reads is dropped (aborted), so it is not waited for.
            await asyncio.wait((future,), timeout=ABORT_WAIT)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a cut stream's error is expected here
            raise

    def _apply(self, watcher: ListWatch, kind: str, obj: dict[str, Any]) -> None:
        if watcher.aborted:
            return  # queued before the abort: this watch's view is no longer wanted
        inventory = self.source.inventory
        if self.kind is SERVICES:
            (inventory.delete_service if kind == "DELETED" else inventory.put_service)(obj)
        else:
            (inventory.delete_slice if kind == "DELETED" else inventory.put_slice)(obj)
        self.source.mark_dirty()

    async def _back_off(self, exc: errors.SourceUnavailable) -> None:
        self._failures += 1
        delay = self.source.backoff.delay(self._failures, self.source.rng)
        if self._failures == 1 or self._failures % 10 == 0:  # a line now and then, not a flood
            log.error("%s (retrying in %.1fs, failure %d)", exc, delay, self._failures)
        await asyncio.sleep(delay)

    def _new_list_watch(self) -> ListWatch:
        return ListWatch(api=self.source.api(), kind=self.kind, scope=self.scope)


class KubernetesSource(base.RecordsScaleUps):
    """Scale-up requests are only recorded here: the scaler (scaling/loop.py) scales the
    workloads, reading the Services this source keeps in `inventory`."""

    kind = "kubernetes"
    accepts_writes = False

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...],
        watch_timeout: float,
        backoff_base: float,
        backoff_cap: float,
        coalesce_window: float,
        max_entries: int,
        node: str = "",
        api_factory: Callable[[], kubernetes.client.ApiClient] = new_api_client,
        rng: random.Random | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.watch_timeout = watch_timeout
        self.backoff = peers.BackoffPolicy(base=backoff_base, cap=backoff_cap)
        self.coalesce_window = coalesce_window
        self.max_entries = max_entries
        self.node = node
        self.rng = rng or random.Random()
        self._api_factory = api_factory
        self._api: kubernetes.client.ApiClient | None = None
        self._office: base.Office | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.inventory = services.Inventory()
        self._reflectors: list[Reflector] = []
        self._dirty = asyncio.Event()
        self._current: base.Desired | None = None
        self._skipped: dict[str, str] = {}

    # -- sources.base.Source / LeaderOnly ------------------------------------------------------

    def follow(self, office: base.Office) -> None:
        self._office = office

    def read(self) -> base.Desired | None:
        """The table as of the last complete view; None until every reflector has listed."""
        return self._current

    @property
    def synced(self) -> bool:
        """Every reflector of this term has listed once: the inventory is complete, so a
        ClusterIP missing from it is not an opted-in Service (until then, it may be one not
        listed yet: the scaler holds such requests instead of dropping them)."""
        return bool(self._reflectors) and all(r.listed for r in self._reflectors)

    async def watch(self, on_change: Callable[[base.Desired], None]) -> None:
        while True:
            await self._until(leading=True)
            sync = asyncio.create_task(self._sync(on_change), name="source.kubernetes")
            try:
                await self._until(leading=False)
            finally:
                sync.cancel()
                await asyncio.gather(sync, return_exceptions=True)
                self._forget()

    # -- helpers for the reflectors ------------------------------------------------------------

    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            api = self._api_factory()  # SourceUnavailable: the reflector backs off
            # The API server's audit log shows which agent asked, and for what.
            api.user_agent = f"gossip-agent/{self.node or '-'} source"
            self._api = api
        return self._api

    def blocking(self, call: Callable[..., Any], **kwargs: Any) -> asyncio.Future[Any]:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, lambda: call(**kwargs))

    def mark_dirty(self) -> None:
        self._dirty.set()

    # -- internals -----------------------------------------------------------------------------

    async def _until(self, *, leading: bool) -> None:
        office = self._office
        if office is None:  # not wired to leadership (tools, tests): always watch
            if not leading:
                await asyncio.Event().wait()
            return
        while office.leading != leading:
            await office.office_changed.wait()
            office.office_changed.clear()

    async def _sync(self, on_change: Callable[[base.Desired], None]) -> None:
        scopes = self.namespaces or ("",)
        self._reflectors = [Reflector(source=self, kind=kind, scope=scope)
                            for scope in scopes for kind in (SERVICES, ENDPOINT_SLICES)]
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._reflectors), thread_name_prefix="source.kubernetes")
        tasks = [asyncio.create_task(r.run(), name=r.name) for r in self._reflectors]
        try:
            await self._publish_loop(on_change)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)  # a list ends by timeout
            self._executor = None

    async def _publish_loop(self, on_change: Callable[[base.Desired], None]) -> None:
        loop = asyncio.get_running_loop()
        last_publish: float | None = None
        while True:
            await self._dirty.wait()
            at = coalesce.publish_at(now=loop.time(), last_publish=last_publish,
                                     window=self.coalesce_window)
            if at > loop.time():
                await asyncio.sleep(at - loop.time())
            self._dirty.clear()
            if not all(r.listed for r in self._reflectors):
                continue  # a partial view would zero the Services not listed yet
            desired = self._table()
            if desired is not None and desired != self._current:
                self._current = desired
                last_publish = loop.time()
                on_change(desired)

    def _table(self) -> base.Desired | None:
        table = self.inventory.desired()
        report = services.report_skips(before=self._skipped, now=table.skipped)
        self._skipped = table.skipped
        for name, reason in sorted(report.new.items()):
            log.warning("Service %s skipped: %s", name, reason)
        for name in report.resolved:
            log.info("Service %s no longer skipped", name)
        if len(table.entries) > self.max_entries:
            log.error("%d opted-in Services; SERVICE_LIST holds %d (MAP_MAX_ENTRIES): keeping "
                      "the last table", len(table.entries), self.max_entries)
            return None
        for key, name in table.names.items():
            snapshots.check_name(name)  # "namespace/name" always fits; a broken object raises
            snapshots.check_replicas(table.entries[key])
        return base.Desired(table.entries, table.names)

    def _forget(self) -> None:
        """Stepped down: the next term starts from a fresh list, not from stale objects."""
        self.inventory = services.Inventory()
        self._reflectors = []
        self._current = None
        self._skipped = {}
        self._dirty.clear()
