"""Leadership: winning the lease, taking office safely, publishing, and pushing to every peer.

Election (task `lease.elect`): a follower tries the lease every LEASE_RETRY_INTERVAL with
min_term = max_term_seen + 1, so its term is above every term it has seen whatever the
backend's counter says. A leader renews every LEASE_RENEW_INTERVAL and steps down the moment
renewal fails. A leader that learns of a higher term (a refused push, a digest) moves above it
through the backend's atomic bump before it writes again.

Taking office: a digest round with every known peer first (learn the highest term and pull the
newest snapshot), a term bump if a peer has seen this term or a higher one, then the source is
read, then the first snapshot of the term is published. So a change of leader never blanks a
map and never publishes from a stale base. It happens whole or not at all: a failed bump steps
down before any publisher exists, and `leading` (reports taken, writes accepted, scaling, a
LeaderOnly source watching) becomes true only once the term's first snapshot is published.

A spent term is left, not written on: when a version of the leader's own term that it never
wrote shows up (Decision.FORGED: pushed, pulled, or held by a peer that refuses a push as
stale), or its seq would pass 2^64-1, the leader bumps its term through the backend before
publishing again, so its next snapshot supersedes that version everywhere.

A map write that fails (the leader applies each snapshot to its own map first) loses nothing:
the desired table is kept and published again after a backoff (PUBLISH_RETRY_BASE ..
PUBLISH_RETRY_CAP) until its map takes it; the writes waiting on it fail with the map's error.

Push path: one task per peer (`gossip.push[addr]`) with a one-slot mailbox. The leader
serializes each snapshot once; each task writes the newest payload on its peer's long-lived
stream, so a slow peer (whose writes block on flow control) skips straight to the newest
snapshot instead of queueing, and a failing peer backs off alone (its task sleeps; nobody else
waits). Only ACK_SAMPLE peers per snapshot are asked for an acknowledgement, or a write's
quorum (core.quorum.write_acks) and ACK_SLACK more when an admin write waits on it, so the
write is durable before it is acknowledged; every other peer reports its version through
anti-entropy digests. Measured here at N=32: acking every push cost the leader
8.7 ms of CPU per change; sampling acks brought it to 6.2 ms. The workers of peers that left
membership end at the next publish or renewal (O(P) per LEASE_RENEW_INTERVAL).

DESIGN measured, on 2 cores at N=32: a star over kept-open streams beats
unary fan-out (p99 14-18 vs 30-38 ms) and rumor-mongering with duplicates collapses at N>=16,
so the hot path sends each peer each snapshot exactly once and anti-entropy repairs the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time

from gossip_agent import errors
from gossip_agent.core import coalesce, peers, quorum, snapshots, terms, versions
from gossip_agent.gossip import base, wire
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.leases import base as lease_base
from gossip_agent.sources import base as source_base
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.leader")

# Peers asked to acknowledge a snapshot no write waits on (rotating): their acks keep the
# leader's view of who holds what fresh between digests, at a third of the cost of acking all.
ACK_SAMPLE = 3
# Peers asked beyond core.quorum.write_acks when a write waits on the snapshot: the write's
# acknowledgement does not wait for WRITE_ACK_TIMEOUT over two slow or lost acknowledgements.
ACK_SLACK = 2
# Seconds before publishing again after the leader's own map refused a snapshot, doubling per
# failure: soon enough that a transient failure (ENOMEM) costs little, capped so a persistent
# one costs one bpf() attempt every few seconds.
PUBLISH_RETRY_BASE = 0.1
PUBLISH_RETRY_CAP = 5.0


@dataclasses.dataclass(frozen=True)
class Timing:
    retry_interval: float
    renew_interval: float
    coalesce_window: float
    write_ack_timeout: float


@dataclasses.dataclass(frozen=True)
class WriteResult:
    version: versions.Version
    leader: str
    acked_peers: int
    written_monotonic_ns: int
    quorum: int = 0  # core.quorum.write_acks: acked_peers >= quorum means durable


class Publication:
    """One snapshot as sent, each form encoded at most once, when a peer first needs it: full,
    without names (names_omitted), and as a delta against the previous publication when the
    keys are unchanged (Snapshot.base). In steady state only the small delta is ever encoded."""

    def __init__(
        self, snapshot: snapshots.Snapshot, delta: snapshots.Delta | None, *, written_ns: int
    ) -> None:
        self.snapshot = snapshot
        self.version = snapshot.version
        self.names_hash = snapshot.names_hash
        self.base = delta.base if delta is not None else None
        self.delta = wire.delta_to_pb(delta).SerializeToString() if delta is not None else b""
        # The leader's write (WriteResponse.written_monotonic_ns): Snapshot.age_us counts from it.
        self.written_ns = written_ns

    @functools.cached_property
    def full(self) -> bytes:
        return wire.snapshot_to_pb(self.snapshot).SerializeToString()

    @functools.cached_property
    def lite(self) -> bytes:
        return wire.snapshot_to_pb(self.snapshot, omit_names=True).SerializeToString()

    def payload_for(self, *, sent: versions.Version, names_sent: bytes) -> bytes:
        """The smallest form the peer can use, given what this leader last wrote to it."""
        if names_sent != self.names_hash:
            return self.full
        if self.delta and sent == self.base:
            return self.delta
        return self.lite


class PushWorker:
    """Delivers the newest snapshot to one peer over its stream, one write at a time."""

    def __init__(self, leadership: Leadership, address: str) -> None:
        self.address = address
        self._leadership = leadership
        self._latest: Publication | None = None
        self._want_ack = False
        self._sent = versions.ZERO  # newest version written on this peer's stream
        self._names_sent = b""  # names_hash of the names this peer was last sent
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"gossip.push[{address}]")

    def resend_full(self) -> None:
        """The peer could not use a delta or names it lacks: next time send everything."""
        self._sent = versions.ZERO
        self._names_sent = b""
        self._wake.set()

    def offer(self, snapshot: Publication, *, want_ack: bool) -> None:
        self._latest = snapshot
        self._want_ack = want_ack
        self._wake.set()

    async def _run(self) -> None:
        engine = self._leadership.engine
        while True:
            await self._wake.wait()
            self._wake.clear()
            peer = engine.membership.get(self.address)
            if peer is None or self._latest is None:
                continue
            if max(peer.version_known, self._sent) >= self._latest.version:
                continue
            delay = peer.next_attempt - engine.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_latest()

    async def _send_latest(self) -> None:
        assert self._latest is not None
        publication = self._latest
        version = publication.version
        payload = publication.payload_for(sent=self._sent, names_sent=self._names_sent)
        if self._want_ack:
            payload += wire.ACK_SUFFIX
        payload += wire.age_suffix((time.monotonic_ns() - publication.written_ns) // 1000)
        engine = self._leadership.engine
        engine.stats.bytes_sent["push"] += len(payload)
        try:
            await engine.transport.push(self.address, payload, timeout=engine.rpc_timeout)
            engine.stats.pushes_sent += 1
        except base.PeerUnreachable as exc:
            engine.stats.push_failures += 1
            engine.membership.failed(self.address, now=engine.clock())
            log.debug("push %s to %s failed: %s", version, self.address, exc)
            self._names_sent = b""  # a new stream, maybe a restarted peer: send names again
            self._wake.set()  # retry after the backoff the failure just set
            return
        self._sent = version
        self._names_sent = publication.names_hash
        if self._latest.version > version:
            self._wake.set()


class Leadership:
    def __init__(
        self,
        *,
        engine: engine_mod.Engine,
        lease: lease_base.Lease,
        source: source_base.Source,
        timing: Timing,
    ) -> None:
        self.engine = engine
        self.lease = lease
        self.source = source
        self.timing = timing
        # The term this agent holds the lease at, shared with the engine (gossip.leading).
        self._leading = engine.leading
        self.refusal = ""
        self.opening = ""  # why this lease holder has not published yet (a short digest round)
        self.lease_error = ""
        self._desired: source_base.Desired | None = None
        self._dirty = asyncio.Event()
        self._waiters: list[asyncio.Future[snapshots.Snapshot]] = []
        self._last_publish: float | None = None
        self._published_ns = 0
        self._ack_waits: list[_AckWait] = []  # admin writes waiting for their quorum
        self._workers: dict[str, PushWorker] = {}
        self._publisher: asyncio.Task[None] | None = None
        self._ack_turn = 0  # rotates which peers are asked to acknowledge
        self._surveyed = False  # a digest round with the known peers ran before campaigning
        self.refusal_changed = asyncio.Event()  # set when `refusal` changes (health mirrors it)
        self.office_changed = asyncio.Event()  # set on taking office and stepping down
        self._previous: snapshots.Snapshot | None = None  # last publication: base of deltas
        self._beat_task: asyncio.Task[bool] | None = None  # lease.beat: see _spread_beat
        self._beat_turn = 0
        self._published_in_term = False  # the term's first snapshot is out: in office
        self._publish_failures = 0  # consecutive map-write failures of the leader's snapshot
        self._retry: asyncio.TimerHandle | None = None  # the next publish after a failure
        engine.transport.set_ack_handler(self.on_ack)

    @property
    def term(self) -> int:
        """The term this agent holds the lease at; 0 when it does not."""
        return self._leading.term

    @property
    def holds_lease(self) -> bool:
        return self.term > 0

    @property
    def leading(self) -> bool:
        """In office: holds the lease AND has finished taking office (the digest round, any
        bump, and the term's first snapshot published)."""
        return self.term > 0 and self._publisher is not None and self._published_in_term

    # -- election loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """The `lease.elect` task: campaign while following, renew while leading."""
        try:
            while True:
                if self.holds_lease:
                    await self._hold_office()
                    if self.holds_lease and self._publisher is None:
                        await self._open_office()  # its digest round fell short: again
                    await self._pause(self.timing.renew_interval)
                else:
                    await self._campaign()
                    await self._pause(self.timing.retry_interval)
        finally:
            if self._beat_task is not None:
                self._beat_task.cancel()
            await asyncio.shield(self._resign("agent stopping", cause="released"))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._leading.higher.wait()

    def _check_refusal(self) -> str:
        refusal = terms.refuse_to_lead(
            backend=self.lease.backend,
            own_boot_id=self.engine.boot_id,
            peer_boot_ids=self.engine.membership.boot_ids(),
        )
        if refusal != self.refusal:
            self.refusal = refusal
            self.refusal_changed.set()
        return refusal

    async def _campaign(self) -> None:
        if not self._surveyed:
            # Meet the known peers before the first campaign: their boot ids (may this agent
            # lead at all?) and terms (the first term must be above them).
            await self._digest_round()
            self._surveyed = True
        if self._check_refusal():
            return
        try:
            grant = await self.lease.try_acquire(min_term=self.engine.max_term_seen + 1)
        except errors.LeaseUnavailable as exc:
            self._lease_trouble(exc)
            return
        self.lease_error = ""
        if grant is not None:
            await self._take_office(grant)

    def _lease_trouble(self, exc: Exception) -> None:
        if str(exc) != self.lease_error:
            log.error("lease backend %s: %s (retrying)", self.lease.backend, exc)
        self.lease_error = str(exc)

    async def _take_office(self, grant: lease_base.Grant) -> None:
        log.info("won the %s lease as %s at term %d", self.lease.backend, grant.holder,
                 grant.term, extra={"backend": self.lease.backend, "holder": grant.holder,
                                    "term": grant.term})
        self.engine.telemetry.lease_acquired(backend=self.lease.backend, term=grant.term)
        self._leading.take(grant.term)
        await self._open_office()

    async def _open_office(self) -> None:
        """The steps between the grant and the first publish. Returns with nothing started
        when the digest round reached too few peers (run() tries again after each renewal,
        holding the lease meanwhile) or the bump failed (stepped down)."""
        if not await self._heard_enough():
            return
        if self.engine.max_term_seen >= self.term:
            await self._bump()
            if not self.holds_lease:
                return  # the bump failed and stepped down: nothing was started
        desired = self.source.read()
        if desired is None:
            desired = self._desired_from_held()
        self._desired = desired
        self._publisher = asyncio.create_task(self._publish_loop(), name="gossip.publish")
        self._dirty.set()  # office_changed is set once that first publish is out

    async def _digest_round(self) -> int:
        """Learn the highest term and newest snapshot around before writing anything; returns
        how many peers answered."""
        addresses = self.engine.membership.addresses()
        if not addresses:
            return 0
        answered = await asyncio.gather(*(self.engine.exchange_with(a) for a in addresses))
        return sum(1 for ok in answered if ok)

    async def _heard_enough(self) -> bool:
        """The digest round reached core.quorum.office_peers of the known peers, so it met a
        holder of every acknowledged write; until then this agent holds the lease and waits."""
        peers_known = len(self.engine.membership.addresses())
        need = quorum.office_peers(peers_known + 1)
        heard = await self._digest_round()
        if heard >= need:
            self.opening = ""
            return True
        opening = (f"taking office at term {self.term}: the digest round reached {heard} of "
                   f"{peers_known} peers; {need} are needed before publishing, so that no "
                   f"acknowledged write is lost; trying again")
        if opening != self.opening:
            log.warning("%s", opening, extra={"term": self.term, "heard": heard, "need": need})
        self.opening = opening
        return False

    def _desired_from_held(self) -> source_base.Desired:
        held = self.engine.held.snapshot
        names = held.name_map() if held is not None else {}
        return source_base.Desired(dict(self.engine.table), names)

    async def _hold_office(self) -> None:
        try:
            still = await self.lease.renew()
        except errors.LeaseUnavailable as exc:
            self._lease_trouble(exc)
            still = False
        if not still:
            await self._step_down(f"lease {self.lease.backend} lost at term {self.term}",
                                  cause="renew-failed")
            return
        self._spread_beat()
        self._retire_workers()
        if self._check_refusal():
            await self._resign(self.refusal, cause="released")
            return
        if self.engine.max_term_seen > self.term or self._leading.spent == self.term:
            await self._bump()
            self._dirty.set()

    def _spread_beat(self) -> None:
        """Kubernetes backends: hand this renewal's beat (core.beats) to one peer at once,
        rotating, with a digest exchange. Followers judge expiry from the last beat they
        heard; without this, a leader killed right after renewing may have told nobody, and
        followers would wait a second LEASE_DURATION. One small exchange per renewal."""
        if not getattr(self.lease, "spreads_beats", False):
            return  # other backends have no beats
        if self._beat_task is not None and not self._beat_task.done():
            return
        live = [p.address for p in self.engine.membership.peers()
                if p.state is not peers.PeerState.DEAD]
        if live:
            self._beat_turn = (self._beat_turn + 1) % len(live)
            self._beat_task = asyncio.create_task(
                self.engine.exchange_with(live[self._beat_turn]), name="lease.beat")

    async def _bump(self) -> None:
        old = self.term
        spent = self._leading.spent == old
        try:
            term = await self.lease.bump(min_term=max(self.engine.max_term_seen, old) + 1)
        except errors.LeaseError as exc:
            await self._step_down(f"could not move term {old} up: {exc}", cause="bump-failed")
            return
        self._leading.moved(term)
        self.engine.note_term(term)
        why = "its term was spent" if spent else "a higher term was seen in the cluster"
        log.warning("moved term %d -> %d: %s", old, self.term, why,
                    extra={"old_term": old, "term": self.term})

    async def _step_down(self, reason: str, *, cause: str) -> None:
        """cause: telemetry.LOSS_REASONS (gossip_agent_lease_losses_total{reason})."""
        if not self.holds_lease:
            return
        log.warning("stepping down: %s", reason,
                    extra={"reason": reason, "cause": cause, "term": self.term})
        self.engine.telemetry.lease_lost(backend=self.lease.backend, reason=cause)
        self._leading.leave()
        self.opening = ""
        await self._stop_publishing(errors.NotLeader(f"this agent stopped leading: {reason}"))
        self.office_changed.set()

    async def _resign(self, reason: str, *, cause: str) -> None:
        held = self.holds_lease
        await self._step_down(reason, cause=cause)
        if held:
            try:
                await self.lease.release()
            except errors.LeaseError as exc:
                log.warning("could not release the lease: %s", exc)

    async def _stop_publishing(self, exc: Exception) -> None:
        tasks = [w.task for w in self._workers.values()]
        if self._publisher is not None:
            tasks.append(self._publisher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._publisher = None
        self._published_in_term = False
        self._publish_failures = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._previous = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters = []

    # -- publishing ---------------------------------------------------------------------------

    def source_changed(self, desired: source_base.Desired) -> None:
        """A new desired table from the source (file): published if this agent leads (or is
        about to publish its term's first snapshot)."""
        if self.holds_lease and self._publisher is not None:
            self._desired = desired
            self._dirty.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            now = self.engine.clock()
            at = coalesce.publish_at(
                now=now, last_publish=self._last_publish, window=self.timing.coalesce_window
            )
            if at > now:
                await asyncio.sleep(at - now)
            self._dirty.clear()
            self._publish_now()

    def _publish_now(self) -> None:
        assert self._desired is not None
        waiters, self._waiters = self._waiters, []
        held = self.engine.held.version
        if held.term > self.term or self._leading.spent == self.term:
            self._waiters = waiters  # wait for the bump; the lease loop wakes on `higher`
            return
        if held.term == self.term and held.seq >= versions.U64_MAX:
            self._waiters = waiters  # no seq left in this term: move to the next one
            self.engine.spend_term()
            return
        if not self.lease.proven():  # e.g. woken from SIGSTOP past the renew deadline: the
            self._waiters = waiters  # lease loop renews now (and steps down) before anything
            self._leading.higher.set()  # is published under a term that may be over
            return
        version = held.next_seq() if held.term == self.term else versions.Version(self.term, 1)
        snapshot = snapshots.build(
            version=version, leader=self.engine.node, leader_address=self.engine.address,
            entries=self._desired.entries, names=self._desired.names,
        )
        self._published_ns = time.monotonic_ns()
        self._last_publish = self.engine.clock()
        try:
            self.engine.receive(snapshot, via="self")
        except errors.DataPlaneError as exc:
            self._publish_failed(version, exc, waiters)
            return
        except errors.GossipAgentError as exc:
            # The desired table itself is unusable (it cannot become a valid snapshot): publish
            # nothing, fall back to what it holds, and fail the writes that asked for it.
            log.error("not publishing %s: %s", version, exc)
            self._desired = self._desired_from_held()
            _fail(waiters, exc)
            return
        self._published(snapshot, waiters)

    def _publish_failed(self, version: versions.Version, exc: errors.DataPlaneError,
                        waiters: list[asyncio.Future[snapshots.Snapshot]]) -> None:
        """The leader's own map refused the snapshot: nothing is published, the desired
        table is kept and published again after a backoff, the writes waiting fail now."""
        self._publish_failures += 1
        delay = min(PUBLISH_RETRY_CAP, PUBLISH_RETRY_BASE * 2 ** (self._publish_failures - 1))
        log.error("not publishing %s: %s; the desired table is kept and published again in "
                  "%.1fs (attempt %d)", version, exc, delay, self._publish_failures)
        _fail(waiters, errors.DataPlaneError(
            f"{exc}; the change is kept and published once this leader's map takes it"))
        self._retry = asyncio.get_running_loop().call_later(delay, self._dirty.set)

    def _published(self, snapshot: snapshots.Snapshot,
                   waiters: list[asyncio.Future[snapshots.Snapshot]]) -> None:
        if self._publish_failures:
            log.info("published %s after %d failed map write(s)", snapshot.version,
                     self._publish_failures)
        self._publish_failures = 0
        if not self._published_in_term:
            self._published_in_term = True
            self.office_changed.set()  # in office now: a LeaderOnly source starts watching
        publication = self._encode(snapshot)
        self._reconcile_workers()
        wanted = (quorum.write_acks(len(self._workers) + 1) + ACK_SLACK if waiters
                  else ACK_SAMPLE)
        asked = self._ack_sample(wanted)
        for address, worker in self._workers.items():
            worker.offer(publication, want_ack=address in asked)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(snapshot)

    def _encode(self, snapshot: snapshots.Snapshot) -> Publication:
        previous, self._previous = self._previous, snapshot
        delta = snapshots.delta_between(previous, snapshot) if previous is not None else None
        return Publication(snapshot, delta, written_ns=self._published_ns)

    def _ack_sample(self, wanted: int) -> set[str]:
        """`wanted` live peers (all there are, if fewer), rotating so every peer is asked
        now and then."""
        live = [p.address for p in self.engine.membership.peers()
                if p.state is not peers.PeerState.DEAD]
        if not live:
            return set()
        self._ack_turn = (self._ack_turn + 1) % len(live)
        return {live[(self._ack_turn + i) % len(live)] for i in range(min(wanted, len(live)))}

    def _reconcile_workers(self) -> None:
        members = set(self.engine.membership.addresses())
        for address in members - self._workers.keys():
            self._workers[address] = PushWorker(self, address)
        self._retire_workers(members)

    def _retire_workers(self, members: set[str] | None = None) -> None:
        """Ends the push workers of peers that left (every renewal and publish): none outlives
        its peer, and a new agent that reuses the address starts with what a new peer gets."""
        if members is None:
            members = set(self.engine.membership.addresses())
        for address in self._workers.keys() - members:
            self._workers.pop(address).task.cancel()

    def on_ack(self, address: str, ack: pb.PushAck) -> None:
        """A PushAck from a peer's stream (the transport calls this)."""
        engine = self.engine
        held = wire.version_from_pb(ack.held)
        engine.membership.saw_version(address, now=engine.clock(), version=held)
        if held.term == self.term and held > engine.held.version:
            engine.contest_term(held, via=f"a stale refusal by {address}")
        # What a peer says it holds or saw is a claim (gossip/proof.py bounds it).
        engine.note_claimed_term(max(held.term, ack.max_term_seen))
        if ack.result == pb.PushAck.STALE:
            log.warning("peer %s refused a push as stale: it holds %s", address, held,
                        extra={"peer": address, "held": str(held), "term": self.term})
        elif ack.result == pb.PushAck.NEED_FULL and address in self._workers:
            self._workers[address].resend_full()
        for wait in self._ack_waits:
            wait.heard(address, held)

    # -- admin writes -------------------------------------------------------------------------

    async def write(
        self, *, updates: dict[int, tuple[int, str]], deletes: tuple[int, ...]
    ) -> WriteResult:
        if not self.leading or self._desired is None:
            detail = "is taking office" if self.holds_lease else "is not the leader"
            raise errors.NotLeader(f"this agent {detail}; retry shortly")
        if not self.source.accepts_writes:
            raise errors.SourceReadOnly(
                f"the leader's source is {self.source.kind}; change that source instead"
            )
        entries = dict(self._desired.entries)
        names = dict(self._desired.names)
        for key in deletes:
            entries.pop(key, None)
            names.pop(key, None)
        for key, (replicas, name) in updates.items():
            entries[key] = replicas
            if name:
                names[key] = name
        if len(entries) > self.engine.dataplane.max_entries:
            raise errors.SnapshotTooLarge(
                f"the map holds {self.engine.dataplane.max_entries} services; it is full"
            )
        self._desired = source_base.Desired(entries, names)
        waiter: asyncio.Future[snapshots.Snapshot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dirty.set()
        snapshot = await waiter
        need = quorum.write_acks(len(self.engine.membership.addresses()) + 1)
        acked = await self._wait_for_acks(snapshot.version, need=need)
        return WriteResult(snapshot.version, snapshot.leader, acked, self._published_ns,
                           quorum=need)

    def _holders(self, version: versions.Version) -> set[str]:
        return {p.address for p in self.engine.membership.peers() if p.version_known >= version}

    async def _wait_for_acks(self, version: versions.Version, *, need: int) -> int:
        """Waits until `need` peers hold `version` (core.quorum.write_acks: with this leader a
        majority, which every later leader's digest round meets); gives up after
        WRITE_ACK_TIMEOUT and reports the count, which the caller compares with the quorum.
        Each ack adds its peer to the write's count (_AckWait) instead of waking the write to
        recount every peer: O(1) per ack rather than O(N), with ~N/2 acks per write."""
        wait = _AckWait(version, need, self._holders(version),
                        asyncio.get_running_loop().create_future())
        if not wait.done.done():
            self._ack_waits.append(wait)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timing.write_ack_timeout):
                        await wait.done
            finally:
                self._ack_waits.remove(wait)
        # Peers that acked hold it (versions never go back); digests may have shown more.
        return len(wait.holders | self._holders(version))


@dataclasses.dataclass
class _AckWait:
    """One admin write waiting for `need` peers to hold `version`: `holders` so far."""

    version: versions.Version
    need: int
    holders: set[str]
    done: asyncio.Future[None]

    def __post_init__(self) -> None:
        self._check()

    def heard(self, address: str, held: versions.Version) -> None:
        """A PushAck from `address`, which holds `held`."""
        if held >= self.version and address not in self.holders:
            self.holders.add(address)
            self._check()

    def _check(self) -> None:
        if len(self.holders) >= self.need and not self.done.done():
            self.done.set_result(None)


def _fail(waiters: list[asyncio.Future[snapshots.Snapshot]], exc: Exception) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
