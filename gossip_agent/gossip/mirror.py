"""The operator's view in the lease backend: the leader's snapshot and every node's heartbeat.

With COORDINATION_BACKEND=redis the seed's operator commands keep working:
`GET ebpf:service_list` (the leader's latest snapshot as JSON) and `HGETALL ebpf:coordination`
(node -> heartbeat time on Redis's clock, the version it holds, the leader it follows).

Invariants:
- The mirror is a VIEW and a warm start, never a second source of truth. Only the agent that
  holds the lease writes it, through a compare-and-act script that also refuses to store a
  version lower than the stored one. Agents read it once, at start, and only when they hold
  nothing (version 0.0): the snapshot goes through the same decision function as gossip
  (engine.receive), so it can never move a version back, and its content hash is checked.
- Backend failures are logged once per distinct message and retried next period; they never
  stop the agent (gossip and the data plane do not depend on the mirror).

Task `lease.mirror`: heartbeat every period; after each adoption, the leader mirrors the
snapshot it publishes. Cost per period: one heartbeat per agent, a constant amount of backend
work whatever the cluster's size (O(log N) in Redis: leases/redis.py), plus one mirror write
per leader adoption. Adoptions never add heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod

log = logging.getLogger("gossip_agent.mirror")

# Document format of <prefix>service_list (compact JSON, keys in this order):
#   {"term": 3, "seq": 7, "leader": "node-a", "leader_address": "10.0.0.1:50051",
#    "content_hash": "<sha256 of the packed table, hex>",
#    "services": [{"ip": "10.96.0.10", "replicas": 3, "name": "default/web"}, ...]}
# services are sorted by ip (as integers); name is "" when the leader has none.


@runtime_checkable
class Sink(Protocol):
    """Where the view is kept (leases.redis.RedisLease implements it)."""

    async def mirror_snapshot(self, *, term: int, seq: int, document: str) -> bool: ...

    async def heartbeat(self, *, term: int, seq: int, leader: str, period: float) -> None: ...

    async def read_mirror(self) -> str | None: ...


class MemorySink:
    """An in-memory Sink with the same never-go-back rule, for tests and simulations."""

    def __init__(self) -> None:
        self.document: str | None = None
        self.version = versions.ZERO
        self.heartbeats: list[tuple[int, int, str]] = []  # (term, seq, leader) per call
        self.writer_allowed = True  # False plays "this agent does not hold the lease"

    async def mirror_snapshot(self, *, term: int, seq: int, document: str) -> bool:
        version = versions.Version(term, seq)
        if not self.writer_allowed or version <= self.version:
            return False
        self.document, self.version = document, version
        return True

    async def heartbeat(self, *, term: int, seq: int, leader: str, period: float) -> None:
        self.heartbeats.append((term, seq, leader))

    async def read_mirror(self) -> str | None:
        return self.document


def document_of(snapshot: snapshots.Snapshot) -> str:
    names = snapshot.name_map()
    services = [
        {"ip": snapshots.format_ip(key), "replicas": value, "name": names.get(key, "")}
        for key, value in sorted(snapshot.entries().items())
    ]
    return json.dumps({
        "term": snapshot.version.term, "seq": snapshot.version.seq,
        "leader": snapshot.leader, "leader_address": snapshot.leader_address,
        "content_hash": snapshot.content_hash.hex(), "services": services,
    }, separators=(",", ":"))


def snapshot_of(document: str) -> snapshots.Snapshot:
    """The snapshot a mirror document describes; SnapshotInvalid if it is not one, or if its
    table does not match its content hash (edited by hand, or cut short)."""
    try:
        data: Any = json.loads(document)
        version = versions.Version(int(data["term"]), int(data["seq"]))
        services = data["services"]
        entries = {snapshots.parse_ip(str(s["ip"])): snapshots.check_replicas(int(s["replicas"]))
                   for s in services}
        names = {snapshots.parse_ip(str(s["ip"])): str(s.get("name", "")) for s in services}
        snapshot = snapshots.build(
            version=version, leader=str(data["leader"]),
            leader_address=str(data.get("leader_address", "")), entries=entries, names=names)
        claimed = bytes.fromhex(str(data["content_hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.SnapshotInvalid(f"mirror document is not a snapshot: {exc!r}") from exc
    if claimed != snapshot.content_hash:
        raise errors.SnapshotInvalid("mirror document's table does not match its content_hash")
    return snapshot


def pair_of(sink: Sink) -> Callable[[], Awaitable[tuple[int, str] | None]]:
    """Reads the (term, leader) of the snapshot `sink` mirrors (None: none, or unreadable):
    the term proof's second witness (gossip.proof)."""

    async def read() -> tuple[int, str] | None:
        document = await sink.read_mirror()
        if document is None:
            return None
        try:
            snapshot = snapshot_of(document)
        except errors.SnapshotInvalid:
            return None
        return snapshot.version.term, snapshot.leader

    return read


class Mirror:
    def __init__(self, *, engine: engine_mod.Engine, leadership: leader_mod.Leadership,
                 sink: Sink, period: float) -> None:
        self.engine = engine
        self.leadership = leadership
        self.sink = sink
        self.period = period
        self.mirrored = versions.ZERO
        self._error = ""

    async def run(self) -> None:
        """The `lease.mirror` task: a heartbeat once per period, whatever happens between (it
        once went out after every adoption too: one backend write per agent per change), and
        the leader's mirror write after each adoption."""
        await self._guarded(self.warm_start)
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.period
                if await self._guarded(self.heartbeat):
                    self._error = ""  # the backend answers again: a new failure is news
            await self._guarded(self.publish)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self.engine.changed()

    async def _guarded(self, step: Any) -> bool:
        """Runs one step; a backend failure is logged once per distinct message."""
        try:
            await step()
        except errors.LeaseUnavailable as exc:
            if str(exc) != self._error:
                log.warning("mirror: %s (retrying every %gs)", exc, self.period)
            self._error = str(exc)
            return False
        return True

    async def warm_start(self) -> None:
        """Adopts the mirrored snapshot if this agent holds nothing yet (a fresh node)."""
        if self.engine.held.version != versions.ZERO:
            return
        document = await self.sink.read_mirror()
        if document is None:
            return
        try:
            snapshot = snapshot_of(document)
            decision = self.engine.receive(snapshot, via="mirror")
        except errors.GossipAgentError as exc:
            log.warning("mirror: not using the stored snapshot as a warm start: %s", exc)
            return
        log.info("mirror: warm start from the stored snapshot %s: %s", snapshot.version,
                 decision.value)

    async def heartbeat(self) -> None:
        held = self.engine.held.version
        await self.sink.heartbeat(term=held.term, seq=held.seq,
                                  leader=self.engine.leader_node, period=self.period)

    async def publish(self) -> None:
        """The leader mirrors the snapshot it holds if it is of its own term and newer."""
        snapshot = self.engine.held.snapshot
        if (not self.leadership.leading or snapshot is None or not snapshot.complete
                or snapshot.version.term != self.leadership.term
                or snapshot.version <= self.mirrored):
            return
        if await self.sink.mirror_snapshot(term=snapshot.version.term,
                                           seq=snapshot.version.seq,
                                           document=document_of(snapshot)):
            self.mirrored = snapshot.version
