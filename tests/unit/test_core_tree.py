"""The relay tree (core/tree.py): every live member reached exactly once from the leader, by the
sender it expects, whatever members are down; at most F sends each when none is; log_F depth;
the same tree on every agent that agrees on the members and the term; a star when N - 1 <= F."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip_agent.core import tree


def members(count: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}:50051" for i in range(count)]


def reached(t: tree.Tree, down: set[str]) -> list[str]:
    """Every delivery made from the leader down, following children() as each relay would."""
    out, frontier = [], [t.leader]
    while frontier:
        sender = frontier.pop()
        for child in t.children(sender, down=down.__contains__):
            assert t.parent(child, down=down.__contains__) == sender, (child, sender)
            out.append(child)
            frontier.append(child)
    return out


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 300), fanout=st.integers(1, 20), term=st.integers(1, 2**32),
       down_share=st.floats(0, 0.5), seed=st.integers(0, 2**16))
def test_every_live_member_is_reached_once_by_the_sender_it_expects(
    count: int, fanout: int, term: int, down_share: float, seed: int
) -> None:
    everyone = members(count)
    t = tree.build(everyone, leader=everyone[0], term=term, fanout=fanout)
    down = {m for i, m in enumerate(everyone[1:]) if (i * 7919 + seed) % 1000 < down_share * 1000}
    deliveries = reached(t, down)
    assert sorted(deliveries) == sorted(set(everyone) - down - {everyone[0]})


@settings(max_examples=100, deadline=None)
@given(count=st.integers(2, 2000), fanout=st.integers(2, 32), term=st.integers(1, 1000))
def test_with_nobody_down_each_sends_at_most_f_and_the_last_is_log_f_hops_away(
    count: int, fanout: int, term: int
) -> None:
    everyone = members(count)
    t = tree.build(everyone, leader=everyone[-1], term=term, fanout=fanout)
    assert max(len(t.children(m)) for m in everyone) <= fanout
    depth = max(t.depth(m) for m in everyone)
    assert depth == math.ceil(math.log(count * (fanout - 1) + 1, fanout) - 1e-9) - 1


def test_five_thousand_with_f_16_is_four_hops_and_the_leader_sends_16() -> None:
    everyone = members(5000)
    t = tree.build(everyone, leader=everyone[0], term=3, fanout=16)
    assert len(t.children(everyone[0])) == 16
    assert max(t.depth(m) for m in everyone) == 4  # 1 + 16 + 256 + 4096 >= 5000


def test_agents_that_agree_on_members_and_term_compute_the_same_tree() -> None:
    everyone = members(50)
    one = tree.build(everyone, leader=everyone[3], term=9, fanout=4)
    other = tree.build(reversed(everyone), leader=everyone[3], term=9, fanout=4)
    assert one.order == other.order
    next_term = tree.build(everyone, leader=everyone[3], term=10, fanout=4)
    assert next_term.order != one.order and next_term.leader == everyone[3]


def test_a_small_cluster_is_a_star_and_a_dead_relay_hands_its_subtree_up() -> None:
    everyone = members(8)
    star = tree.build(everyone, leader=everyone[0], term=1, fanout=16)
    assert sorted(star.children(everyone[0])) == sorted(everyone[1:])
    assert all(star.children(m) == [] for m in everyone[1:])
    t = tree.build(everyone, leader=everyone[0], term=1, fanout=2)
    relay = t.order[1]
    below = t.children(relay)
    assert below  # an inner relay
    rerouted = t.children(t.leader, down={relay}.__contains__)
    assert relay not in rerouted and set(below) <= set(rerouted)


def test_fanout_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="fanout must be at least 1"):
        tree.build(members(3), leader="x", term=1, fanout=0)
