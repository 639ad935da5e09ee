"""Terms are proven, not believed: a snapshot's (term, leader) must be what the lease backend
records before any agent adopts it.

Every backend stores the leader's effective term next to its holder in the same atomic step
that grants or bumps the lease (the bpffs pinned record, the Redis leader_record hash), so a
legitimate leader's snapshots always find their pair there before they exist. The first time
an agent meets a new (term, leader) pair it reads the record once (Lease.read); a match is
remembered (the hot path then costs one dict lookup), a mismatch is refused with
errors.TermUnproven, remembered for REFUSAL_TTL, counted (Stats.rejected["unproven-term"]) and
logged once per sender. A refusal expires because a pair can legitimately show up in the record
later than a snapshot under it: after a Redis Sentinel failover the new master may lag the old
one's grant, and a remembered refusal would then keep refusing the real leader for good.
Terms that arrive without a snapshot (a digest's or an ack's max_term_seen, which make a leader
move its next term above them) are believed up to CLAIM_SLACK above the highest term the record
has shown, and beyond that only once a background read of the record shows them. The slack
keeps the design's recovery from a counter that restarted (Redis FLUSHALL, a recreated
ConfigMap: the peers' terms are above the record, and the leader must move above them); it
bounds what a lying member can do to the epoch: each leadership step moves it at
most CLAIM_SLACK up, against 2^63 of room.

History is believed: a pair whose term is below the record's current term is not checked
further. The record keeps only its current holder, so a former leader's pair cannot be shown;
yet a new leader must adopt the newest snapshot its digest round finds, whatever term it was
written in, or it would publish over writes that peers acknowledged (a new leader that never
met its predecessor's term, a restarted agent with an empty memory of proofs, or a Redis
restarted without persistence, which loses the record's history). Such a snapshot cannot
stall anyone: the record's holder publishes above its term. What a member could do with it is
in docs/security.md's trust model.

One more witness, for a cold cluster's warm start: a former leader's last snapshot, which the
backend keeps as the mirror (gossip.mirror, written only by the holder of that term's lease).
Agents adopt it from the backend at start-up and relay it to peers that have not read it yet;
those peers find its pair in the mirror (one more read, on a record miss only) instead of
refusing it with an error line each. It adds no trust: the mirror lives in the same backend,
writable by the same credentials as the record.

What this stops: a member with a valid certificate that is not the leader, or a replayed or
forged message, pushing a snapshot with a made-up term (say 2^62) that every agent would
adopt and never leave. What remains trusted: whoever can write the lease backend (Redis
credentials, the bpffs directory, the Kubernetes object) can appoint a leader; a snapshot's
content is the leader's word (it is not signed), so a member that impersonates the current
leader's name in the current term is caught only as a CONFLICT (different content, same
version), not prevented.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gossip_agent import errors
from gossip_agent.leases import base as lease_base

log = logging.getLogger("gossip_agent.gossip")
_V = TypeVar("_V")

# Pairs remembered either way: a cluster changes term rarely; a flood of made-up terms costs
# one backend read each and evicts the oldest refusal, never a proof in use.
MAX_REMEMBERED = 256
# How far above the record a peer's bare claim of a term is believed (see above): far more
# terms than a cluster's backend could lose in a restart, a negligible part of 2^63.
CLAIM_SLACK = 1 << 20
# Seconds a refused pair stays refused without reading the record again: a flood of snapshots
# under a made-up pair costs at most one read per pair per period, and a pair that shows up
# later (a failover's lag) is believed within it. The leader's pushes are retried with backoff,
# so a legitimate pair refused once converges one period later at worst.
REFUSAL_TTL = 5.0

# Reads the (term, leader) of the snapshot the backend mirrors, or None (gossip.mirror.pair_of).
Mirrored = Callable[[], Awaitable[tuple[int, str] | None]]


class TermProof:
    def __init__(self, *, lease: lease_base.Lease,
                 on_refused: Callable[[], None] = lambda: None,
                 mirrored: Mirrored | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.clock = clock
        self.on_refused = on_refused
        self.mirrored = mirrored  # None: the backend keeps no mirror
        self.highest = 0  # the highest term the record has shown
        self._proven: collections.OrderedDict[tuple[int, str], str] = collections.OrderedDict()
        # pair -> (why, when it expires on `clock`)
        self._refused: collections.OrderedDict[tuple[int, str], tuple[str, float]] = (
            collections.OrderedDict())
        self._reported: set[str] = set()
        self.pending_claim: asyncio.Task[None] | None = None

    def known(self, *, term: int, leader: str) -> bool:
        """The no-I/O fast path: True when this pair was proven before."""
        return (term, leader) in self._proven

    async def check(self, *, term: int, leader: str, sender: str) -> None:
        """Returns when the record shows `leader` at `term`; raises TermUnproven otherwise."""
        pair = (term, leader)
        if pair in self._proven:
            return
        reason = self._still_refused(pair)
        if reason is None:
            # LeaseUnavailable from either read: refused this time, retried later.
            reason = self._judge(pair, await self.lease.read())
            if reason and self.mirrored is not None and await self.mirrored() == pair:
                reason = ""
            if reason:
                _remember(self._refused, pair, (reason, self.clock() + REFUSAL_TTL))
            else:
                self._refused.pop(pair, None)
                _remember(self._proven, pair, reason)
        if reason:
            self._refuse(pair, reason, sender=sender)

    def _still_refused(self, pair: tuple[int, str]) -> str | None:
        """Why the pair was refused, while that refusal lasts; None once it has expired."""
        refused = self._refused.get(pair)
        if refused is None or self.clock() >= refused[1]:
            return None
        return refused[0]

    def _judge(self, pair: tuple[int, str], record: lease_base.LeaseRecord | None) -> str:
        """Empty when the record shows the pair or has moved past its term, else why not."""
        term, leader = pair
        if record is not None:
            self.highest = max(self.highest, record.term)
            if record.term == term and record.holder and record.node == leader:
                return ""
            if term < record.term:
                return ""  # history: see the module docstring
        shown = (f"term {record.term} held by {record.node or 'nobody'}" if record is not None
                 else "no record")
        return (f"term {term} of leader {leader or '?'} is not proven by the "
                f"{self.lease.backend} lease record ({shown}); not adopted")

    def _refuse(self, pair: tuple[int, str], reason: str, *, sender: str) -> None:
        self.on_refused()
        host = sender.rpartition(":")[0] or sender  # "ipv4:10.0.0.7:43122": one per host
        if host not in self._reported and len(self._reported) < MAX_REMEMBERED:
            self._reported.add(host)
            log.error("refused a snapshot from %s: %s", sender, reason,
                      extra={"peer": sender, "term": pair[0], "leader": pair[1]})
        raise errors.TermUnproven(reason)

    def claimed(self, term: int, *, accept: Callable[[int], None]) -> None:
        """A bare term from a digest or an ack: accept(term) now when the record has shown
        one at least as high, else after one background read that shows it."""
        if term <= self.highest + CLAIM_SLACK:
            accept(term)
            return
        if self.pending_claim is not None and not self.pending_claim.done():
            return  # one read at a time; the next digest asks again
        self.pending_claim = asyncio.get_running_loop().create_task(
            self._check_claim(term, accept), name="gossip.prove-term")

    async def _check_claim(self, term: int, accept: Callable[[int], None]) -> None:
        try:
            record = await self.lease.read()
        except errors.LeaseUnavailable:
            return
        if record is not None:
            self.highest = max(self.highest, record.term)
        if term <= self.highest:
            accept(term)


def _remember(table: collections.OrderedDict[tuple[int, str], _V],
              pair: tuple[int, str], value: _V) -> None:
    table[pair] = value
    while len(table) > MAX_REMEMBERED:
        table.popitem(last=False)
