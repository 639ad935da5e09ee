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

Full and delta summaries (what a summary costs is what changed): a node sends its leader only the
services whose counters moved since its previous summary (a delta; with none, a beat of a few
bytes), numbered by a generation that grows by one per summary. The leader applies a delta only
onto the generation before it and otherwise asks for a full summary (core.scaling). The node
sends a full one by itself when the leader cannot know what changed: its first summary, after
counters went backwards, when the services it lists changed (the leader drops the ones no
longer listed), while it is blind, and when more services moved than one summary holds.

Bounded: at most MAX_FACTS services per summary (the listed ones with the most recent traffic
first, so a node with more listed services than that reports the busiest and the leader treats
the rest as missing, which blocks their scale-down rather than allowing it).

Pure: times are passed in (nanoseconds of the node's CLOCK_MONOTONIC), no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

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


ZERO = Counts(0, 0)


@dataclasses.dataclass(frozen=True)
class Fact:
    """One service as one node saw it (wire: gossip_agent.v1.TrafficFact)."""

    service_ip: int
    passed: int  # packets passed since this node's previous summary
    dropped: int  # packets dropped since this node's previous summary
    idle_ns: int  # ns since this node last saw a packet to it (or started watching it)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one node tells the leader per interval (wire: the summary fields of NodeReport)."""

    generation: int  # 1, 2, 3... per TrafficWatch, one per summary built
    full: bool  # facts for every listed service (bounded), else only those that moved
    facts: tuple[Fact, ...]
    blind: str = ""  # why the node cannot count its traffic; a blind summary is full, no facts


@dataclasses.dataclass
class _Watched:
    last: Counts  # counter totals at the latest sample
    reported: Counts  # counter totals when the previous summary was built
    seen_at: int  # node monotonic ns of the latest sample that saw the totals grow


class TrafficWatch:
    """The node's side: samples of the counters in, bounded summaries out.

    A sample costs what has counters (the services that saw packets), not what is listed: the
    listed set is compared whole (one C-level set comparison) and walked only when it changed,
    and only services whose counters moved are remembered for the next delta."""

    def __init__(self, *, max_facts: int = MAX_FACTS) -> None:
        self._max = max_facts
        self._watched: dict[int, _Watched] = {}
        self._counted: set[int] = set()  # watched services whose counters are not zero
        self._moved: set[int] = set()  # counters moved since the previous summary
        self._generation = 0
        self._full_due = True  # the leader knows nothing of this watch yet
        self._blind = ""

    def sample(self, *, now_ns: int, listed: Iterable[int],
               counts: Mapping[int, Counts]) -> None:
        """One reading of the counters for the services in this node's SERVICE_LIST.

        A listed service without a counter entry has simply seen no packet yet (the program
        creates the entry on the first packet), or its entry was evicted (see _observe)."""
        if self._blind:  # seeing again: idleness is measured only over time the node observed
            self._blind = ""
            self._forget_all()
            self._full_due = True  # the leader holds a blind summary: it must be replaced
        shown = listed if isinstance(listed, AbstractSet) else set(listed)
        if self._watched.keys() != shown:
            self._relist(set(shown), now_ns=now_ns, counts=counts)
        for service, now in counts.items():
            if service in self._watched:
                self._observe(service, now, now_ns=now_ns)
        for service in self._counted - counts.keys():  # entry gone: counters read as zero
            self._observe(service, Counts(0, 0), now_ns=now_ns)

    def _relist(self, listed: set[int], *, now_ns: int, counts: Mapping[int, Counts]) -> None:
        """The listed services changed: the leader must drop what is no longer listed, and a
        newly listed service is dated "seen now" (a node never claims idleness it did not
        observe)."""
        self._full_due = True
        for service in self._watched.keys() - listed:
            del self._watched[service]
            self._counted.discard(service)
            self._moved.discard(service)
        for service in listed - self._watched.keys():
            now = counts.get(service, ZERO)
            self._watched[service] = _Watched(last=now, reported=now, seen_at=now_ns)
            if now.total:
                self._counted.add(service)

    def blind(self, reason: str) -> None:
        """The node cannot count its traffic now (`reason` says why): its summaries say so and
        carry no facts, and the watch starts afresh once it sees again."""
        if reason != self._blind:
            self._full_due = True
        self._blind = reason
        self._forget_all()

    def want_full(self) -> None:
        """The next summary is full: the leader asked for one (it could not apply a delta), or
        it reads only whole summaries (an agent before 0.2)."""
        self._full_due = True

    def _forget_all(self) -> None:
        self._watched.clear()
        self._counted.clear()
        self._moved.clear()

    def _observe(self, service: int, now: Counts, *, now_ns: int) -> None:
        watched = self._watched[service]
        last = watched.last
        if now.passed == last.passed and now.dropped == last.dropped:
            return
        self._moved.add(service)
        if now.total:
            self._counted.add(service)
        else:
            self._counted.discard(service)
        if now.passed < last.passed or now.dropped < last.dropped:
            # Counters went backwards (map recreated, entry evicted): what happened between the
            # samples is unknown, so it counts as traffic now, deltas restart from here, and the
            # leader gets everything again (a full summary).
            self._watched[service] = _Watched(last=now, reported=now, seen_at=now_ns)
            self._full_due = True
            return
        watched.seen_at = now_ns
        watched.last = now

    def summary(self, *, now_ns: int) -> Summary:
        """The summary to send now: full when due (see the module docstring), else the services
        whose counters moved since the previous summary. The deltas of the services included
        restart from here."""
        self._generation += 1
        if self._blind:
            self._full_due = False
            return Summary(self._generation, full=True, facts=(), blind=self._blind)
        full = self._full_due or len(self._moved) > self._max
        self._full_due = False
        services = self._busiest(self._watched if full else self._moved)
        self._moved.difference_update(services)
        return Summary(self._generation, full=full,
                       facts=tuple(self._fact(service, now_ns) for service in services))

    def _busiest(self, services: Iterable[int]) -> list[int]:
        """At most max_facts services, the most recently busy first."""
        ordered = sorted(services, key=lambda s: (-self._watched[s].seen_at, s))
        return ordered[: self._max]

    def _fact(self, service: int, now_ns: int) -> Fact:
        watched = self._watched[service]
        fact = Fact(service_ip=service,
                    passed=watched.last.passed - watched.reported.passed,
                    dropped=watched.last.dropped - watched.reported.dropped,
                    idle_ns=max(0, now_ns - watched.seen_at))
        watched.reported = watched.last
        return fact

    @property
    def watched(self) -> int:
        return len(self._watched)
