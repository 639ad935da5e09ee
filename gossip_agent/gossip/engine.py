"""One agent's gossip state: the snapshot it holds, its map, its peers, and what it tells them.

The engine is the receiving side of the Gossip service (handle_push, handle_exchange) and the
calling side of anti-entropy (exchange_with). Whatever path brings a snapshot, it goes through
receive(): validate, core.snapshots.decide, then apply the map diff and only then replace what
is held, so a snapshot is applied entirely or not at all and the version never goes back.

Everything here is synchronous except the outgoing calls: adoption costs well under a
millisecond (a diff and a few bpf() calls), so it runs on the event loop without locks; one
loop thread means two deliveries can never interleave inside receive().
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Callable

from gossip_agent import errors
from gossip_agent.core import beats as beats_mod
from gossip_agent.core import diff, peers, snapshots, versions
from gossip_agent.dataplane import base as dataplane_base
from gossip_agent.gossip import base, wire
from gossip_agent.gossip import leading as leading_mod
from gossip_agent.gossip import proof as proof_mod
from gossip_agent.observability import telemetry as telemetry_mod
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.gossip")

# Peers listed in one digest: enough to spread membership in a few rounds, small enough to keep
# a digest well under a kilobyte at 32+ nodes.
MAX_DIGEST_PEERS = 64

_ACK_RESULTS = {
    snapshots.Decision.ADOPT: pb.PushAck.ADOPTED,
    snapshots.Decision.REPAIR: pb.PushAck.ADOPTED,
    snapshots.Decision.CONFLICT_WIN: pb.PushAck.CONFLICT,
    snapshots.Decision.CONFLICT_LOSE: pb.PushAck.CONFLICT,
    snapshots.Decision.FORGED: pb.PushAck.CONFLICT,
    snapshots.Decision.DUPLICATE: pb.PushAck.DUPLICATE,
    snapshots.Decision.STALE: pb.PushAck.STALE,
}


@dataclasses.dataclass
class Stats:
    """Counters for the console and metrics (issue: operating a live agent)."""

    received: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    exchanges_ok: int = 0
    exchanges_failed: int = 0
    pulls: int = 0
    pushes_in_exchange: int = 0
    repairs: int = 0
    last_apply_seconds: float = 0.0
    # Wire bytes by message kind (push, exchange), and the leader's push attempts.
    bytes_received: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter)
    bytes_sent: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    pushes_sent: int = 0
    push_failures: int = 0


# Adoptions kept for GetHistory: a few minutes of changes at a busy rate, a few KB of memory.
HISTORY_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class StateEvent:
    version: versions.Version
    leader: str
    content_hash: bytes
    entry_count: int
    applied_monotonic_ns: int
    applied_unix_ms: int
    via: str


class Engine:
    def __init__(
        self,
        *,
        node: str,
        address: str,
        boot_id: str,
        dataplane: dataplane_base.DataPlane,
        transport: base.Transport,
        membership: peers.Membership,
        rpc_timeout: float,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        beats: beats_mod.BeatBoard | None = None,
        telemetry: telemetry_mod.Telemetry | None = None,
        proof: proof_mod.TermProof | None = None,
        leading: leading_mod.LeadingTerm | None = None,
    ) -> None:
        self.node = node
        self.address = address
        self.boot_id = boot_id
        self.dataplane = dataplane
        self.transport = transport
        self.membership = membership
        self.rpc_timeout = rpc_timeout
        self.rng = rng
        self.clock = clock
        self.held: snapshots.Held = snapshots.NOTHING
        # What the map holds, as this agent wrote it: a canonical table (fast diffs); the
        # dict view is built only when someone reads it (GetState, repair, taking office).
        self._table_bytes = b""
        self._table_dict: dict[int, int] | None = {}
        self.max_term_seen = 0
        # The term this agent leads in: leadership moves it, this engine raises its alarm.
        self.leading = leading if leading is not None else leading_mod.LeadingTerm()
        self.stats = Stats()
        self.last_event: StateEvent | None = None
        self.history: collections.deque[StateEvent] = collections.deque(maxlen=HISTORY_LENGTH)
        # Set by the next adoption; made by the first waiter after one (WatchState, readiness),
        # so an adoption nobody waits for makes no Event.
        self._changed: asyncio.Event | None = None
        # Lease heartbeats (configmap/lease backends): the lease writes its own, digests
        # carry the newest known both ways (core.beats).
        self.beats = beats if beats is not None else beats_mod.BeatBoard()
        self.telemetry: telemetry_mod.Telemetry = telemetry or telemetry_mod.Recorder()
        # The held snapshot's age (since its leader wrote it) when it was adopted here, and
        # when that was on this host's monotonic clock: what we pass on carries age + elapsed.
        # A version recovered from the map has no known age (and no snapshot to pass on).
        self._held_age_us = 0
        self._held_at_ns: int | None = None
        # Terms proven against the lease record (gossip/proof.py); None: believed (simulations).
        self.proof = proof

    # -- start-up ---------------------------------------------------------------------------

    def load(self) -> None:
        """Recovers the version floor and the table from the pinned maps (never blanks them)."""
        persisted = self.dataplane.load()
        self._table_dict = persisted.table
        self._table_bytes = snapshots.encode_table(persisted.table)
        self.max_term_seen = persisted.version.term
        self.held = snapshots.Held(persisted.version, persisted.content_hash, False, None)
        actual = snapshots.content_hash(self._table_bytes)
        if persisted.version != versions.ZERO and actual != persisted.content_hash:
            log.warning(
                "map at %s does not match version %s persisted beside it (half-applied or "
                "edited by hand); keeping it until a peer sends that version or a newer one",
                self.dataplane.location, persisted.version,
            )
        elif persisted.version != versions.ZERO:
            log.info("recovered version %s with %d entries from %s", persisted.version,
                     len(self.table), self.dataplane.location or "memory")
        if persisted.version != versions.ZERO:
            # WatchState starts with the current version; when it was applied is unknown (0).
            self.last_event = StateEvent(persisted.version, "", persisted.content_hash,
                                         len(persisted.table), 0, 0, "recovered")
            self.history.append(self.last_event)

    # -- receiving --------------------------------------------------------------------------

    def receive(
        self, snapshot: snapshots.Snapshot, *, via: str, age_us: int = 0
    ) -> snapshots.Decision:
        """Judges and, if it wins, adopts one snapshot. Raises on invalid input or map failure.
        age_us: time since its leader wrote it, as carried on the wire (Snapshot.age_us)."""
        try:
            snapshots.validate(snapshot, max_entries=self.dataplane.max_entries,
                               held=self.held.snapshot)
        except errors.GossipAgentError as exc:
            self.stats.rejected["invalid"] += 1
            log.warning("rejected snapshot %s from %s via %s: %s", snapshot.version,
                        snapshot.leader or "?", via, exc,
                        extra={"version": str(snapshot.version), "via": via,
                               "reason": str(exc)})
            raise
        return self._judge(snapshots.with_names(snapshot, self.held.snapshot), via=via,
                           age_us=age_us)

    def receive_delta(
        self, delta: snapshots.Delta, *, via: str, age_us: int = 0
    ) -> snapshots.Decision | None:
        """A pushed delta: judged like a snapshot once expanded; None when it needs the full
        snapshot (this agent does not hold its base and does hold something older)."""
        if not (delta.version.is_valid() and delta.base < delta.version):
            self.stats.rejected["invalid"] += 1
            log.warning("rejected delta %s on base %s via %s: invalid versions", delta.version,
                        delta.base, via)
            raise errors.SnapshotInvalid(f"delta {delta.version} on base {delta.base} is invalid")
        self.note_term(delta.version.term)
        try:
            snapshot, replaced = snapshots.expand_with_previous(delta, self.held.snapshot)
        except snapshots.NeedFull:
            if delta.version <= self.held.version:  # old news: say so like any stale push
                return self._judge_version(delta.version, delta.content_hash, via=via)
            self.stats.received[f"{via}:need-full"] += 1
            return None
        except errors.GossipAgentError as exc:
            self.stats.rejected["invalid"] += 1
            log.warning("rejected delta %s via %s: %s", delta.version, via, exc)
            raise
        # expand() built the table from the held one and checked its hash: it is canonical.
        return self._judge(snapshot, via=via, age_us=age_us,
                           change=diff.from_changes(delta.changes, replaced=replaced))

    def _judge_version(
        self, version: versions.Version, digest: bytes, *, via: str
    ) -> snapshots.Decision:
        decision = snapshots.decide(self.held, version=version, digest=digest)
        self.stats.received[f"{via}:{decision.value}"] += 1
        return decision

    def _judge(
        self, snapshot: snapshots.Snapshot, *, via: str, age_us: int = 0,
        change: diff.MapDiff | None = None,
    ) -> snapshots.Decision:
        self.note_term(snapshot.version.term)
        decision = snapshots.decide(
            self.held, version=snapshot.version, digest=snapshot.content_hash,
            complete=snapshot.complete, own_term=0 if via == "self" else self.leading.term,
        )
        self.stats.received[f"{via}:{decision.value}"] += 1
        if decision is snapshots.Decision.FORGED:
            self.contest_term(snapshot.version, via=via)
        if decision.is_conflict:
            log.error(
                "CONFLICT: version %s arrived from %s with different content than held "
                "(hash %s vs %s); one leader per term was violated. Larger hash wins: %s",
                snapshot.version, snapshot.leader, snapshot.content_hash.hex()[:12],
                self.held.content_hash.hex()[:12], decision.value,
                extra={"version": str(snapshot.version), "leader": snapshot.leader,
                       "decision": decision.value, "via": via},
            )
        if decision.adopts:
            self._adopt(snapshot, via=via, age_us=age_us, change=change)
        return decision

    def _adopt(
        self, snapshot: snapshots.Snapshot, *, via: str, age_us: int,
        change: diff.MapDiff | None = None,
    ) -> None:
        """`change`: what a delta said changed against the held snapshot; used only while the
        map holds exactly that snapshot's table (else the full diff is computed). Either way
        the diff is against the table this agent last wrote to the map (or read from it at
        start), so it states what it replaces (MapDiff.previous) and the data plane need not
        read the map first; hand edits are the map-repair check's business (repair_map)."""
        started = time.perf_counter()
        previous_term = self.held.version.term
        held = self.held.snapshot
        if change is None or held is None or held.table != self._table_bytes:
            change = diff.diff_tables(self._table_bytes, snapshot.table)
        self.dataplane.apply(
            change, version=snapshot.version, content_hash=snapshot.content_hash
        )
        self._table_bytes = snapshot.table
        self._table_dict = None
        self.held = snapshots.Held.of(snapshot)
        self.stats.last_apply_seconds = time.perf_counter() - started
        self._held_age_us = age_us + int(self.stats.last_apply_seconds * 1e6)
        self._held_at_ns = time.monotonic_ns()
        self.telemetry.adopted(via=via, age_seconds=self._held_age_us / 1e6,
                               apply_seconds=self.stats.last_apply_seconds)
        if snapshot.version.term != previous_term and via != "self":
            log.info("adopted term %d from leader %s (version %s, %d entries, via %s)",
                     snapshot.version.term, snapshot.leader, snapshot.version,
                     snapshot.entry_count, via,
                     extra={"term": snapshot.version.term, "leader": snapshot.leader,
                            "version": str(snapshot.version), "via": via})
        self._announce(snapshot, via=via)

    def held_age_us(self) -> int:
        """How long ago the held snapshot's leader wrote it, as far as this agent knows."""
        if self._held_at_ns is None:
            return 0
        return self._held_age_us + (time.monotonic_ns() - self._held_at_ns) // 1000

    def _announce(self, snapshot: snapshots.Snapshot, *, via: str) -> None:
        self.last_event = StateEvent(
            version=snapshot.version,
            leader=snapshot.leader,
            content_hash=snapshot.content_hash,
            entry_count=snapshot.entry_count,
            applied_monotonic_ns=time.monotonic_ns(),
            applied_unix_ms=time.time_ns() // 1_000_000,
            via=via,
        )
        self.history.append(self.last_event)
        if self._changed is not None:
            changed, self._changed = self._changed, None
            changed.set()
        log.debug("adopted %s from %s (%d entries)", snapshot.version, snapshot.leader,
                  snapshot.entry_count)

    async def changed(self) -> None:
        """Waits for the next adoption (WatchState)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def needs_proof(self, message: pb.Snapshot) -> bool:
        """Whether a snapshot must be proven before it is judged: one that could be adopted
        (term not below what is held) under a (term, leader) pair not proven yet."""
        proof, term = self.proof, message.version.term
        return (proof is not None and term >= self.held.version.term
                and not proof.known(term=term, leader=message.leader))

    async def prove(self, message: pb.Snapshot, *, sender: str) -> None:
        """Raises errors.TermUnproven when the lease record does not show the snapshot's term
        and leader (one backend read per new pair), counted in stats.rejected."""
        if self.proof is not None and self.needs_proof(message):
            try:
                await self.proof.check(term=message.version.term, leader=message.leader,
                                       sender=sender)
            except errors.TermUnproven:
                self.stats.rejected["unproven-term"] += 1
                raise

    def note_claimed_term(self, term: int) -> None:
        """A term a peer says it has seen (digest, ack): noted once the record shows one as
        high, so a made-up term cannot push this agent's next term up to it."""
        if self.proof is None:
            self.note_term(term)
        elif term > self.max_term_seen:
            self.proof.claimed(term, accept=self.note_term)

    def contest_term(self, version: versions.Version, *, via: str) -> None:
        """This leader's term carries a version it never wrote (pushed, pulled, or held by a
        peer that refused a push as stale): never adopted here, and the term is spent, so the
        next write moves above it and supersedes that version everywhere."""
        if version.term != self.leading.term:
            return
        self.stats.rejected["forged"] += 1
        if self.leading.spent != version.term:
            log.error("FORGED: version %s of this leader's own term arrived via %s, but this "
                      "leader wrote only up to %s; not adopted; moving to a new term",
                      version, via, self.held.version,
                      extra={"version": str(version), "via": via, "decision": "forged"})
        self.spend_term()

    def spend_term(self) -> None:
        """Asks leadership to move the term up before the next write (lease.elect wakes)."""
        self.leading.spend()

    def note_term(self, term: int) -> None:
        if term > self.max_term_seen:
            self.max_term_seen = term
        self.leading.note(term)

    # -- the Gossip service -----------------------------------------------------------------

    def handle_push(self, message: pb.Snapshot) -> pb.PushAck:
        return self.push_ack(self.receive_push(message))

    def receive_push(self, message: pb.Snapshot) -> pb.PushAck.Result:
        """Judges (and maybe adopts) a pushed snapshot or delta; returns what its PushAck would
        say. The push stream builds the PushAck only when one is sent (wire.wants_ack)."""
        if message.HasField("base"):
            decision = self.receive_delta(wire.delta_from_pb(message), via="push",
                                          age_us=message.age_us)
        else:
            decision = self.receive(wire.snapshot_from_pb(message), via="push",
                                    age_us=message.age_us)
        return pb.PushAck.NEED_FULL if decision is None else _ACK_RESULTS[decision]

    def push_ack(self, result: pb.PushAck.Result) -> pb.PushAck:
        """The PushAck for `result`, with what this agent holds now."""
        return pb.PushAck(
            result=result,
            held=wire.version_to_pb(self.held.version),
            held_hash=self.held.content_hash,
            node=self.node,
            max_term_seen=self.max_term_seen,
        )

    def handle_exchange(self, request: pb.ExchangeRequest) -> pb.ExchangeReply:
        theirs = request.digest
        self._learn(theirs, address=theirs.address)
        if request.HasField("snapshot"):
            self.receive(wire.snapshot_from_pb(request.snapshot), via="exchange",
                         age_us=request.snapshot.age_us)
        reply = pb.ExchangeReply(digest=self.digest())
        if self._newer_than(theirs) and self.held.snapshot is not None:
            reply.snapshot.CopyFrom(wire.snapshot_to_pb(self.held.snapshot,
                                                        age_us=self.held_age_us()))
            self.stats.pushes_in_exchange += 1
        return reply

    def digest(self) -> pb.Digest:
        known = [p.address for p in self.membership.peers() if p.state is not peers.PeerState.DEAD]
        digest = pb.Digest(
            node=self.node,
            address=self.address,
            version=wire.version_to_pb(self.held.version),
            content_hash=self.held.content_hash,
            complete=self.held.complete,
            max_term_seen=self.max_term_seen,
            boot_id=self.boot_id,
            peers=known[:MAX_DIGEST_PEERS],
            leader=self.leading.term > 0,
        )
        _add_beat(digest, self.beats.best)
        return digest

    def _newer_than(self, theirs: pb.Digest) -> bool:
        """Whether the peer that sent `theirs` would adopt what this agent holds."""
        if self.held.snapshot is None:
            return False
        decision = snapshots.decide(
            snapshots.Held(wire.version_from_pb(theirs.version), theirs.content_hash,
                           theirs.complete, None),
            version=self.held.version,
            digest=self.held.content_hash,
            complete=self.held.complete,
        )
        return decision.adopts

    def _learn(self, theirs: pb.Digest, *, address: str) -> None:
        if theirs.node == self.node:
            self.membership.mark_self(address)
            return
        self.membership.met(address)
        self.membership.learn(theirs.peers)
        self.membership.succeeded(address, now=self.clock(), contact=peers.Contact(
            node=theirs.node, version=wire.version_from_pb(theirs.version),
            boot_id=theirs.boot_id, leader=theirs.leader,
        ))
        self.note_claimed_term(theirs.max_term_seen)
        if theirs.beat_term:
            self.beats.offer(beats_mod.Beat(theirs.beat_holder, theirs.beat_term,
                                            theirs.beat_seq, theirs.beat_stamp), now=self.clock())

    # -- anti-entropy (calling side) ---------------------------------------------------------

    async def exchange_with(self, address: str) -> bool:
        """One anti-entropy exchange: digests, then a snapshot only where they differ."""
        try:
            reply = await self.transport.exchange(
                address, pb.ExchangeRequest(digest=self.digest()), timeout=self.rpc_timeout
            )
            self._learn(reply.digest, address=address)
            if reply.HasField("snapshot"):
                self.stats.pulls += 1
                await self.prove(reply.snapshot, sender=address)
                self.receive(wire.snapshot_from_pb(reply.snapshot), via="pull",
                             age_us=reply.snapshot.age_us)
            elif self._newer_than(reply.digest) and self.held.snapshot is not None:
                await self.transport.exchange(address, pb.ExchangeRequest(
                    digest=self.digest(), snapshot=wire.snapshot_to_pb(
                        self.held.snapshot, age_us=self.held_age_us()),
                ), timeout=self.rpc_timeout)
                self.stats.pushes_in_exchange += 1
        except base.PeerUnreachable as exc:
            self.stats.exchanges_failed += 1
            self.membership.failed(address, now=self.clock())
            log.debug("anti-entropy with %s failed: %s", address, exc)
            return False
        except errors.GossipAgentError as exc:
            self.stats.exchanges_failed += 1
            self.membership.failed(address, now=self.clock())
            log.warning("anti-entropy with %s brought a bad snapshot: %s", address, exc)
            return False
        self.stats.exchanges_ok += 1
        return True

    async def close_departed(self) -> int:
        """Closes what the transport keeps (channel, push stream) for addresses that are no
        longer peers, keeping the leader's (reports and forwarded writes call it); returns how
        many were closed. O(peers + channels)."""
        keep = set(self.membership.addresses())
        keep.add(self.leader_address)
        return await self.transport.retain(keep)

    def repair_map(self) -> int:
        """Rewrites map entries that differ from the held table (hand edits); returns how many."""
        actual = self.dataplane.read()
        if actual == self.table:
            return 0
        change = diff.diff(actual, self.table)
        self.dataplane.apply(
            change, version=self.held.version, content_hash=self.held.content_hash
        )
        self.stats.repairs += len(change)
        log.warning("repaired %d map entries that differed from version %s",
                    len(change), self.held.version)
        return len(change)

    # -- views ------------------------------------------------------------------------------

    @property
    def table(self) -> dict[int, int]:
        if self._table_dict is None:
            self._table_dict = snapshots.table_to_dict(self._table_bytes)
        return self._table_dict

    @property
    def leader_node(self) -> str:
        return self.held.snapshot.leader if self.held.snapshot else ""

    @property
    def leader_address(self) -> str:
        return self.held.snapshot.leader_address if self.held.snapshot else ""


def _add_beat(digest: pb.Digest, beat: beats_mod.Beat | None) -> None:
    if beat is not None:
        digest.beat_holder, digest.beat_term = beat.holder, beat.term
        digest.beat_seq, digest.beat_stamp = beat.seq, beat.stamp
