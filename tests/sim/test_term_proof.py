"""gossip/proof.py over the in-memory lease: one backend read per new (term, leader) pair,
refusals remembered, bare term claims bounded."""

from __future__ import annotations

import asyncio

import pytest

from gossip_agent import errors
from gossip_agent.gossip import proof
from gossip_agent.leases import base, memory

pytestmark = pytest.mark.sim


class CountingLease(memory.MemoryLease):
    reads = 0

    async def read(self) -> base.LeaseRecord | None:
        self.reads += 1
        return await super().read()


async def leader_at(term: int) -> tuple[CountingLease, proof.TermProof]:
    lease = CountingLease(memory.MemoryLeaseStore(), node="node-a")
    assert await lease.try_acquire(min_term=term) is not None
    return lease, proof.TermProof(lease=lease)


async def test_a_term_and_leader_the_record_shows_are_proven_with_one_read() -> None:
    lease, checker = await leader_at(7)
    for _ in range(5):
        await checker.check(term=7, leader="node-a", sender="ipv4:10.0.0.1:1")
    assert lease.reads == 1 and checker.known(term=7, leader="node-a")


async def test_a_term_or_leader_the_record_does_not_show_is_refused_and_remembered() -> None:
    lease, checker = await leader_at(7)
    refused: list[None] = []
    checker.on_refused = lambda: refused.append(None)
    for term, leader in ((1 << 62, "node-a"), (7, "node-b"), (6, "node-a")):
        for _ in range(3):
            with pytest.raises(errors.TermUnproven, match=f"term {term} of leader {leader}"):
                await checker.check(term=term, leader=leader, sender="ipv4:10.0.0.9:2")
    assert lease.reads == 3  # one per pair
    assert not checker.known(term=1 << 62, leader="node-a")
    assert len(refused) == 9  # each refusal counted, though read once


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
