"""The mirror (ebpf:service_list / ebpf:coordination) over a simulated cluster and MemorySink,
and a leader whose lease lapsed publishing nothing (Lease.proven())."""

from __future__ import annotations

import asyncio

import pytest

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import mirror
from lab import simcluster as sim

pytestmark = pytest.mark.sim
SVC = snapshots.parse_ip("10.96.0.10")


def mirror_of(agent: sim.SimAgent, sink: mirror.MemorySink) -> mirror.Mirror:
    return mirror.Mirror(engine=agent.engine, leadership=agent.leadership, sink=sink,
                         period=0.05)


async def test_only_the_leader_mirrors_its_snapshots_and_every_node_heartbeats() -> None:
    c = sim.SimCluster(3, seed=5)
    sink = mirror.MemorySink()
    async with sim.running(c):
        leader = await c.leader()
        result = await leader.leadership.write(updates={SVC: (4, "default/web")}, deletes=())
        await c.wait_for("every agent at the write", lambda: all(
            a.engine.held.version >= result.version for a in c.agents), 5)
        followers = [a for a in c.agents if a is not leader]
        for follower in followers:
            await mirror_of(follower, sink).publish()
        assert sink.document is None, "a follower wrote the mirror"
        leader_mirror = mirror_of(leader, sink)
        await leader_mirror.publish()
        assert sink.version == result.version
        stored = mirror.snapshot_of(sink.document or "")
        assert stored.entries() == {SVC: 4} and stored.name_map() == {SVC: "default/web"}
        for agent in c.agents:
            await mirror_of(agent, sink).heartbeat()
        expected = (result.version.term, result.version.seq, leader.node)
        assert sink.heartbeats == [expected] * len(c.agents)


async def test_a_fresh_agent_warm_starts_from_the_mirror_and_a_newer_one_ignores_it() -> None:
    source = sim.SimCluster(1, seed=6)
    sink = mirror.MemorySink()
    async with sim.running(source):
        leader = await source.leader()
        result = await leader.leadership.write(updates={SVC: (9, "default/api")}, deletes=())
        await mirror_of(leader, sink).publish()
    assert sink.version == result.version

    fresh = sim.SimCluster(2, seed=7)
    for agent in fresh.agents:
        agent.engine.load()
    newer, empty = fresh.agents
    newer.engine.receive(snapshots.build(
        version=versions.Version(result.version.term + 1, 1), leader="node-x",
        leader_address="", entries={SVC: 1}, names={}), via="test")
    await mirror_of(empty, sink).warm_start()
    await mirror_of(newer, sink).warm_start()
    assert empty.engine.held.version == result.version
    assert empty.dataplane.read() == {SVC: 9}
    assert newer.engine.held.version.term == result.version.term + 1, "the mirror moved it back"
    assert newer.dataplane.read() == {SVC: 1}


async def test_a_forged_mirror_document_is_not_adopted() -> None:
    fresh = sim.SimCluster(1, seed=8)
    agent = fresh.agents[0]
    agent.engine.load()
    sink = mirror.MemorySink()
    sink.document = mirror.document_of(snapshots.build(
        version=versions.Version(3, 1), leader="node-x", leader_address="",
        entries={SVC: 2}, names={})).replace('"replicas":2', '"replicas":0')
    await mirror_of(agent, sink).warm_start()
    assert agent.engine.held.version == versions.ZERO
    assert agent.dataplane.read() == {}


async def test_a_leader_whose_lease_lapsed_publishes_nothing_and_its_write_fails() -> None:
    c = sim.SimCluster(3, seed=9)
    async with sim.running(c, campaigners=1):
        leader = await c.leader()
        first = await leader.leadership.write(updates={SVC: (1, "")}, deletes=())
        c.lease_store.revoke()  # the lease lapsed; the leader has not renewed yet
        assert not leader.lease.proven()
        with pytest.raises(errors.NotLeader):
            await asyncio.wait_for(
                leader.leadership.write(updates={SVC: (2, "")}, deletes=()), timeout=5)
        assert all(a.dataplane.read() == {SVC: 1} for a in c.agents), "the write leaked"
        assert all(a.engine.held.version >= first.version for a in c.agents)


async def test_a_burst_of_changes_adds_no_heartbeat_beyond_one_per_period() -> None:
    """Each agent's heartbeat goes out once per period; adoptions wake only the leader's mirror
    write (they once cost every agent a backend write per change)."""
    c = sim.SimCluster(2, seed=8)
    sink = mirror.MemorySink()
    async with sim.running(c):
        leader = await c.leader()
        follower = next(a for a in c.agents if a is not leader)
        period = 0.5
        task = asyncio.create_task(mirror.Mirror(
            engine=follower.engine, leadership=follower.leadership, sink=sink,
            period=period).run(), name="test.mirror")
        try:
            await asyncio.sleep(0.05)  # the first heartbeat, at start
            started = asyncio.get_running_loop().time()
            for replicas in range(20):
                result = await leader.leadership.write(updates={SVC: (replicas, "default/web")},
                                                       deletes=())
                await c.wait_for("the follower at the write", lambda r=result: (
                    follower.engine.held.version >= r.version), 5)
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert len(sink.heartbeats) <= 2 + elapsed / period, (len(sink.heartbeats), elapsed)
    assert sink.document is None  # a follower never writes the mirror
