"""The receiving side of the push path, on one engine (memory map): deltas and their fallbacks."""

from __future__ import annotations

import random

import pytest

from gossip_agent.core import peers, snapshots, versions
from gossip_agent.dataplane import memory
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import memory as memnet
from gossip_agent.gossip import wire
from gossip_agent.v1 import gossip_pb2 as pb

pytestmark = pytest.mark.sim
V = versions.Version


def make_engine() -> engine_mod.Engine:
    rng = random.Random(1)
    network = memnet.MemoryNetwork(rng=rng)
    return engine_mod.Engine(
        node="n1", address="n1:1", boot_id="b", dataplane=memory.MemoryDataPlane(max_entries=16),
        transport=network.transport_for("n1:1"),
        membership=peers.Membership(self_address="n1:1", policy=peers.BackoffPolicy(), rng=rng),
        rpc_timeout=1.0, rng=rng,
    )


def snap(seq: int, entries: dict[int, int]) -> snapshots.Snapshot:
    return snapshots.build(version=V(1, seq), leader="l", leader_address="l:1", entries=entries,
                           names={key: f"ns/svc-{key}" for key in entries})


def test_a_delta_on_the_held_base_is_adopted_with_the_held_names():
    engine = make_engine()
    first, second = snap(1, {1: 1, 2: 1}), snap(2, {1: 0, 2: 1})
    engine.handle_push(wire.snapshot_to_pb(first))
    delta = snapshots.delta_between(first, second)
    ack = engine.handle_push(wire.delta_to_pb(delta))
    assert ack.result == pb.PushAck.ADOPTED
    assert engine.dataplane.read() == {1: 0, 2: 1}
    assert engine.held.complete and engine.held.snapshot.name_map()[1] == "ns/svc-1"


def test_a_delta_on_a_base_not_held_asks_for_the_full_snapshot_and_changes_nothing():
    engine = make_engine()
    first, second, third = snap(1, {1: 1}), snap(2, {1: 2}), snap(3, {1: 3})
    engine.handle_push(wire.snapshot_to_pb(first))
    ack = engine.handle_push(wire.delta_to_pb(snapshots.delta_between(second, third)))
    assert ack.result == pb.PushAck.NEED_FULL
    assert wire.ack_wanted(pb.Snapshot(), ack)  # always sent back, even unasked
    assert engine.held.version == V(1, 1) and engine.dataplane.read() == {1: 1}


def test_an_old_delta_is_stale_not_a_request_for_more():
    engine = make_engine()
    first, second, third = snap(1, {1: 1}), snap(2, {1: 2}), snap(3, {1: 3})
    engine.handle_push(wire.snapshot_to_pb(third))
    ack = engine.handle_push(wire.delta_to_pb(snapshots.delta_between(first, second)))
    assert ack.result == pb.PushAck.STALE
    assert engine.held.version == V(1, 3)


def test_a_snapshot_without_names_fills_them_from_the_held_one_or_marks_itself_incomplete():
    engine = make_engine()
    first, second = snap(1, {1: 1}), snap(2, {1: 5})
    engine.handle_push(wire.snapshot_to_pb(first))
    engine.handle_push(wire.snapshot_to_pb(second, omit_names=True))
    assert engine.held.complete and engine.held.snapshot.names == ("ns/svc-1",)
    renamed = snapshots.build(version=V(1, 3), leader="l", leader_address="l:1",
                              entries={1: 5}, names={1: "ns/other"})
    engine.handle_push(wire.snapshot_to_pb(renamed, omit_names=True))
    assert engine.held.version == V(1, 3) and engine.dataplane.read() == {1: 5}
    assert not engine.held.complete  # the names must come from anti-entropy
    ack = engine.handle_push(wire.snapshot_to_pb(renamed))
    assert ack.result == pb.PushAck.ADOPTED and engine.held.complete
