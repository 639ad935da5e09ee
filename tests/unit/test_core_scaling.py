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


def full(generation: int, *facts: traffic.Fact) -> traffic.Summary:
    return traffic.Summary(generation, full=True, facts=facts)


def delta(generation: int, *facts: traffic.Fact) -> traffic.Summary:
    return traffic.Summary(generation, full=False, facts=facts)


def test_a_service_first_sampled_counts_as_seen_at_that_sample() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=5 * S, listed=[SVC], counts={})
    assert watch.summary(now_ns=7 * S) == full(1, traffic.Fact(SVC, 0, 0, 2 * S))


def test_growing_counters_date_traffic_at_the_sample_that_saw_them_and_deltas_restart() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC], counts={SVC: traffic.Counts(10, 1)})
    watch.sample(now_ns=3 * S, listed=[SVC], counts={SVC: traffic.Counts(15, 4)})
    watch.sample(now_ns=4 * S, listed=[SVC], counts={SVC: traffic.Counts(15, 4)})
    assert watch.summary(now_ns=6 * S) == full(1, traffic.Fact(SVC, 5, 3, 3 * S))
    # Nothing moved since: the next summary is a beat, a delta without facts.
    assert watch.summary(now_ns=6 * S) == delta(2)
    watch.sample(now_ns=7 * S, listed=[SVC], counts={SVC: traffic.Counts(16, 4)})
    assert watch.summary(now_ns=8 * S) == delta(3, traffic.Fact(SVC, 1, 0, 1 * S))


def test_a_delta_names_only_the_services_whose_counters_moved() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[1, 2, 3], counts={})
    assert watch.summary(now_ns=0).full
    watch.sample(now_ns=S, listed=[1, 2, 3], counts={2: traffic.Counts(0, 7)})
    assert watch.summary(now_ns=2 * S) == delta(2, traffic.Fact(2, 0, 7, S))


def test_counters_going_backwards_count_as_traffic_now_in_a_full_summary() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC, 2], counts={SVC: traffic.Counts(100, 0)})
    assert watch.summary(now_ns=0).full
    watch.sample(now_ns=50 * S, listed=[SVC, 2], counts={SVC: traffic.Counts(3, 0)})
    assert watch.summary(now_ns=51 * S) == full(
        2, traffic.Fact(SVC, 0, 0, 1 * S), traffic.Fact(2, 0, 0, 51 * S))


def test_a_change_in_the_listed_services_makes_the_next_summary_full() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC, 2], counts={})
    assert watch.summary(now_ns=0).full
    watch.sample(now_ns=1, listed=[2], counts={})
    summary = watch.summary(now_ns=2)
    assert summary.full and [f.service_ip for f in summary.facts] == [2]
    watch.sample(now_ns=3, listed=[2, 5], counts={})
    summary = watch.summary(now_ns=4)
    assert summary.full and sorted(f.service_ip for f in summary.facts) == [2, 5]


def test_the_leaders_request_makes_the_next_summary_full_and_then_deltas_resume() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC], counts={})
    assert [watch.summary(now_ns=0).full, watch.summary(now_ns=0).full] == [True, False]
    watch.want_full()
    assert watch.summary(now_ns=S) == full(3, traffic.Fact(SVC, 0, 0, S))
    assert watch.summary(now_ns=S) == delta(4)


def test_a_blind_node_sends_full_summaries_without_facts_and_starts_afresh_when_it_sees() -> None:
    watch = traffic.TrafficWatch()
    watch.sample(now_ns=0, listed=[SVC], counts={})
    watch.summary(now_ns=0)
    watch.blind("XDP failed on veth3: EPERM")
    assert watch.summary(now_ns=S) == traffic.Summary(
        2, full=True, facts=(), blind="XDP failed on veth3: EPERM")
    assert watch.summary(now_ns=S).full  # always full while blind: tiny, and self-contained
    watch.sample(now_ns=9 * S, listed=[], counts={})  # sees again, lists nothing
    assert watch.summary(now_ns=9 * S) == full(4)  # replaces the blind one at the leader


def test_a_summary_is_bounded_and_keeps_the_most_recently_busy() -> None:
    watch = traffic.TrafficWatch(max_facts=2)
    watch.sample(now_ns=0, listed=[1, 2, 3], counts={})
    watch.sample(now_ns=S, listed=[1, 2, 3], counts={3: traffic.Counts(1, 0)})
    assert [f.service_ip for f in watch.summary(now_ns=2 * S).facts] == [3, 1]


def test_more_moved_services_than_a_summary_holds_make_it_full_not_a_partial_delta() -> None:
    """A delta that left out a service whose counters moved would let the leader keep an old
    date for its last packet; a full summary that leaves it out makes it missing (blocks)."""
    watch = traffic.TrafficWatch(max_facts=2)
    watch.sample(now_ns=0, listed=[1, 2, 3], counts={})
    watch.summary(now_ns=0)
    watch.sample(now_ns=S, listed=[1, 2, 3], counts={k: traffic.Counts(1, 0) for k in (1, 2, 3)})
    summary = watch.summary(now_ns=S)
    assert summary.full and len(summary.facts) == 2


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
    (reported,) = watch.summary(now_ns=now + 1).facts
    assert reported.idle_ns <= now + 1 - last_growth
    _, first_passed, first_dropped = steps[0]
    assert (reported.passed, reported.dropped) == (passed - first_passed, dropped - first_dropped)


SAMPLES = st.lists(st.tuples(st.integers(1, 10**9),  # time to the next sample
                             st.dictionaries(st.integers(1, 6), st.integers(0, 3)),  # growth
                             st.booleans()),  # a summary after this sample
                   min_size=1, max_size=40)


