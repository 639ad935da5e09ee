"""core.reports: per-service deduplication, stop-and-wait sequencing, the leader's ledger."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip_agent.core import reports

pytestmark = pytest.mark.unit


def request(service: int, *, source: int = 7, at: int = 0) -> reports.Request:
    return reports.Request(service_ip=service, source_ip=source, monotonic_ns=at, unix_ms=0)


def test_events_for_a_service_already_waiting_are_absorbed_into_its_request() -> None:
    queue = reports.ReportQueue()
    assert queue.add(request(1, at=10)) is True
    assert queue.add(request(1, at=20)) is False
    assert queue.add(request(1, at=30)) is False
    report = queue.next_report()
    assert report is not None
    assert report.requests == (reports.Request(1, 7, 10, 0, events=3),)  # the first, counted 3x
    assert queue.absorbed == 2


def test_a_report_is_offered_again_unchanged_until_its_seq_is_acknowledged() -> None:
    queue = reports.ReportQueue()
    queue.add(request(1))
    first = queue.next_report()
    assert first is not None and first.seq == 1
    queue.add(request(2))  # arrives while report 1 is in flight: waits for the next report
    assert queue.next_report() == first
    assert queue.acknowledged(seq=5) is False  # not the report in flight: ignored
    assert queue.next_report() == first
    assert queue.acknowledged(seq=1) is True
    second = queue.next_report()
    assert second is not None and second.seq == 2
    assert [r.service_ip for r in second.requests] == [2]


def test_events_for_a_service_in_flight_are_absorbed_and_not_reported_again() -> None:
    queue = reports.ReportQueue()
    queue.add(request(1))
    assert queue.next_report() is not None
    assert queue.add(request(1)) is False
    queue.acknowledged(seq=1)
    assert queue.next_report() is None
    assert queue.idle


def test_after_acknowledgement_a_new_event_for_the_service_is_a_new_request() -> None:
    queue = reports.ReportQueue()
    queue.add(request(1))
    queue.next_report()
    queue.acknowledged(seq=1)
    assert queue.add(request(1, at=99)) is True
    report = queue.next_report()
    assert report is not None and report.seq == 2 and report.requests[0].monotonic_ns == 99


def test_a_report_carries_at_most_max_requests_and_the_rest_follow_in_order() -> None:
    queue = reports.ReportQueue(max_requests=3)
    for service in range(1, 8):
        queue.add(request(service))
    sent = []
    while (report := queue.next_report()) is not None:
        assert len(report.requests) <= 3
        sent.extend(r.service_ip for r in report.requests)
        queue.acknowledged(report.seq)
    assert sent == list(range(1, 8))


def test_ledger_takes_each_seq_of_an_incarnation_once() -> None:
    ledger = reports.Ledger()
    assert ledger.take(node="a", incarnation=1, seq=1) is True
    assert ledger.take(node="a", incarnation=1, seq=1) is False
    assert ledger.take(node="b", incarnation=1, seq=1) is True  # another node
    assert ledger.take(node="a", incarnation=1, seq=2) is True
    assert ledger.take(node="a", incarnation=1, seq=1) is False  # a late retry of an old one


def test_ledger_takes_seq_one_again_from_a_restarted_reporter() -> None:
    ledger = reports.Ledger()
    assert ledger.take(node="a", incarnation=1, seq=3) is True
    assert ledger.take(node="a", incarnation=2, seq=1) is True


def test_ledger_forgets_the_least_recently_heard_node_beyond_its_bound() -> None:
    ledger = reports.Ledger(max_nodes=2)
    ledger.take(node="a", incarnation=1, seq=1)
    ledger.take(node="b", incarnation=1, seq=1)
    ledger.take(node="a", incarnation=1, seq=1)  # a heard from again (a retry)
    ledger.take(node="c", incarnation=1, seq=1)  # b is forgotten, a is kept
    assert ledger.take(node="a", incarnation=1, seq=1) is False
    assert ledger.take(node="b", incarnation=1, seq=1) is True


# An operation on the reporting side: an event for service s, a failed delivery (the report is
# offered again), or a delivery that the leader takes (possibly a retry it has seen).
op_st = st.one_of(
    st.tuples(st.just("event"), st.integers(1, 6)),
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("deliver"), st.booleans()),
)


@given(st.lists(op_st, max_size=60))
def test_every_event_is_acted_on_once_by_the_leader_whatever_fails_or_repeats(ops) -> None:
    """Each event ends in exactly one request the leader acts on (its own or one it was folded
    into), no report is acted on twice, and seqs go 1, 2, 3... Retries may repeat a delivery."""
    queue = reports.ReportQueue(max_requests=2)
    ledger = reports.Ledger()
    acted_events = 0
    seqs_acted: list[int] = []
    events = 0
    absorbed_in_flight = 0

    def deliver(*, ack: bool) -> None:
        nonlocal acted_events
        report = queue.next_report()
        if report is None:
            return
        if ledger.take(node="n", incarnation=1, seq=report.seq):
            acted_events += sum(r.events for r in report.requests)
            seqs_acted.append(report.seq)
        if ack:
            queue.acknowledged(report.seq)

    for kind, arg in ops:
        if kind == "event":
            events += 1
            in_flight = queue.in_flight
            if in_flight is not None and arg in {r.service_ip for r in in_flight.requests}:
                absorbed_in_flight += 1
            queue.add(request(arg))
        elif kind == "fail":
            queue.next_report()
        else:
            deliver(ack=bool(arg))
    while not queue.idle:  # the link comes back: everything left is delivered
        deliver(ack=True)
    assert seqs_acted == list(range(1, len(seqs_acted) + 1))
    assert acted_events + absorbed_in_flight == events
