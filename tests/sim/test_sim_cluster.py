"""Simulated clusters: 50 agents in one event loop over memnet, with loss, delay, partitions.

Deadlines are liveness bounds (many times the 50 ms timers involved); safety is asserted
strictly: one leader per term, and no agent's version ever goes backwards.
"""

from __future__ import annotations

import asyncio

import pytest

from gossip_agent.core import snapshots, versions
from lab import simcluster as sim

pytestmark = pytest.mark.sim
SVC = snapshots.parse_ip("10.96.0.10")


def versions_now(c: sim.SimCluster) -> list[versions.Version]:
    return [a.engine.held.version for a in c.agents]


async def watch_monotonic(c: sim.SimCluster, stop: asyncio.Event) -> None:
    """Fails if any agent's held version ever decreases while the test runs."""
    last = versions_now(c)
    while not stop.is_set():
        now = versions_now(c)
        for agent, before, after in zip(c.agents, last, now, strict=True):
            assert after >= before, f"{agent.node} went back from {before} to {after}"
        last = now
        await asyncio.sleep(0.005)


def one_leader_per_term(c: sim.SimCluster) -> None:
    holders_by_term: dict[int, set[str]] = {}
    for holder, term in c.lease_store.acquisitions:
        holders_by_term.setdefault(term, set()).add(holder)
    assert all(len(h) == 1 for h in holders_by_term.values()), holders_by_term
    terms = [t for _, t in c.lease_store.acquisitions]
    assert terms == sorted(terms) and len(set(terms)) == len(terms)


async def test_fifty_agents_with_loss_and_delay_converge_on_every_write():
    c = sim.SimCluster(50, seed=7, loss=0.1, delay=(0.0, 0.004))
    stop = asyncio.Event()
    async with sim.running(c, campaigners=3):
        monitor = asyncio.create_task(watch_monotonic(c, stop))
        leader = await c.leader()
        for replicas in (0, 3, 1):
            await leader.leadership.write(updates={SVC: (replicas, "default/web")}, deletes=())
            target = leader.engine.held.version
            await c.wait_for(f"all 50 agents at {target}",
                             lambda t=target: all(v >= t for v in versions_now(c)), 15)
            assert all(t == {SVC: replicas} for t in c.tables())
        stop.set()
        await monitor
    one_leader_per_term(c)


async def test_after_a_partition_heals_the_newest_term_wins_everywhere():
    c = sim.SimCluster(50, seed=3, delay=(0.0, 0.002))
    stop = asyncio.Event()
    side_a = [a.address for a in c.agents[:25]]
    side_b = [a.address for a in c.agents[25:]]
    async with sim.running(c, campaigners=1):
        monitor = asyncio.create_task(watch_monotonic(c, stop))
        first = await c.leader(timeout=15)
        assert first is c.agents[0]
        await first.leadership.write(updates={SVC: (1, "default/web")}, deletes=())
        c.network.partition([side_a, side_b])
        # The old leader keeps writing on its side: higher seqs in the old term.
        for replicas in (2, 3, 4):
            await first.leadership.write(updates={SVC: (replicas, "")}, deletes=())
        old_term = first.engine.held.version.term
        # Its lease expires; an agent on the other side takes over with a newer term.
        c.lease_store.revoke()
        successor = c.agents[49]
        successor.tasks.append(asyncio.create_task(successor.leadership.run(), name="elect-49"))
        await c.wait_for("the successor to lead", lambda: successor.leadership.leading, 15)
        await successor.leadership.write(updates={SVC: (0, "default/web")}, deletes=())
        new_version = successor.engine.held.version
        assert new_version.term > old_term
        await c.wait_for("side B at the new term",
                         lambda: all(a.engine.held.version >= new_version
                                     for a in c.agents[25:]), 15)
        assert all(a.engine.held.version.term == old_term for a in c.agents[1:25])
        c.network.heal()
        await c.wait_for("everyone at the newest term after healing",
                         lambda: all(v >= new_version for v in versions_now(c)), 15)
        assert all(t == {SVC: 0} for t in c.tables())
        assert not first.leadership.leading
        stop.set()
        await monitor
    one_leader_per_term(c)


async def test_a_leader_refused_as_stale_moves_its_term_above_the_cluster():
    c = sim.SimCluster(5, seed=5)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        await leader.leadership.write(updates={SVC: (1, "")}, deletes=())
        high = leader.engine.held.version
        # The backend forgets its counter (FLUSHALL, a recreated ConfigMap) and the leader
        # re-acquires at term 1 while every agent holds a higher term.
        c.lease_store.reset_counter()
        await c.wait_for("a leader again", lambda: len(c.leaders()) == 1 and
                         c.leaders()[0].engine.held.version > high, 5)
        leader = c.leaders()[0]
        result = await leader.leadership.write(updates={SVC: (2, "")}, deletes=())
        assert result.version.term > high.term
        await c.wait_for("all agents at the new write",
                         lambda: all(v >= result.version for v in versions_now(c)), 5)


async def test_a_dead_peer_does_not_slow_convergence_of_the_others():
    c = sim.SimCluster(8, seed=11)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        c.network.take_down(c.agents[7].address)
        for replicas in range(5):
            await leader.leadership.write(updates={SVC: (replicas, "")}, deletes=())
            target = leader.engine.held.version
            await c.wait_for("the 7 live agents", lambda t=target: all(
                a.engine.held.version >= t for a in c.agents[:7]), 2)
        assert c.agents[7].engine.held.version < leader.engine.held.version
        c.network.register(c.agents[7].address, c.agents[7].engine)
        await c.wait_for("the revived agent to catch up", lambda: c.agents[7].engine.held.version
                         == leader.engine.held.version, 5)


async def test_an_acknowledged_write_survives_the_leader_vanishing_right_after():
    c = sim.SimCluster(6, seed=13)
    async with sim.running(c, campaigners=3):
        leader = await c.leader()
        result = await leader.leadership.write(updates={SVC: (7, "default/web")}, deletes=())
        assert result.acked_peers >= 1
        # The leader vanishes at once: only the acknowledging peers may hold the write.
        c.network.take_down(leader.address)
        await leader.stop()
        c.lease_store.revoke()
        await c.wait_for("a new leader", lambda: any(
            a.leadership.leading and a is not leader for a in c.agents), 5)
        successor = next(a for a in c.agents if a.leadership.leading and a is not leader)
        assert successor.engine.held.version.term > result.version.term
        assert successor.dataplane.read() == {SVC: 7}
        others = [a for a in c.agents if a is not leader]
        await c.wait_for("every live agent at the new term", lambda: all(
            a.engine.held.version >= successor.engine.held.version for a in others), 5)
        assert all(a.dataplane.read() == {SVC: 7} for a in others)
