"""The leader's own safety rules in a simulated cluster (issue 14): a forged or absurd version
of its term cannot stall it, taking office happens whole or not at all, and a failed write to
its own map loses nothing.

Real engines and leadership over memnet, memory maps and a memory lease (tools/lab/simcluster.py).
Deadlines are liveness bounds, many times the 50 ms timers involved.
"""

from __future__ import annotations

import asyncio

import pytest

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import wire
from gossip_agent.leases import base as lease_base
from gossip_agent.leases import memory as memory_lease
from gossip_agent.v1 import gossip_pb2 as pb
from lab import simcluster as sim

pytestmark = pytest.mark.sim

SVC = snapshots.parse_ip("10.96.0.10")
OTHER = snapshots.parse_ip("10.96.0.99")
DEADLINE = 5.0


def forged(leader: sim.SimAgent, version: versions.Version) -> pb.Snapshot:
    """A snapshot naming the current leader, at a version it never wrote."""
    return wire.snapshot_to_pb(snapshots.build(
        version=version, leader=leader.node, leader_address=leader.address,
        entries={OTHER: 7}, names={OTHER: "evil/forged"}))


def holds_no_forgery(cluster: sim.SimCluster) -> bool:
    return all(OTHER not in table for table in cluster.tables())


async def test_a_forged_seq_in_the_leaders_term_is_refused_and_superseded_by_its_next_write(
) -> None:
    c = sim.SimCluster(3, seed=14)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        await leader.leadership.write(updates={SVC: (1, "default/web")}, deletes=())
        term = leader.leadership.term
        absurd = versions.Version(term, versions.U64_MAX)
        follower = next(a for a in c.agents if a is not leader)
        # A member with a valid certificate pushes it to a follower (who cannot tell) and to
        # the leader (who can: it wrote everything of its own term).
        assert follower.engine.handle_push(forged(leader, absurd)).result == pb.PushAck.ADOPTED
        ack = leader.engine.handle_push(forged(leader, absurd))
        assert ack.result == pb.PushAck.CONFLICT
        assert OTHER not in leader.dataplane.read() and leader.engine.held.version < absurd
        assert leader.engine.stats.rejected["forged"] == 1
        # The next write is not stalled behind seq 2^64-1: it comes at a new term, which
        # every agent adopts over the forgery.
        written = await asyncio.wait_for(
            leader.leadership.write(updates={SVC: (2, "default/web")}, deletes=()), DEADLINE)
        assert written.version.term > term and written.version.seq == 1
        await c.wait_for("every agent at the new term, without the forged entry",
                         lambda: all(a.engine.held.version >= written.version for a in c.agents)
                         and holds_no_forgery(c), DEADLINE)
        assert all(t == {SVC: 2} for t in c.tables())


async def test_a_forgery_only_a_follower_saw_is_found_by_its_stale_refusal_and_superseded(
) -> None:
    c = sim.SimCluster(3, seed=15)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        await leader.leadership.write(updates={SVC: (1, "default/web")}, deletes=())
        term = leader.leadership.term
        for follower in (a for a in c.agents if a is not leader):
            follower.engine.handle_push(forged(leader, versions.Version(term, 10**6)))
        # The leader writes on at seq 3 in its term; the followers refuse that as stale,
        # which tells the leader of a version of its term it never wrote.
        await leader.leadership.write(updates={SVC: (3, "default/web")}, deletes=())
        await c.wait_for("the leader moved above its contested term",
                         lambda: leader.leadership.term > term, DEADLINE)
        await c.wait_for("every agent holding the leader's table at the new term",
                         lambda: all(a.engine.held.version.term == leader.leadership.term
                                     for a in c.agents) and holds_no_forgery(c), DEADLINE)
        assert all(t == {SVC: 3} for t in c.tables())


async def test_an_exhausted_seq_moves_the_term_up_instead_of_stopping_publication() -> None:
    c = sim.SimCluster(2, seed=16)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        term = leader.leadership.term
        # As if the leader had written 2^64-1 snapshots in its term (via "self": its own).
        last = snapshots.build(version=versions.Version(term, versions.U64_MAX),
                               leader=leader.node, leader_address=leader.address,
                               entries={SVC: 1}, names={SVC: "default/web"})
        leader.engine.receive(last, via="self")
        written = await asyncio.wait_for(
            leader.leadership.write(updates={SVC: (4, "default/web")}, deletes=()), DEADLINE)
        assert written.version == versions.Version(leader.leadership.term, 1)
        assert written.version.term > term
        await c.wait_for("both agents at the new term", lambda: all(
            a.engine.held.version == written.version for a in c.agents), DEADLINE)