@given(SAMPLES)
def test_the_leader_holds_from_deltas_exactly_what_full_summaries_would_have_told_it(
        steps: list[tuple[int, dict[int, int], bool]]) -> None:
    """Two identical nodes, one sending deltas and the other only full summaries: at every
    summary the leader dates every service's last packet identically for both."""
    services = list(range(1, 7))
    deltas, fulls = traffic.TrafficWatch(), traffic.TrafficWatch()
    facts = scaling.ClusterFacts(window_ns=WINDOW, took_office_ns=0)
    totals = dict.fromkeys(services, 0)
    now = 0
    for gap, growth, summarise in steps:
        now += gap
        for service, more in growth.items():
            totals[service] += more
        counts = {s: traffic.Counts(t, 0) for s, t in totals.items()}
        for watch in (deltas, fulls):
            watch.sample(now_ns=now, listed=services, counts=counts)
        if summarise:
            fulls.want_full()
            assert facts.apply(node="d", incarnation=1, summary=deltas.summary(now_ns=now),
                               now_ns=now + 5)
            assert facts.apply(node="f", incarnation=1, summary=fulls.summary(now_ns=now),
                               now_ns=now + 5)
            held_d, held_f = facts.summary_of("d"), facts.summary_of("f")
            assert held_d is not None and held_f is not None
            assert held_d.last_traffic_ns == held_f.last_traffic_ns
            assert held_d.received_ns == held_f.received_ns


def test_a_delta_applies_only_onto_the_generation_before_it_of_the_same_incarnation() -> None:
    facts = scaling.ClusterFacts(window_ns=WINDOW, took_office_ns=0)
    assert not facts.apply(node="a", incarnation=1, summary=delta(2), now_ns=S)  # nothing held
    assert facts.summary_of("a") is None
    assert facts.apply(node="a", incarnation=1, summary=full(1, fact(5)), now_ns=10 * S)
    assert not facts.apply(node="a", incarnation=1, summary=delta(3), now_ns=11 * S)  # a gap
    assert not facts.apply(node="a", incarnation=2, summary=delta(2), now_ns=11 * S)  # restart
    held = facts.summary_of("a")
    assert held is not None and held.received_ns == 10 * S  # refused: not even fresher
    assert facts.apply(node="a", incarnation=1, summary=delta(2), now_ns=12 * S)  # a beat
    assert held.received_ns == 12 * S and held.last_traffic_ns == {SVC: 5 * S}
    assert facts.apply(node="a", incarnation=1, summary=delta(3, fact(1)), now_ns=13 * S)
    assert held.last_traffic_ns == {SVC: 12 * S} and held.generation == 3


def test_a_full_summary_drops_the_services_the_node_no_longer_lists() -> None:
    facts = scaling.ClusterFacts(window_ns=WINDOW, took_office_ns=0)
    facts.apply(node="a", incarnation=1, summary=full(1, fact(5), fact(5, service=2)),
                now_ns=10 * S)
    facts.apply(node="a", incarnation=1, summary=full(2, fact(5, service=2)), now_ns=11 * S)
    held = facts.summary_of("a")
    assert held is not None and set(held.last_traffic_ns) == {2}
    verdict = facts.scale_down(service=SVC, idle_ns=S, live_nodes=["a"], now_ns=20 * S)
    assert not verdict.allowed and verdict.cause == scaling.NO_FACTS


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
    watch = traffic.TrafficWatch()
    watch.blind("XDP failed on veth3: EPERM")
    queue.summary_due()
    report = queue.next_report(lambda: watch.summary(now_ns=S))
    assert report is not None and report.summary is not None
    assert report.summary.facts == () and report.summary.blind.startswith("XDP failed")
    assert queue.acknowledged(seq=report.seq)
    watch.sample(now_ns=2 * S, listed=[SVC], counts={})
    queue.summary_due()
    report = queue.next_report(lambda: watch.summary(now_ns=2 * S))
    assert report is not None and report.summary == full(2, fact(0))


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
    built: list[int] = []

    def summary() -> traffic.Summary:
        built.append(len(built) + 1)
        return delta(len(built))

    assert queue.next_report(summary) is None  # nothing due: nothing built
    queue.summary_due()
    first = queue.next_report(summary)
    assert first is not None and first.requests == () and first.summary == delta(1)
    queue.summary_due()  # due again while report 1 is in flight
    queue.summary_due()
    assert queue.next_report(summary) == first and built == [1]  # a retry builds nothing
    assert queue.acknowledged(seq=first.seq)
    second = queue.next_report(summary)
    # Built once, after the acknowledgement: a delta follows what the leader took.
    assert second is not None and second.summary == delta(2) and second.seq == first.seq + 1
    assert queue.acknowledged(seq=second.seq) and queue.idle and built == [1, 2]


def test_a_report_an_older_leader_could_not_read_goes_again_under_a_new_seq() -> None:
    queue = reports.ReportQueue()
    request = reports.Request(service_ip=SVC, source_ip=9, monotonic_ns=1, unix_ms=2)
    queue.add(request)
    queue.summary_due()
    first = queue.next_report(lambda: full(1))
    assert first is not None and first.requests == (request,)
    assert not queue.requeue(seq=first.seq + 1)  # not the report in flight: nothing happens
    assert queue.requeue(seq=first.seq)
    again = queue.next_report(lambda: full(2))
    assert again is not None and again.seq == first.seq + 1
    assert again.requests == (request,) and again.summary == full(2)
