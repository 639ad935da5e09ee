"""The fault campaign's checker on made-up histories: each property passes a correct history
and names the violation in a wrong one (so the campaign's `violations == []` can fail)."""

from __future__ import annotations

import pytest

from lab import chaoscheck as cc

pytestmark = pytest.mark.unit

K1, K2 = 0x0A600101, 0x0A600102  # 10.96.1.1, 10.96.1.2
BOUND = 18.0


def adopt(history: cc.History, node: str, version: cc.Version, table: dict[int, int],
          *, stream: str = "watch", at: float = 0.0) -> None:
    digest = history.add_table(table)
    history.adoptions.append(cc.Adoption(node, version, digest, stream, at))


def sample(history: cc.History, node: str, table: dict[int, int], at: float = 0.0) -> None:
    digest = history.add_table(table)
    history.samples.append(cc.MapSample(node, at, digest, len(table)))


def write(id_: int, key: int, value: int | None, version: cc.Version | None, *,
          peers: int = 1) -> cc.Write:
    return cc.Write(id=id_, key=key, value=value, node="node-0", started=0.0, ended=0.1,
                    version=version, acked_peers=peers if version else 0,
                    error="" if version else "UNAVAILABLE: test")


def converged(history: cc.History, table: dict[int, int], version: cc.Version,
              nodes: tuple[str, ...] = ("node-0", "node-1")) -> cc.History:
    for node in nodes:
        history.final[node] = (version, history.add_table(table))
    history.converged_after, history.convergence_bound = 1.0, BOUND
    return history


def clean_history() -> cc.History:
    history = cc.History()
    t1, t2 = {K1: 5}, {K1: 5, K2: 6}
    for node in ("node-0", "node-1"):
        adopt(history, node, (1, 1), t1)
        sample(history, node, t1)
        adopt(history, node, (1, 2), t2)
        sample(history, node, t2)
    history.writes += [write(1, K1, 5, (1, 1)), write(2, K2, 6, (1, 2))]
    return converged(history, t2, (1, 2))


def test_a_correct_history_has_no_violations() -> None:
    report = cc.check(clean_history())
    assert report.violations == []
    assert report.figures["versions_with_known_tables"] == 2


def test_two_contents_at_one_version_are_a_violation() -> None:
    history = clean_history()
    adopt(history, "node-1", (1, 2), {K1: 5, K2: 7})
    [found] = cc.one_content_per_version(history.adoptions)
    assert found.startswith("version 1.2 names 2 different contents")


def test_a_version_going_back_in_one_stream_is_a_violation_across_streams_it_is_not() -> None:
    history = cc.History()
    adopt(history, "node-0", (2, 1), {K1: 1}, stream="history#1")
    adopt(history, "node-0", (1, 9), {K1: 2}, stream="history#2")  # another reply: not ordered
    assert cc.versions_never_go_back(history.adoptions) == []
    adopt(history, "node-0", (2, 1), {K1: 1}, stream="watch", at=3.0)
    adopt(history, "node-0", (1, 9), {K1: 2}, stream="watch", at=4.0)
    [found] = cc.versions_never_go_back(history.adoptions)
    assert "node-0's version went back from 2.1 to 1.9 in its watch record at t=4.0s" in found


def test_a_sampled_table_nobody_adopted_is_half_written() -> None:
    history = clean_history()
    sample(history, "node-1", {K2: 6}, at=7.0)  # the update landed, the old key vanished
    sample(history, "node-1", {K2: 6}, at=7.1)
    violations = cc.check(history).violations
    [found] = violations
    assert "node-1's map held a table no agent ever adopted at t=7.0s" in found
    assert "sampled 2 times" in found and "10.96.1.1: None vs 5" in found


def test_a_table_adopted_by_another_node_is_only_counted_as_unattributed() -> None:
    history = clean_history()
    adopt(history, "node-0", (1, 3), {K1: 9, K2: 6})
    sample(history, "node-1", {K1: 9, K2: 6})
    report = cc.check(history)
    assert report.figures["samples_unattributed"] == 1
    assert not any("half written" in v for v in report.violations)


