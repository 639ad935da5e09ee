"""gossip/proof.py over the in-memory lease: one backend read per new (term, leader) pair,
refusals remembered, bare term claims bounded, the backend's mirror as a second witness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import mirror, proof
from gossip_agent.leases import base, memory

pytestmark = pytest.mark.sim


class CountingLease(memory.MemoryLease):
    reads = 0

    async def read(self) -> base.LeaseRecord | None:
        self.reads += 1
        return await super().read()


async def leader_at(term: int, *, on_refused: Callable[[], None] = lambda: None
                    ) -> tuple[CountingLease, proof.TermProof]:
    lease = CountingLease(memory.MemoryLeaseStore(), node="node-a")
    assert await lease.try_acquire(min_term=term) is not None
    return lease, proof.TermProof(lease=lease, on_refused=on_refused)


async def test_a_term_and_leader_the_record_shows_are_proven_with_one_read() -> None:
    lease, checker = await leader_at(7)
    for _ in range(5):
        await checker.check(term=7, leader="node-a", sender="ipv4:10.0.0.1:1")
    assert lease.reads == 1 and checker.known(term=7, leader="node-a")


async def test_a_term_or_leader_the_record_does_not_show_is_refused_and_remembered() -> None:
    refused: list[None] = []
    lease, checker = await leader_at(7, on_refused=lambda: refused.append(None))
    for term, leader in ((1 << 62, "node-a"), (7, "node-b"), (8, "node-a")):
        for _ in range(3):
            with pytest.raises(errors.TermUnproven, match=f"term {term} of leader {leader}"):
                await checker.check(term=term, leader=leader, sender="ipv4:10.0.0.9:2")
    assert lease.reads == 3  # one per pair
    assert not checker.known(term=1 << 62, leader="node-a")
    assert len(refused) == 9  # each refusal counted, though read once


async def test_a_term_below_the_records_is_history_and_believed_with_one_read() -> None:
    """The record shows only its current holder: a new leader must still adopt the newest
    snapshot its digest round finds, written under any earlier term (issue 14's fault campaign
    lost acknowledged writes when it refused them). It cannot stall anyone: the record's holder
    publishes above it."""
    lease, checker = await leader_at(7)
    for term, leader in ((6, "node-b"), (1, "node-c")):
        for _ in range(2):
            await checker.check(term=term, leader=leader, sender="x")
        assert checker.known(term=term, leader=leader)
    assert lease.reads == 2  # one per pair


async def test_a_refusal_expires_so_a_pair_the_record_shows_later_is_proven() -> None:
    """After a Sentinel failover the new master can show the leader's pair a moment after its
    first snapshot arrived: the refusal lasts REFUSAL_TTL, not for good."""
    store = memory.MemoryLeaseStore()
    lease = CountingLease(store, node="node-a")
    now = [100.0]
    checker = proof.TermProof(lease=lease, clock=lambda: now[0])
    with pytest.raises(errors.TermUnproven):
        await checker.check(term=9, leader="node-b", sender="x")
    assert await memory.MemoryLease(store, node="node-b").try_acquire(min_term=9) is not None
    now[0] += proof.REFUSAL_TTL - 0.1
    with pytest.raises(errors.TermUnproven):  # still remembered: no read for it
        await checker.check(term=9, leader="node-b", sender="x")
    assert lease.reads == 1
    now[0] += 0.2
    await checker.check(term=9, leader="node-b", sender="x")  # read again: shown now
    assert lease.reads == 2 and checker.known(term=9, leader="node-b")


async def test_a_released_lease_proves_no_new_pair() -> None:
    lease, checker = await leader_at(3)
    await lease.release()
    with pytest.raises(errors.TermUnproven, match="held by nobody"):
        await checker.check(term=3, leader="node-a", sender="x")


async def test_bare_claims_are_believed_only_within_the_slack_or_once_the_record_shows_them(
) -> None:
    lease, checker = await leader_at(5)
    await checker.check(term=5, leader="node-a", sender="x")
    accepted: list[int] = []
    checker.claimed(5 + proof.CLAIM_SLACK, accept=accepted.append)
    assert accepted == [5 + proof.CLAIM_SLACK]
    checker.claimed(1 << 62, accept=accepted.append)
    assert checker.pending_claim is not None
    await asyncio.wait_for(checker.pending_claim, timeout=2.0)
    assert accepted == [5 + proof.CLAIM_SLACK]  # the record shows 5: 2^62 never believed
    assert await lease.bump(min_term=1 << 40) == 1 << 40
    checker.claimed(1 << 40, accept=accepted.append)
    await asyncio.wait_for(checker.pending_claim, timeout=2.0)
    assert accepted[-1] == 1 << 40


async def test_a_pair_the_backends_mirror_shows_is_proven_and_nothing_else_is() -> None:
    """A cold cluster's warm start after the backend lost its counter: agents relay the
    mirrored snapshot of a former leader (term 6, "old") above the record's term (4); a peer
    finds it in the mirror instead of refusing it. A pair neither the record nor the mirror
    shows is still refused, and read once."""
    lease, checker = await leader_at(4)
    sink = mirror.MemorySink()
    sink.document = mirror.document_of(snapshots.build(
        version=versions.Version(6, 3), leader="old", leader_address="", entries={1: 1},
        names={}))
    mirror_reads: list[None] = []

    async def mirrored() -> tuple[int, str] | None:
        mirror_reads.append(None)
        return await mirror.pair_of(sink)()

    checker.mirrored = mirrored
    for _ in range(3):
        await checker.check(term=6, leader="old", sender="ipv4:10.0.0.2:1")
    assert checker.known(term=6, leader="old") and (lease.reads, len(mirror_reads)) == (1, 1)
    await checker.check(term=4, leader="node-a", sender="x")  # the record proves: no mirror read
    assert len(mirror_reads) == 1
    for term, leader in ((6, "rogue"), (1 << 62, "old")):
        for _ in range(2):
            with pytest.raises(errors.TermUnproven, match=f"term {term} of leader {leader}"):
                await checker.check(term=term, leader=leader, sender="ipv4:10.0.0.9:2")
    assert (lease.reads, len(mirror_reads)) == (4, 3)  # one of each per new pair
    sink.document = "{not json"
    with pytest.raises(errors.TermUnproven):  # an unreadable mirror proves nothing
        await checker.check(term=5, leader="old", sender="x")
    await checker.check(term=3, leader="old", sender="x")  # below the record: history
