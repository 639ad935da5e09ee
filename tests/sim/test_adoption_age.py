"""The adoption latency without cross-node clocks: a snapshot carries its age (Snapshot.age_us)
and every hop adds the time it held it, measured on its own monotonic clock."""

from __future__ import annotations

import random
import time

import pytest

from gossip_agent.core import peers, snapshots, versions
from gossip_agent.dataplane import memory
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import memory as memnet
from gossip_agent.gossip import wire
from gossip_agent.observability import telemetry
from gossip_agent.v1 import gossip_pb2 as pb

pytestmark = pytest.mark.sim


def make_engine(node: str) -> tuple[engine_mod.Engine, telemetry.Recorder]:
    rng = random.Random(1)
    recorder = telemetry.Recorder()
    engine = engine_mod.Engine(
        node=node, address=f"{node}:1", boot_id="b",
        dataplane=memory.MemoryDataPlane(max_entries=16),
        transport=memnet.MemoryNetwork(rng=rng).transport_for(f"{node}:1"),
        membership=peers.Membership(self_address=f"{node}:1", policy=peers.BackoffPolicy(),
                                    rng=rng),
        rpc_timeout=1.0, rng=rng, telemetry=recorder,
    )
    return engine, recorder


def wait_until_held_for(engine: engine_mod.Engine, age_us: int) -> None:
    deadline = time.monotonic() + 5.0
    while engine.held_age_us() < age_us:
        assert time.monotonic() < deadline, f"held age never reached {age_us} us"
        time.sleep(0.001)


def test_each_hop_adds_the_time_it_held_the_snapshot_to_the_age_it_passes_on() -> None:
    first, first_telemetry = make_engine("a")
    second, second_telemetry = make_engine("b")
    snapshot = snapshots.build(version=versions.Version(1, 1), leader="l", leader_address="l:1",
                               entries={1: 1}, names={1: "ns/svc"})
    first.receive(snapshot, via="push", age_us=5_000)
    (adoption,) = first_telemetry.adoptions
    assert adoption.via == "push" and adoption.age_seconds >= 0.005
    assert adoption.apply_seconds > 0

    wait_until_held_for(first, 7_000)  # 2 ms more on this hop
    reply = first.handle_exchange(pb.ExchangeRequest(digest=second.digest()))
    assert reply.HasField("snapshot") and reply.snapshot.age_us >= 7_000

    second.receive(wire.snapshot_from_pb(reply.snapshot), via="pull",
                   age_us=reply.snapshot.age_us)
    (relayed,) = second_telemetry.adoptions
    assert relayed.via == "pull" and relayed.age_seconds >= reply.snapshot.age_us / 1e6


def test_a_version_recovered_from_the_map_has_no_known_age_and_is_not_an_adoption() -> None:
    engine, recorder = make_engine("a")
    plane = engine.dataplane
    assert isinstance(plane, memory.MemoryDataPlane)
    plane.table, plane.version = {1: 1}, versions.Version(3, 4)
    plane.content_hash = snapshots.content_hash(snapshots.encode_table({1: 1}))
    engine.load()
    assert engine.held.version == versions.Version(3, 4)
    assert engine.held_age_us() == 0
    assert not recorder.adoptions


def test_the_age_suffix_sets_the_age_of_an_encoded_snapshot_without_reencoding_it() -> None:
    snapshot = snapshots.build(version=versions.Version(2, 3), leader="l", leader_address="l:1",
                               entries={7: 2}, names={7: "ns/x"})
    encoded = wire.snapshot_to_pb(snapshot).SerializeToString()
    message = pb.Snapshot.FromString(encoded + wire.ACK_SUFFIX + wire.age_suffix(1234))
    assert message.age_us == 1234 and message.ack
    assert wire.snapshot_from_pb(message) == wire.snapshot_from_pb(pb.Snapshot.FromString(encoded))
