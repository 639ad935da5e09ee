"""Examples of the core's decisions, named for the behaviour they pin down."""

from __future__ import annotations

import random

import pytest

from gossip_agent import errors
from gossip_agent.core import coalesce, fanout, peers, snapshots, terms, versions

pytestmark = pytest.mark.unit
V = versions.Version


def snap(term: int, seq: int, entries: dict[int, int] | None = None) -> snapshots.Snapshot:
    return snapshots.build(version=V(term, seq), leader="node-a", leader_address="a:1",
                           entries=entries or {0x0A60000A: 1}, names={0x0A60000A: "ns/web"})


def test_snapshot_from_older_term_is_ignored_even_with_higher_seq():
    held = snapshots.Held.of(snap(3, 1))
    assert snapshots.decide(held, version=V(2, 99), digest=b"x") is snapshots.Decision.STALE


def test_newer_version_is_adopted():
    held = snapshots.Held.of(snap(3, 1))
    assert snapshots.decide(held, version=V(3, 2), digest=b"x") is snapshots.Decision.ADOPT


def test_same_version_same_content_is_a_duplicate_unless_held_is_incomplete():
    s = snap(3, 1)
    assert snapshots.decide(snapshots.Held.of(s), version=s.version,
                            digest=s.content_hash) is snapshots.Decision.DUPLICATE
    incomplete = snapshots.Held(s.version, s.content_hash, False, None)
    assert snapshots.decide(incomplete, version=s.version,
                            digest=s.content_hash) is snapshots.Decision.REPAIR


def test_conflicting_content_at_one_version_is_resolved_by_the_larger_hash():
    a, b = snap(3, 1, {1: 1}), snap(3, 1, {1: 2})
    high, low = (a, b) if a.content_hash > b.content_hash else (b, a)
    assert snapshots.decide(snapshots.Held.of(low), version=V(3, 1),
                            digest=high.content_hash) is snapshots.Decision.CONFLICT_WIN
    assert snapshots.decide(snapshots.Held.of(high), version=V(3, 1),
                            digest=low.content_hash) is snapshots.Decision.CONFLICT_LOSE


def test_snapshot_with_more_entries_than_the_map_is_too_large():
    s = snapshots.build(version=V(1, 1), leader="a", leader_address="", names={},
                        entries={i: 1 for i in range(1, 11)})
    with pytest.raises(errors.SnapshotTooLarge):
        snapshots.validate(s, max_entries=9)
    snapshots.validate(s, max_entries=10)


@pytest.mark.parametrize("change", [
    {"table": b"\x01\x00\x00"},  # not whole pairs
    {"table": snapshots.encode_table({2: 1}) + snapshots.encode_table({1: 1})},  # unsorted
    {"content_hash": b"\x00" * 32},
    {"version": V(0, 1)},
    {"leader": ""},
    {"names": ("a", "b")},  # two names for one entry
    {"names": ("x" * 254,)},
])
def test_malformed_snapshots_are_invalid(change):
    import dataclasses
    s = dataclasses.replace(snap(1, 1), **change)
    with pytest.raises(errors.SnapshotInvalid):
        snapshots.validate(s, max_entries=1024)
    # Judged against a held snapshot of the same keys and names, whose checks may be skipped.
    with pytest.raises(errors.SnapshotInvalid):
        snapshots.validate(s, max_entries=1024, held=snap(1, 1))


def test_the_held_snapshots_names_are_not_taken_with_a_names_hash_that_does_not_match():
    import dataclasses
    held = snap(1, 1)
    forged = dataclasses.replace(snap(1, 2), names_hash=b"\x00" * 32)
    with pytest.raises(errors.SnapshotInvalid, match="names hash"):
        snapshots.validate(forged, max_entries=1024, held=held)


def test_omitted_names_are_filled_only_for_the_same_keys_as_held():
    import dataclasses
    held = snap(1, 1)
    other_keys = dataclasses.replace(snap(1, 2, {0x0A60000B: 1}), names=None,
                                     names_hash=held.names_hash)
    assert snapshots.with_names(other_keys, held).names is None
    same_keys = dataclasses.replace(snap(1, 2), names=None)
    assert snapshots.with_names(same_keys, held).names == held.names


def test_ip_keys_are_host_order_integers_as_the_xdp_program_reads_them():
    assert snapshots.parse_ip("10.96.0.10") == 0x0A60000A
    assert snapshots.format_ip(0x0A60000A) == "10.96.0.10"
    with pytest.raises(errors.SnapshotInvalid):
        snapshots.parse_ip("10.96.0")


def test_new_term_is_above_every_term_seen_whatever_the_counter_says():
    assert terms.next_term(backend_term=1, max_seen=7) == 8  # counter reset (FLUSHALL)
    assert terms.next_term(backend_term=9, max_seen=7) == 9


def test_bpffs_agent_refuses_to_lead_with_a_peer_on_another_host():
    assert terms.refuse_to_lead(backend="bpffs", own_boot_id="a", peer_boot_ids=["a"]) == ""
    reason = terms.refuse_to_lead(backend="bpffs", own_boot_id="a", peer_boot_ids=["a", "b"])
    assert "another host" in reason
    assert terms.refuse_to_lead(backend="redis", own_boot_id="a", peer_boot_ids=["b"]) == ""


