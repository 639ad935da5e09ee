"""Properties of the pure core, checked with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip_agent.core import diff, quorum, snapshots, versions

pytestmark = pytest.mark.unit

version_st = st.builds(versions.Version, st.integers(0, 5), st.integers(0, 5))
table_st = st.dictionaries(st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1), max_size=20)


def snapshot_of(version: versions.Version, entries: dict[int, int]) -> snapshots.Snapshot:
    return snapshots.build(version=version, leader="n", leader_address="a:1", entries=entries,
                           names={})


def content_for(version: versions.Version) -> dict[int, int]:
    """One leader per term: a version names one content (derived from it here)."""
    return {version.term * 100 + version.seq: version.seq}


@given(version_st, version_st, version_st)
def test_version_order_is_total_and_transitive(a, b, c):
    assert sum((a < b, a == b, a > b)) == 1
    if a <= b and b <= c:
        assert a <= c


@given(st.lists(st.builds(versions.Version, st.integers(1, 5), st.integers(1, 5)), max_size=8),
       table_st)
def test_adoption_is_idempotent(history, entries):
    held = snapshots.NOTHING
    for version in history:
        _, held = snapshots.apply(held, snapshot_of(version, content_for(version)))
    incoming = snapshot_of(versions.Version(3, 3), entries)
    _, once = snapshots.apply(held, incoming)
    decision, twice = snapshots.apply(once, incoming)
    assert twice == once
    assert not decision.adopts


@settings(max_examples=60)
@given(st.lists(st.builds(versions.Version, st.integers(1, 4), st.integers(1, 4)),
                min_size=1, max_size=5, unique=True),
       st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4), table_st), max_size=2))
def test_any_delivery_order_ends_in_the_same_state(good_versions, conflicting):
    deliveries = [snapshot_of(v, content_for(v)) for v in good_versions]
    # Equal versions with different content (a lease bug) must still converge.
    deliveries += [snapshot_of(versions.Version(t, s), e) for t, s, e in conflicting]
    finals = set()
    for order in itertools.islice(itertools.permutations(deliveries), 120):
        held = snapshots.NOTHING
        for snapshot in order:
            _, held = snapshots.apply(held, snapshot)
        finals.add((held.version, held.content_hash))
    assert len(finals) == 1
    top = max(s.version for s in deliveries)
    assert finals.pop()[0] == top


@given(st.lists(st.tuples(st.builds(versions.Version, st.integers(1, 6), st.integers(1, 6)),
                          table_st), max_size=12))
def test_a_held_version_never_goes_backwards(deliveries):
    held = snapshots.NOTHING
    for version, entries in deliveries:
        before = held.version
        _, held = snapshots.apply(held, snapshot_of(version, entries))
        assert held.version >= before


@given(table_st, table_st)
def test_diff_then_patch_reaches_the_new_table(old, new):
    change = diff.diff(old, new)
    assert diff.patch(old, change) == new
    assert not set(change.deletes) & set(new)
    assert diff.diff(new, new).empty


@given(table_st)
def test_table_encoding_is_canonical_and_round_trips(entries):
    table = snapshots.encode_table(entries)
    assert snapshots.table_to_dict(table) == entries
    assert snapshots.encode_table(dict(reversed(list(entries.items())))) == table


@given(table_st, table_st, st.data())
def test_table_diff_matches_the_dict_diff(old, new, data):
    # Half the time keep old's key set, so the fast path (same keys) is exercised too.
    if data.draw(st.booleans()) and old:
        new = {key: data.draw(st.integers(0, 2**32 - 1)) for key in old}
    fast = diff.diff_tables(snapshots.encode_table(old), snapshots.encode_table(new))
    assert fast == diff.diff(old, new)


@given(table_st.filter(bool), st.data())
def test_a_delta_rebuilds_exactly_the_new_snapshot_on_its_base(old_entries, data):
    new_entries = {key: data.draw(st.integers(0, 2**32 - 1)) for key in old_entries}
    old = snapshot_of(versions.Version(2, 1), old_entries)
    new = snapshot_of(versions.Version(2, 2), new_entries)
    delta = snapshots.delta_between(old, new)
    assert delta is not None
    assert snapshots.expand(delta, old) == new
    with pytest.raises(snapshots.NeedFull):
        snapshots.expand(delta, snapshot_of(versions.Version(1, 9), old_entries))


@given(table_st, table_st)
def test_no_delta_between_snapshots_with_different_keys(a, b):
    if set(a) != set(b):
        assert snapshots.delta_between(snapshot_of(versions.Version(1, 1), a),
                                       snapshot_of(versions.Version(1, 2), b)) is None


@given(st.integers(min_value=1, max_value=10_000))
def test_a_durable_write_and_a_new_leaders_digest_round_always_share_a_member(
        members: int) -> None:
    """core.quorum: the acknowledging peers with their leader, and the peers a new leader must
    reach with itself, always overlap; neither asks for more peers than there are."""
    acks, office = quorum.write_acks(members), quorum.office_peers(members)
    assert (acks + 1) + (office + 1) > members
    assert 0 <= office <= acks <= members - 1


@given(table_st, table_st, st.data())
def test_a_table_diff_states_exactly_what_the_touched_keys_held(old, new, data):
    if data.draw(st.booleans()) and old:  # the fast path (same keys) too
        new = {key: data.draw(st.integers(0, 2**32 - 1)) for key in old}
    change = diff.diff_tables(snapshots.encode_table(old), snapshots.encode_table(new))
    touched = [*change.updates, *change.deletes]
    assert change.previous is not None
    assert dict(change.previous) == {key: old[key] for key in touched if key in old}
    # What the data plane counts on to size the result without reading the map.
    assert len(old) + len(change.updates) - len(change.previous) == len(new)


@given(table_st.filter(bool), st.data())
def test_a_delta_states_the_values_it_replaces(old_entries, data):
    new_entries = {key: data.draw(st.integers(0, 2**32 - 1)) for key in old_entries}
    old = snapshot_of(versions.Version(2, 1), old_entries)
    delta = snapshots.delta_between(old, snapshot_of(versions.Version(2, 2), new_entries))
    assert delta is not None
    _, replaced = snapshots.expand_with_previous(delta, old)
    change = diff.from_changes(delta.changes, replaced=replaced)
    assert dict(change.updates) == {k: v for k, v in new_entries.items() if old_entries[k] != v}
    assert change.previous is not None
    assert dict(change.previous) == {key: old_entries[key] for key in change.updates}