class BumpFailsOnce(memory_lease.MemoryLease):
    """A memory lease whose grant is followed by a peer seeing a higher term (so taking office
    needs a bump) and whose first bump fails, as when the backend is lost at that moment."""

    def __init__(self, store: memory_lease.MemoryLeaseStore, *, node: str,
                 peer: sim.SimAgent) -> None:
        super().__init__(store, node=node)
        self.peer = peer
        self.bumps_failed = 0

    async def try_acquire(self, *, min_term: int) -> lease_base.Grant | None:
        grant = await super().try_acquire(min_term=min_term)
        if grant is not None and not self.bumps_failed:
            self.peer.engine.note_term(grant.term + 5)  # the digest round will show it
        return grant

    async def bump(self, *, min_term: int) -> int:
        if not self.bumps_failed:
            self.bumps_failed += 1
            self.store.holder = ""  # lost it meanwhile
            raise errors.LeaseLost("lease is held by nobody")
        return await super().bump(min_term=min_term)


def publishers() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == "gossip.publish" and not t.done())


async def test_a_failed_bump_while_taking_office_starts_nothing_and_leaks_nothing() -> None:
    c = sim.SimCluster(2, seed=17)
    candidate, peer = c.agents
    candidate.lease = BumpFailsOnce(c.lease_store, node=candidate.node, peer=peer)
    candidate.leadership.lease = candidate.lease
    violations: list[str] = []
    stop = asyncio.Event()

    async def watch() -> None:
        """`leading` only once the term's first snapshot is held; never two publishers."""
        while not stop.is_set():
            ship = candidate.leadership
            if ship.leading and candidate.engine.held.version.term != ship.term:
                violations.append(f"leading at term {ship.term} holding "
                                  f"{candidate.engine.held.version}")
            if not ship.holds_lease and publishers():
                violations.append("a publisher runs without the lease")
            if publishers() > 1:
                violations.append(f"{publishers()} publishers")
            await asyncio.sleep(0)

    async with asyncio.timeout(3 * DEADLINE), sim.running(c, campaigners=1):
        watcher = asyncio.create_task(watch())
        leader = await c.leader()
        assert leader is candidate and candidate.lease.bumps_failed == 1
        await leader.leadership.write(updates={SVC: (1, "default/web")}, deletes=())
        await c.wait_for("the peer holding the write",
                         lambda: peer.engine.held.version == leader.engine.held.version,
                         DEADLINE)
        stop.set()
        await watcher
    assert violations == []
    assert leader.engine.held.version.term > 5  # above what the peer had seen


async def test_a_failed_write_to_the_leaders_map_is_kept_and_published_once_the_map_takes_it(
) -> None:
    c = sim.SimCluster(3, seed=18)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        await leader.leadership.write(updates={SVC: (1, "default/web")}, deletes=())
        leader.dataplane.fail_next = True  # the next apply fails, leaving the map as it was
        with pytest.raises(errors.DataPlaneError) as failed:
            await leader.leadership.write(updates={SVC: (5, "default/web")}, deletes=())
        # Nothing else asks for it: the leader publishes the kept table once its map takes it.
        await c.wait_for("every map holding the change that first failed",
                         lambda: all(t == {SVC: 5} for t in c.tables()), DEADLINE)
    assert "kept and published" in str(failed.value)  # the caller was told it is not lost


async def test_a_leader_elected_while_cut_off_publishes_only_once_it_hears_a_quorum() -> None:
    """The fault campaign's lost write: a node cut off from every peer won the lease after the
    leader died and published its stale table over a write peers had acknowledged. Now it
    holds the lease without publishing until its digest round reaches core.quorum.office_peers
    peers, which always include a holder of every acknowledged write."""
    c = sim.SimCluster(5, seed=19)
    first, *_, cut_off = c.agents
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        assert leader is first
        c.network.partition([[cut_off.address], [a.address for a in c.agents[:-1]]])
        written = await leader.leadership.write(updates={SVC: (7, "default/web")}, deletes=())
        assert written.acked_peers >= written.quorum == 2  # durable: 5 members
        c.network.take_down(first.address)
        await first.stop()
        c.lease_store.revoke()
        cut_off.tasks.append(asyncio.create_task(cut_off.leadership.run(), name="cut-off.elect"))
        await c.wait_for("the cut-off node holding the lease",
                         lambda: cut_off.leadership.holds_lease, DEADLINE)
        await asyncio.sleep(0.5)  # ten renewals: it must not take office alone
        assert not cut_off.leadership.leading, "published without hearing any peer"
        assert "reached 0 of 4 peers; 2 are needed" in cut_off.leadership.opening
        assert all(a.dataplane.read() == {SVC: 7} for a in c.agents[1:-1])
        c.network.heal()
        await c.wait_for("the new leader in office", lambda: cut_off.leadership.leading,
                         DEADLINE)
        others = c.agents[1:]
        await c.wait_for("every live agent at the new term", lambda: all(
            a.engine.held.version.term == cut_off.leadership.term for a in others), DEADLINE)
        assert all(a.dataplane.read() == {SVC: 7} for a in others), "the write was lost"