def test_a_map_that_empties_after_holding_entries_is_a_violation() -> None:
    history = cc.History()
    sample(history, "node-0", {}, at=0.0)  # before any adoption: fine
    adopt(history, "node-0", (1, 1), {K1: 1})
    sample(history, "node-0", {K1: 1}, at=1.0)
    assert cc.maps_hold_whole_tables(history, {}) == []
    sample(history, "node-0", {}, at=2.0)
    [found] = cc.maps_hold_whole_tables(history, {})
    assert found == "node-0's map went empty at t=2.0s after holding entries"


def test_a_replicated_write_missing_from_the_final_state_was_lost() -> None:
    history = clean_history()
    history.writes.append(write(3, K2, 8, (1, 3)))  # acknowledged; (1, 3) never observed
    history.final = {}
    converged(history, {K1: 5, K2: 6}, (1, 4))  # a later version without it
    violations = cc.check(history).violations
    assert violations == [
        "write #3 (set 10.96.1.2=8 via node-0), acknowledged at 1.3 by 1 peer(s), is missing "
        "from version 1.4 (which holds 10.96.1.2=6), the final state included, and no later "
        "acknowledged write changed that key: the write was lost"]


def test_a_later_replicated_write_on_the_same_key_supersedes_an_earlier_one() -> None:
    history = clean_history()
    history.writes.append(write(3, K2, None, (1, 3)))
    history.final = {}
    converged(history, {K1: 5}, (1, 3))
    assert cc.check(history).violations == []


def test_writes_coalesced_into_one_version_may_leave_either_value() -> None:
    history = clean_history()
    history.writes += [write(3, K1, 10, (1, 3)), write(4, K1, 11, (1, 3))]
    history.final = {}
    converged(history, {K1: 10, K2: 6}, (1, 3))
    assert cc.check(history).violations == []


def test_a_failed_write_may_have_landed_later_but_an_older_value_cannot_come_back() -> None:
    history = clean_history()
    history.writes.append(write(3, K1, 12, None))  # failed: it may have been applied
    history.final = {}
    converged(history, {K1: 12, K2: 6}, (1, 3))
    assert cc.check(history).violations == []

    history = cc.History()
    for version, table in (((1, 1), {K1: 12}), ((1, 2), {K1: 5}), ((1, 3), {K1: 12})):
        adopt(history, "node-0", version, table)
    history.writes += [write(3, K1, 12, None), write(1, K1, 5, (1, 2))]
    converged(history, {K1: 12}, (1, 3), nodes=("node-0",))
    [found] = cc.check(history).violations
    assert found.startswith("write #1 (set 10.96.1.1=5 via node-0), acknowledged at 1.2 by 1 "
                            "peer(s), is missing from version 1.3 (which holds 10.96.1.1=12)")


def test_a_leader_only_write_may_be_lost() -> None:
    history = clean_history()
    history.writes.append(write(3, K2, 8, (1, 3), peers=0))
    history.final = {}
    converged(history, {K1: 5, K2: 6}, (2, 1))
    assert cc.check(history).violations == []


def test_converging_on_a_version_older_than_a_replicated_write_is_a_violation() -> None:
    history = clean_history()
    history.writes.append(write(3, K2, 6, (3, 1)))
    assert any(v.startswith("the cluster converged on version 1.2, older than 1 replicated")
               for v in cc.check(history).violations)


def test_maps_that_do_not_converge_in_the_bound_are_a_violation() -> None:
    history = clean_history()
    history.converged_after = None
    [found] = cc.converged(history)
    assert found.startswith("the maps did not converge within 18s after the faults ended")
    history.converged_after = 19.5
    assert cc.converged(history) == [
        "the maps converged 19.5s after the faults ended, beyond the 18s bound"]


def test_the_table_hash_is_the_products_content_hash() -> None:
    from gossip_agent.core import snapshots

    table = {K2: 3, K1: 0}
    assert cc.table_hash(table) == snapshots.content_hash(snapshots.encode_table(table)).hex()
