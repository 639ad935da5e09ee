"""core.traffic, core.scaling, core.policy: node facts, the cluster-wide scale-down rule, the
scale-up cool-down and the dependency order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip_agent import errors
from gossip_agent.core import policy, reports, scaling, traffic

pytestmark = pytest.mark.unit

S = scaling.NS
SVC = 0x0A60000A
WINDOW = 10 * S
IDLE = 60 * S


def fact(idle_s: float, *, service: int = SVC) -> traffic.Fact:
    return traffic.Fact(service_ip=service, passed=0, dropped=0, idle_ns=int(idle_s * S))


def facts_at(now_s: float, per_node: dict[str, float], *, took_office_s: float = 0
             ) -> scaling.ClusterFacts:
    facts = scaling.ClusterFacts(window_ns=WINDOW, took_office_ns=int(took_office_s * S))
    for node, idle_s in per_node.items():
        facts.record(node=node, facts=[fact(idle_s)], now_ns=int(now_s * S))
    return facts


# -- node side: TrafficWatch ------------------------------------------------------------------


def test_a_service_first_sampled_counts_as_seen_at_that_sample() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=5 * S, listed=[SVC], counts={})
    assert watch.summary(now_ns=7 * S) == (traffic.Fact(SVC, 0, 0, 2 * S),)


def test_growing_counters_date_traffic_at_the_sample_that_saw_them_and_deltas_restart() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC], counts={SVC: traffic.Counts(10, 1)})
    watch.sample(now_ns=3 * S, listed=[SVC], counts={SVC: traffic.Counts(15, 4)})
    watch.sample(now_ns=4 * S, listed=[SVC], counts={SVC: traffic.Counts(15, 4)})
    assert watch.summary(now_ns=6 * S) == (traffic.Fact(SVC, 5, 3, 3 * S),)
    assert watch.summary(now_ns=6 * S) == (traffic.Fact(SVC, 0, 0, 3 * S),)


def test_counters_going_backwards_count_as_traffic_now() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC], counts={SVC: traffic.Counts(100, 0)})
    watch.sample(now_ns=50 * S, listed=[SVC], counts={SVC: traffic.Counts(3, 0)})
    assert watch.summary(now_ns=51 * S) == (traffic.Fact(SVC, 0, 0, 1 * S),)


def test_a_service_no_longer_listed_is_not_reported() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC, 2], counts={})
    watch.sample(now_ns=1, listed=[2], counts={})
    assert [f.service_ip for f in watch.summary(now_ns=2)] == [2]


def test_a_summary_is_bounded_and_keeps_the_most_recently_busy() -> None:
    watch = traffic.TrafficWatch(max_facts=2)
    watch.sample(now_ns=0, listed=[1, 2, 3], counts={})
    watch.sample(now_ns=S, listed=[1, 2, 3], counts={3: traffic.Counts(1, 0)})
    assert [f.service_ip for f in watch.summary(now_ns=2 * S)] == [3, 1]


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 50), st.integers(0, 50)),
                min_size=1, max_size=30))
def test_idle_time_never_exceeds_the_time_since_traffic_was_last_observed(
        steps: list[tuple[int, int, int]]) -> None:
    """Whatever the sampling pattern, a node never claims more idleness than it observed (the
    conservative side for scale-down), and its deltas add up to what the counters grew by."""
    watch = traffic.TrafficWatch()
    now, passed, dropped, last_growth = 0, 0, 0, 0
    for i, (gap, more_passed, more_dropped) in enumerate(steps):
        now += gap
        passed, dropped = passed + more_passed, dropped + more_dropped
        watch.sample(now_ns=now, listed=[SVC], counts={SVC: traffic.Counts(passed, dropped)})
        if i == 0 or more_passed or more_dropped:
            last_growth = now
    (reported,) = watch.summary(now_ns=now + 1)
    assert reported.idle_ns <= now + 1 - last_growth
    _, first_passed, first_dropped = steps[0]
    assert (reported.passed, reported.dropped) == (passed - first_passed, dropped - first_dropped)


# -- leader side: scale-down ------------------------------------------------------------------


def test_traffic_through_one_node_blocks_scale_down_although_the_others_saw_nothing() -> None:
    facts = facts_at(100, {"a": 5, "b": 90, "c": 90})
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b", "c"],
                               now_ns=100 * S)
    assert not verdict.allowed and "node a saw traffic 5.0s ago" in verdict.reason


def test_idleness_everywhere_allows_scale_down_and_names_the_facts() -> None:
    facts = facts_at(100, {"a": 61, "b": 90, "c": 70})
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b", "c"],
                               now_ns=100 * S)
    assert verdict.allowed
    assert "all 3 live node(s) (a, b, c)" in verdict.reason and "61.0s ago" in verdict.reason


def test_a_live_node_that_never_reported_blocks_scale_down() -> None:
    facts = facts_at(100, {"a": 90, "b": 90})
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b", "c"],
                               now_ns=100 * S)
    assert not verdict.allowed and "node c has not reported" in verdict.reason


def test_a_stale_report_blocks_until_the_node_reports_again_or_is_forgotten() -> None:
    facts = facts_at(100, {"a": 90, "b": 90})
    facts.record(node="a", facts=[fact(105)], now_ns=115 * S)
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b"], now_ns=115 * S)
    assert not verdict.allowed and "node b last reported 15.0s ago" in verdict.reason
    facts.forget("b")  # membership declared b dead
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"], now_ns=115 * S).allowed


def test_facts_of_nodes_that_left_are_forgotten_and_a_returning_node_must_report_again(
) -> None:
    facts = facts_at(100, {f"gone-{i}": 90 for i in range(50)} | {"a": 90, "b": 90})
    assert facts.retain(["a", "b", "c"]) == sorted(f"gone-{i}" for i in range(50))
    assert facts.reported() == {"a", "b"}  # one summary per live node, c has sent none yet
    facts.retain(["a"])  # b left
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b"],
                               now_ns=100 * S)
    assert not verdict.allowed and "node b has not reported" in verdict.reason


def test_a_report_without_facts_for_the_service_blocks_its_scale_down() -> None:
    facts = facts_at(100, {"a": 90})
    facts.record(node="b", facts=[fact(90, service=7)], now_ns=100 * S)
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b"], now_ns=100 * S)
    assert not verdict.allowed and "node b reported no facts" in verdict.reason


def test_a_blind_node_blocks_every_scale_down_and_its_facts_do_not_count() -> None:
    facts = facts_at(100, {"a": 90})
    # b says it cannot see; whatever facts came with it are not taken for idleness.
    facts.record(node="b", facts=[fact(90)], now_ns=100 * S,
                 blind="no counting program: XDP_INTERFACES is empty, maps only")
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b"], now_ns=100 * S)
    assert not verdict.allowed and verdict.cause == scaling.BLIND
    assert verdict.reason == ("node b is blind (no counting program: XDP_INTERFACES is empty, "
                              "maps only)")
    assert facts.summary_of("b") is not None and facts.summary_of("b").last_traffic_ns == {}
    facts.record(node="b", facts=[fact(90)], now_ns=100 * S)  # b sees again
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "b"],
                            now_ns=100 * S).allowed


def test_each_refusal_names_its_cause() -> None:
    facts = facts_at(100, {"a": 90}, took_office_s=95)
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"],
                            now_ns=100 * S).cause == scaling.OFFICE
    facts = facts_at(100, {"a": 90})
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=[],
                            now_ns=100 * S).cause == scaling.NO_LIVE
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a", "z"],
                            now_ns=100 * S).cause == scaling.SILENT
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"],
                            now_ns=200 * S).cause == scaling.STALE
    assert facts.scale_down(service=7, idle_ns=IDLE, live_nodes=["a"],
                            now_ns=100 * S).cause == scaling.NO_FACTS
    assert facts.scale_down(service=SVC, idle_ns=200 * S, live_nodes=["a"],
                            now_ns=100 * S).cause == scaling.TRAFFIC
    facts.note_scaled_up(service=SVC, now_ns=90 * S)
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"],
                            now_ns=100 * S).cause == scaling.SCALED_UP
    facts.note_scaled_up(service=SVC, now_ns=0)
    allowed = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"], now_ns=100 * S)
    assert allowed.allowed and allowed.cause == ""


def test_a_blind_summary_rides_the_report_without_facts() -> None:
    queue = reports.ReportQueue()
    queue.offer_summary((fact(1),), blind="XDP failed on veth3: EPERM")
    report = queue.next_report()
    assert report is not None and report.summary == () and report.blind.startswith("XDP failed")
    assert queue.acknowledged(seq=report.seq)
    queue.offer_summary((fact(2),))
    report = queue.next_report()
    assert report is not None and report.summary == (fact(2),) and report.blind == ""


def test_a_fresh_leader_waits_one_full_report_window() -> None:
    facts = facts_at(100, {"a": 90}, took_office_s=95)
    assert not facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"],
                                now_ns=100 * S).allowed
    facts.record(node="a", facts=[fact(95)], now_ns=105 * S)
    assert facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"], now_ns=105 * S).allowed


def test_a_scale_up_counts_as_traffic_for_the_idle_time() -> None:
    facts = facts_at(100, {"a": 90})
    facts.note_scaled_up(service=SVC, now_ns=80 * S)
    verdict = facts.scale_down(service=SVC, idle_ns=IDLE, live_nodes=["a"], now_ns=100 * S)
    assert not verdict.allowed and "scaled up 20.0s ago" in verdict.reason


node_names = st.sampled_from(["a", "b", "c", "d", "e"])


@given(reports=st.dictionaries(node_names, st.tuples(st.integers(0, 200), st.integers(0, 200),
                                                     st.booleans())),
       live=st.sets(node_names, max_size=5), now=st.integers(0, 400),
       took_office=st.integers(0, 400), idle=st.integers(0, 150))
def test_scale_down_is_allowed_exactly_when_every_live_node_recently_reported_idleness(
        reports: dict[str, tuple[int, int, bool]], live: set[str], now: int, took_office: int,
        idle: int) -> None:
    """The rule as a property against an independent statement of it: reports arrive at
    (now - age); a node's traffic is dated received - idle_for. Missing facts never allow,
    nor does a blind node's report."""
    facts = scaling.ClusterFacts(window_ns=WINDOW, took_office_ns=took_office * S)
    for node, (age, idle_for, blind) in reports.items():
        facts.record(node=node, facts=[fact(idle_for)], now_ns=(now - age) * S,
                     blind="no counting program" if blind else "")
    verdict = facts.scale_down(service=SVC, idle_ns=idle * S, live_nodes=live, now_ns=now * S)
    expected = (
        now - took_office >= 10 and bool(live)
        and all(n in reports and reports[n][0] <= 10 and reports[n][0] + reports[n][1] >= idle
                and not reports[n][2] for n in live)
    )
    assert verdict.allowed == expected


