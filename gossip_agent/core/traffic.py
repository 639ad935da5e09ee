"""What one node's XDP program saw per listed service, as the node reports it to the leader.

The XDP program counts packets per service and CPU (SERVICE_STATS: passed, dropped) but keeps
no time. A node samples those counters now and then (TrafficWatch.sample) and turns them into
facts the leader can combine with other nodes' without comparing clocks:

- passed / dropped: packets since the previous summary this node sent (deltas, not totals, so
  a leader that missed a summary under-counts instead of double-counting);
- idle_ns: how long ago, on this node's own monotonic clock, the node last saw any packet to
  the service, measured at the moment the summary is built. A node only knows that packets
  arrived between two samples, so it dates them at the later sample: idle time is
  under-estimated by at most one sampling period, never over-estimated (the safe side: a
  scale-down comes later, never early).
- A service this node started watching (first sample, or the counters went backwards because
  the map was recreated or the LRU evicted the entry) is dated "seen now": a node never claims
  idleness it did not observe.

Bounded: at most MAX_FACTS services per summary (the listed ones with the most recent traffic
first, so a node with more listed services than that reports the busiest and the leader treats
the rest as missing, which blocks their scale-down rather than allowing it).

Pure: times are passed in (nanoseconds of the node's CLOCK_MONOTONIC), no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

# Services per summary: SERVICE_LIST holds 1024 by default; each fact is ~20 bytes on the wire,
# so a full summary stays ~20 KB, well under the 4 MB gRPC message limit.
MAX_FACTS = 1024


@dataclasses.dataclass(frozen=True)
class Counts:
    """Totals the node's counters hold for one service, summed over CPUs."""

    passed: int
    dropped: int

    @property
    def total(self) -> int:
        return self.passed + self.dropped


@dataclasses.dataclass(frozen=True)
class Fact:
    """One service as one node saw it (wire: gossip_agent.v1.TrafficFact)."""

    service_ip: int
    passed: int  # packets passed since this node's previous summary
    dropped: int  # packets dropped since this node's previous summary
    idle_ns: int  # ns since this node last saw a packet to it (or started watching it)


@dataclasses.dataclass
class _Watched:
    last: Counts  # counter totals at the latest sample
    reported: Counts  # counter totals when the previous summary was built
    seen_at: int  # node monotonic ns of the latest sample that saw the totals grow


class TrafficWatch:
    """The node's side: samples of the counters in, bounded summaries out."""

    def __init__(self, *, max_facts: int = MAX_FACTS) -> None:
        self._max = max_facts
        self._watched: dict[int, _Watched] = {}

    def sample(self, *, now_ns: int, listed: Iterable[int],
               counts: Mapping[int, Counts]) -> None:
        """One reading of the counters for the services in this node's SERVICE_LIST.

        A listed service without a counter entry has simply seen no packet yet (the program
        creates the entry on the first packet)."""
        listed = set(listed)
        for service in list(self._watched):
            if service not in listed:
                del self._watched[service]  # no longer listed: nothing to report about it
        for service in listed:
            self._observe(service, counts.get(service, Counts(0, 0)), now_ns=now_ns)

    def _observe(self, service: int, now: Counts, *, now_ns: int) -> None:
        watched = self._watched.get(service)
        if watched is None:
            self._watched[service] = _Watched(last=now, reported=now, seen_at=now_ns)
            return
        if now.passed < watched.last.passed or now.dropped < watched.last.dropped:
            # Counters went backwards (map recreated, entry evicted): what happened between the
            # samples is unknown, so it counts as traffic now, and deltas restart from here.
            self._watched[service] = _Watched(last=now, reported=now, seen_at=now_ns)
            return
        if now.total > watched.last.total:
            watched.seen_at = now_ns
        watched.last = now

    def summary(self, *, now_ns: int) -> tuple[Fact, ...]:
        """The facts to send now (most recently busy first, at most max_facts); the deltas of
        the services included restart from here."""
        ordered = sorted(self._watched.items(), key=lambda item: (-item[1].seen_at, item[0]))
        facts = []
        for service, watched in ordered[: self._max]:
            facts.append(Fact(
                service_ip=service,
                passed=watched.last.passed - watched.reported.passed,
                dropped=watched.last.dropped - watched.reported.dropped,
                idle_ns=max(0, now_ns - watched.seen_at),
            ))
            watched.reported = watched.last
        return tuple(facts)

    @property
    def watched(self) -> int:
        return len(self._watched)