def test_burst_coalescing_publishes_at_once_then_once_per_window():
    assert coalesce.publish_at(now=10.0, last_publish=None, window=0.02) == 10.0
    assert coalesce.publish_at(now=10.005, last_publish=10.0, window=0.02) == pytest.approx(10.02)
    assert coalesce.publish_at(now=11.0, last_publish=10.0, window=0.02) == 11.0


def test_fanout_is_deterministic_for_a_seed_and_never_repeats_a_peer():
    candidates = [f"p{i}" for i in range(10)]
    a = fanout.choose(candidates, rng=random.Random(4), k=3)
    assert a == fanout.choose(candidates, rng=random.Random(4), k=3)
    assert len(set(a)) == 3
    assert fanout.choose([], rng=random.Random(1)) == []


def test_failing_peer_backs_off_exponentially_and_recovers_on_success():
    policy = peers.BackoffPolicy(base=1.0, cap=8.0, dead_after=3, jitter=0.0)
    m = peers.Membership(self_address="me:1", policy=policy, rng=random.Random(1))
    m.set_discovered(peers.STATIC, ["me:1", "p:1", "q:1"])
    assert m.addresses() == ["p:1", "q:1"]  # own address excluded
    delays = [m.failed("p:1", now=0.0) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert m.get("p:1").state is peers.PeerState.DEAD
    assert m.ready(now=1.0) == ["q:1"]  # the dead peer does not hold the others back
    m.succeeded("p:1", now=9.0, contact=peers.Contact(node="p", version=V(1, 1)))
    assert m.get("p:1").state is peers.PeerState.ALIVE
    assert m.address_of("p") == "p:1"


def test_discovery_refresh_drops_withdrawn_addresses_even_if_gossip_mentioned_them():
    m = peers.Membership(self_address="me:1", policy=peers.BackoffPolicy(),
                         rng=random.Random(1))
    m.set_discovered(peers.DNS, ["a:1", "b:1"])
    m.learn(["b:1", "c:1"])
    m.set_discovered(peers.DNS, ["a:1"])  # b's pod is gone: its address with it
    assert m.addresses() == ["a:1", "c:1"]  # c: only gossip knows it, it stays
    m.learn(["b:1"])  # a peer that has not refreshed yet still lists b: not brought back
    assert m.addresses() == ["a:1", "c:1"]
    m.met("b:1")  # an agent at b calls this one itself: a peer again
    assert m.addresses() == ["a:1", "b:1", "c:1"]


def test_an_empty_discovery_answer_keeps_the_peers_gossip_knows():
    m = peers.Membership(self_address="me:1", policy=peers.BackoffPolicy(),
                         rng=random.Random(1))
    m.set_discovered(peers.DNS, ["a:1", "b:1"])
    m.learn(["b:1", "c:1"])
    m.set_discovered(peers.DNS, [])  # no endpoints, or a broken record: not cut off
    assert m.addresses() == ["b:1", "c:1"]
    m.learn(["a:1"])
    assert m.addresses() == ["a:1", "b:1", "c:1"]


def test_discovery_listing_a_withdrawn_address_again_makes_it_a_peer():
    m = peers.Membership(self_address="me:1", policy=peers.BackoffPolicy(),
                         rng=random.Random(1))
    m.set_discovered(peers.DNS, ["a:1", "b:1"])
    m.set_discovered(peers.DNS, ["a:1"])
    m.set_discovered(peers.DNS, ["a:1", "b:1"])  # a new pod got b's IP
    m.set_discovered(peers.DNS, ["b:1"])
    m.learn(["b:1"])
    assert m.addresses() == ["b:1"]
    assert m.get("b:1").origins == {peers.DNS, peers.GOSSIP}


def test_the_table_follows_discovery_through_pod_ip_churn_and_stays_bounded():
    m = peers.Membership(self_address="me:1", policy=peers.BackoffPolicy(),
                         rng=random.Random(1))
    for round_ in range(3 * peers.MAX_WITHDRAWN):
        current = [f"10.0.{round_ % 250}.{i}:1" for i in range(3)] + ["seed:1"]
        m.set_discovered(peers.DNS, current)
        m.learn(current)  # every peer mentions every other
        assert m.addresses() == sorted(current)
    assert len(m._withdrawn) <= peers.MAX_WITHDRAWN


def test_a_delta_with_a_forged_result_is_invalid_not_adopted():
    import dataclasses
    old, new = snap(1, 1, {5: 1, 6: 1}), snap(1, 2, {5: 2, 6: 1})
    delta = snapshots.delta_between(old, new)
    forged = dataclasses.replace(delta, content_hash=b"\x00" * 32)
    with pytest.raises(errors.SnapshotInvalid):
        snapshots.expand(forged, old)


def test_a_delta_naming_a_key_twice_states_the_value_held_before_it():
    old = snap(1, 1, {5: 1, 6: 1})
    new = snap(1, 2, {5: 3, 6: 1})
    changes = snapshots.encode_table({5: 2}) + snapshots.encode_table({5: 3})
    delta = snapshots.Delta(new.version, old.version, "node-a", "a:1", changes,
                            new.content_hash, old.names_hash)
    expanded, replaced = snapshots.expand_with_previous(delta, old)
    assert expanded.table == new.table
    assert replaced == (1).to_bytes(4, "little") * 2  # the held value, for both