# -- scale-up cool-down -----------------------------------------------------------------------


@given(st.lists(st.integers(0, 20 * S), max_size=60))
def test_scale_ups_taken_are_at_least_one_cooldown_apart(gaps: list[int]) -> None:
    cooldown = scaling.CoolDown(cooldown_ns=5 * S)
    now, taken = 0, []
    for gap in gaps:
        now += gap
        if cooldown.take(service=SVC, now_ns=now):
            taken.append(now)
    assert all(b - a >= 5 * S for a, b in zip(taken, taken[1:], strict=False))
    if gaps:
        assert taken and taken[0] == gaps[0]  # the first request always acts


def test_a_burst_of_requests_within_the_cooldown_scales_up_once_per_service() -> None:
    cooldown = scaling.CoolDown(cooldown_ns=5 * S)
    assert [cooldown.take(service=SVC, now_ns=t) for t in range(0, 4 * S, S // 10)].count(True) == 1
    assert cooldown.take(service=7, now_ns=S)  # another service has its own cool-down
    assert cooldown.take(service=SVC, now_ns=5 * S)


# -- policy: annotations and order ------------------------------------------------------------


def test_annotations_parse_with_namespace_defaults() -> None:
    parsed = policy.parse({
        policy.DEPENDENCIES: "db, other/cache", policy.DEPENDENTS: "web",
        policy.SCALING_PRIORITY: "10", policy.HPA_ENABLED: "True",
    }, name="shop/api", workload="api-deploy")
    assert parsed == policy.Policy(
        name="shop/api", dependencies=frozenset({"shop/db", "other/cache"}),
        dependents=frozenset({"shop/web"}), priority=10, hpa_name="api-deploy")
    assert policy.parse({}, name="shop/api", workload="x") == policy.Policy(name="shop/api")


@pytest.mark.parametrize(("annotation", "value"), [
    (policy.DEPENDENCIES, "Bad_Name"), (policy.SCALING_PRIORITY, "high"),
    (policy.SCALING_PRIORITY, str(2**31)), (policy.HPA_ENABLED, "yes"),
])
def test_a_malformed_annotation_is_an_error_naming_it(annotation: str, value: str) -> None:
    with pytest.raises(errors.PolicyInvalid, match=annotation):
        policy.parse({annotation: value, policy.HPA_ENABLED: "true"}
                     if annotation != policy.HPA_ENABLED else {annotation: value},
                     name="ns/s", workload="w")


def chain() -> dict[str, policy.Policy]:
    # web needs api (declared on web), api needs db (declared on db as a dependent).
    return {
        "ns/web": policy.Policy("ns/web", dependencies=frozenset({"ns/api"})),
        "ns/api": policy.Policy("ns/api"),
        "ns/db": policy.Policy("ns/db", dependents=frozenset({"ns/api"})),
        "ns/cache": policy.Policy("ns/cache", priority=5),
    }


def test_waking_a_service_wakes_its_dependencies_first() -> None:
    assert policy.wake_order("ns/web", chain()) == ["ns/db", "ns/api", "ns/web"]
    assert policy.wake_order("ns/cache", chain()) == ["ns/cache"]


def test_sleep_order_puts_dependents_first_then_priority() -> None:
    assert policy.sleep_order(["ns/db", "ns/api", "ns/web", "ns/cache"], chain()) == [
        "ns/cache", "ns/web", "ns/api", "ns/db"]


def test_a_service_needed_by_an_awake_service_is_held_up() -> None:
    assert policy.held_up_by("ns/db", chain(), awake={"ns/api", "ns/cache"}) == ["ns/api"]
    assert policy.held_up_by("ns/db", chain(), awake={"ns/web"}) == []


names = st.sampled_from([f"ns/s{i}" for i in range(6)])


@given(st.dictionaries(names, st.tuples(st.sets(names, max_size=3), st.integers(-3, 3)),
                       min_size=1))
def test_any_order_lists_each_service_once_and_respects_every_acyclic_edge(
        graph: dict[str, tuple[set[str], int]]) -> None:
    policies = {name: policy.Policy(name, dependencies=frozenset(deps), priority=priority)
                for name, (deps, priority) in graph.items()}
    order = policy.sleep_order(policies, policies)
    assert sorted(order) == sorted(policies)
    target = next(iter(policies))
    woken = policy.wake_order(target, policies)
    assert woken[-1] == target or policy.has_cycle(policies)
    if not policy.has_cycle(policies):
        edges = policy.needs(policies)
        position = {name: i for i, name in enumerate(order)}
        assert all(position[x] < position[y] for x, ys in edges.items() for y in ys)
        wake_position = {name: i for i, name in enumerate(woken)}
        assert all(wake_position[y] < wake_position[x]
                   for x, ys in edges.items() if x in wake_position for y in ys)


# -- summaries ride the stop-and-wait report --------------------------------------------------


def test_a_summary_alone_makes_a_report_resent_unchanged_until_acknowledged() -> None:
    queue = reports.ReportQueue()
    assert queue.next_report() is None
    queue.offer_summary((fact(1),))
    first = queue.next_report()
    assert first is not None and first.requests == () and first.summary == (fact(1),)
    queue.offer_summary((fact(2),))  # arrives while report 1 is in flight
    queue.offer_summary((fact(3),))  # replaces the waiting one: fresher ages
    assert queue.next_report() == first
    assert queue.acknowledged(seq=first.seq)
    second = queue.next_report()
    assert second is not None and second.summary == (fact(3),) and second.seq == first.seq + 1
    assert queue.acknowledged(seq=second.seq) and queue.idle
