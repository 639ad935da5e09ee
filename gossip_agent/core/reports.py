"""Scale-up requests on their way to the leader: per-service deduplication on the reporting node,
sequencing for an idempotent report call, and the leader's memory of what it already took.

Reporting node (ReportQueue): a scale-up event for a service that already has a request waiting
or in flight is absorbed into it (its `events` count grows), so a burst of packets to a sleeping
service becomes one request per report round trip, whatever the kernel's own rate limit lets
through. Reports are stop-and-wait: one report in flight at a time, resent with the SAME seq and
content until acknowledged, so the leader can recognise a retry by (node, incarnation, seq).

Leader (Ledger): remembers the last seq taken per (node, incarnation). Because a reporter never
has two reports in flight, any seq at or below that is a retry of something already acted on.
A new incarnation (the reporter restarted and counts from 1 again) replaces the old memory.
The ledger lives in the leader's memory only: after a change of leader, a report the old leader
took but whose acknowledgement was lost is taken once more by the new one. A scale-up tolerates
that (asking again for a service that is waking changes nothing; the leader's cool-down, in the
scaling issue, absorbs it), and it costs no state shared between leaders.

Pure: no clocks (times are carried, never read), no I/O.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

from gossip_agent.core import traffic

# Requests in one report: a report stays a few KB (each request ~40 bytes on the wire), and
# 256 distinct sleeping services woken within one round trip is already far beyond real traffic.
MAX_REPORT_REQUESTS = 256
# Nodes the leader remembers report sequences for: well above any cluster this agent targets;
# the least recently heard-from node is forgotten first (its next retry is then taken twice at
# worst, which a scale-up tolerates: scaling up an already waking service changes nothing).
MAX_LEDGER_NODES = 4096


@dataclasses.dataclass(frozen=True)
class Request:
    """One scale-up request as reported: the first event for the service and how many followed."""

    service_ip: int
    source_ip: int
    monotonic_ns: int  # the reporting node's CLOCK_MONOTONIC when its kernel saw the first event
    unix_ms: int  # the reporting node's wall clock when its agent read that event
    events: int = 1


@dataclasses.dataclass(frozen=True)
class Report:
    seq: int
    requests: tuple[Request, ...]
    # The node's traffic summary (core.traffic: full or a delta), None when this report
    # carries none.
    summary: traffic.Summary | None = None


class ReportQueue:
    """The reporting node's side: pending requests, deduplicated per service, and the one report
    in flight."""

    def __init__(self, *, max_requests: int = MAX_REPORT_REQUESTS) -> None:
        self._max = max_requests
        self._pending: dict[int, Request] = {}  # service_ip -> request not yet in a report
        self._in_flight: Report | None = None
        self._in_flight_services: frozenset[int] = frozenset()
        self._seq = 0
        self._summary_due = False  # the next new report carries a summary
        self.absorbed = 0  # events folded into an existing request (for stats and tests)

    def add(self, request: Request) -> bool:
        """Queues one event; False when it was absorbed into a request for the same service."""
        if request.service_ip in self._in_flight_services:
            self.absorbed += 1
            return False
        waiting = self._pending.get(request.service_ip)
        if waiting is not None:
            self._pending[request.service_ip] = dataclasses.replace(
                waiting, events=waiting.events + request.events)
            self.absorbed += 1
            return False
        self._pending[request.service_ip] = request
        return True

    def summary_due(self) -> None:
        """A traffic summary is due. It is built only when the next new report is (see
        next_report): a summary that waited behind a report in flight would otherwise have to
        be merged with a newer one, and a delta must follow the summary acknowledged last."""
        self._summary_due = True

    def next_report(self, summary: Callable[[], traffic.Summary] | None = None
                    ) -> Report | None:
        """The report to send now: the one in flight (a retry, unchanged), else a new one with
        the next seq, up to max_requests pending requests and, when one is due, the summary
        `summary()` builds, else None."""
        if self._in_flight is not None:
            return self._in_flight
        due = self._summary_due and summary is not None
        if not self._pending and not due:
            return None
        taken = list(self._pending)[: self._max]
        requests = tuple(self._pending.pop(service) for service in taken)
        self._seq += 1
        self._in_flight = Report(self._seq, requests, summary() if due and summary else None)
        if due:
            self._summary_due = False
        self._in_flight_services = frozenset(taken)
        return self._in_flight

    def requeue(self, seq: int) -> bool:
        """The leader acknowledged `seq` without reading it (an agent before 0.2 reads only the
        legacy layout): its requests wait again (events folded into any newer request for the
        same service) and a summary is due, for a new report under the next seq. True when
        `seq` was the report in flight."""
        report = self._in_flight
        if report is None or report.seq != seq:
            return False
        self.acknowledged(seq)
        for request in report.requests:
            newer = self._pending.pop(request.service_ip, None)
            self._pending[request.service_ip] = request if newer is None else (
                dataclasses.replace(request, events=request.events + newer.events))
        if report.summary is not None:
            self._summary_due = True
        return True

    def acknowledged(self, seq: int) -> bool:
        """The leader acknowledged `seq`; True when that was the report in flight."""
        if self._in_flight is None or self._in_flight.seq != seq:
            return False
        self._in_flight = None
        self._in_flight_services = frozenset()
        return True

    @property
    def in_flight(self) -> Report | None:
        return self._in_flight

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return self._in_flight is None and not self._pending and not self._summary_due


class Ledger:
    """The leader's side: which reports it already took, per reporter."""

    def __init__(self, *, max_nodes: int = MAX_LEDGER_NODES) -> None:
        self._max = max_nodes
        self._last: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()

    def knows(self, node: str) -> bool:
        """Whether a report from `node` was taken (and is still remembered)."""
        return node in self._last

    def take(self, *, node: str, incarnation: int, seq: int) -> bool:
        """True the first time (node, incarnation, seq) is seen; False for a retry."""
        known = self._last.get(node)
        self._last.pop(node, None)
        if known is not None and known[0] == incarnation and seq <= known[1]:
            self._last[node] = known
            return False
        self._last[node] = (incarnation, seq)
        while len(self._last) > self._max:
            self._last.popitem(last=False)
        return True
