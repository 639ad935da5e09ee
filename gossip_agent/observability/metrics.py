"""Prometheus metrics at /metrics (METRICS_PORT): the only module that imports prometheus_client.

Two kinds of series, both in one registry per agent (never the process-global one, so several
agents in one process, as in tests, do not collide):
- Observed as they happen, through the telemetry.Telemetry this class implements: the adoption
  latency and map apply histograms, lease acquisitions and losses, scale-up requests.
- Read when scraped (AgentCollector): what the agent holds (term, seq, entries), whether it
  leads, peers by state, and the counters the engine keeps in engine.Stats. Reading at scrape
  time keeps prometheus_client out of the engine and costs nothing between scrapes.

The endpoint is served by aiohttp on the agent's own event loop, so a scrape reads the agent's
state between two event-loop steps (consistent, no locks, no thread). Names follow Prometheus
conventions: the gossip_agent_ prefix, base units in names (_seconds, _bytes), _total on
counters. docs/operating.md ("Metrics") documents every series; a test checks that list against
a scrape.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Iterator

import prometheus_client
from aiohttp import web
from prometheus_client import core as prom_core
from prometheus_client import exposition, registry, utils

from gossip_agent.core import peers
from gossip_agent.core import scaling as scaling_mod
from gossip_agent.dataplane import enforcer as enforcer_mod
from gossip_agent.dataplane import events
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.observability import telemetry

log = logging.getLogger("gossip_agent.metrics")

# No `_created` series: in the text format they are extra gauges per counter and histogram
# that Prometheus 2.x stores but nothing here uses (process-wide, and only this module uses
# prometheus_client).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "gossip_agent"
# Adoption latency: a push lands in ~1-30 ms on a busy cluster, a pull waits for anti-entropy
# (GOSSIP_INTERVAL, 1 s) and a partition heals in seconds to minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
# Map apply: one entry ~3 us, 1024 entries batched ~0.4 ms, one by one ~3 ms (DESIGN.md).
APPLY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                 0.01, 0.025, 0.1)


class Metrics:
    """telemetry.Telemetry backed by prometheus_client, plus the scrape-time collector."""

    def __init__(self) -> None:
        self.registry = registry.CollectorRegistry(auto_describe=False)
        # Observed on every adoption (the hot path of a push), exposed at scrape time.
        self._adoptions = AdoptionHistograms()
        self.registry.register(self._adoptions)
        self._acquired = prometheus_client.Counter(
            f"{PREFIX}_lease_acquisitions", "Leader leases won by this agent.",
            ["backend"], registry=self.registry)
        self._lost = prometheus_client.Counter(
            f"{PREFIX}_lease_losses", "Leader leases this agent stopped holding, by reason "
            "(renew-failed, released, bump-failed).", ["backend", "reason"],
            registry=self.registry)
        self._scale = prometheus_client.Counter(
            f"{PREFIX}_scale_requests", "Scale-up requests handled by the leader, by result "
            "(received, scaled, coalesced, failed).", ["result"], registry=self.registry)
        for result in telemetry.SCALE_RESULTS:  # present from the start, so rate() works
            self._scale.labels(result=result)

    # -- telemetry.Telemetry --------------------------------------------------------------

    def adopted(self, *, via: str, age_seconds: float, apply_seconds: float) -> None:
        self._adoptions.observe(via=via, age_seconds=age_seconds, apply_seconds=apply_seconds)

    def lease_acquired(self, *, backend: str, term: int) -> None:
        self._acquired.labels(backend=backend).inc()

    def lease_lost(self, *, backend: str, reason: str) -> None:
        self._lost.labels(backend=backend, reason=reason).inc()

    def scale_requested(self, *, result: str) -> None:
        self._scale.labels(result=result).inc()

    # -- wiring -----------------------------------------------------------------------------

    def watch(
        self, *, leadership: leader_mod.Leadership, node: str, scale_events: events.EventHub,
        enforcer: enforcer_mod.Enforcer | None, scaling: scaling_mod.Status,
    ) -> None:
        """Adds the scrape-time series of one agent (call once)."""
        self._acquired.labels(backend=leadership.lease.backend)
        self.registry.register(AgentCollector(leadership=leadership, node=node))
        self.registry.register(XdpCollector(scale_events=scale_events, enforcer=enforcer))
        self.registry.register(ScalingCollector(scaling))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for, and its content type."""
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder(self.registry), content_type


class Buckets:
    """One histogram's counts: an observation is a bisect and two additions, where
    prometheus_client's Histogram takes a lock and walks its buckets (measured: 4.3 us per
    adoption for the two histograms, 0.8 us this way; several times that on a cold cache,
    which is how a follower meets each push). Single-threaded: the event loop observes and
    scrapes."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # `le` as prometheus_client writes it ("0.001", ..., "+Inf").
        self._le = [utils.floatToGoString(b)  # type: ignore[no-untyped-call]
                    for b in (*bounds, math.inf)]
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1  # le: value <= bound
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) per bucket, as the exposition writes them."""
        return list(zip(self._le, itertools.accumulate(map(float, self._counts)), strict=True))


class AdoptionHistograms(registry.Collector):
    """The adoption latency (by path) and map apply histograms, in the exposition
    prometheus_client's Histogram writes (no _created series: see disable_created_metrics)."""

    def __init__(self) -> None:
        self._latency: dict[str, Buckets] = {}  # by `via`, from its first adoption on
        self._apply = Buckets(APPLY_BUCKETS)

    def observe(self, *, via: str, age_seconds: float, apply_seconds: float) -> None:
        latency = self._latency.get(via)
        if latency is None:
            latency = self._latency[via] = Buckets(LATENCY_BUCKETS)
        latency.observe(age_seconds)
        self._apply.observe(apply_seconds)

    def collect(self) -> Iterator[prom_core.Metric]:
        latency = prom_core.HistogramMetricFamily(
            f"{PREFIX}_adoption_latency_seconds",
            "Time from the leader's write of a snapshot to its adoption here (carried on the "
            "wire as an age each hop adds its monotonic elapsed time to; time in flight between "
            "hops is not counted), by path.", labels=["via"])
        for via, buckets in self._latency.items():  # in order of first use, as before
            latency.add_metric([via], buckets.cumulative(), buckets.total)
        yield latency
        apply = prom_core.HistogramMetricFamily(
            f"{PREFIX}_map_apply_duration_seconds",
            "Time to write one adopted snapshot's difference into SERVICE_LIST and its meta.")
        apply.add_metric([], self._apply.cumulative(), self._apply.total)
        yield apply


class AgentCollector(registry.Collector):
    """The agent's state, read at scrape time."""

    def __init__(self, *, leadership: leader_mod.Leadership, node: str) -> None:
        self._leadership = leadership
        self._engine: engine_mod.Engine = leadership.engine
        self._node = node

    def collect(self) -> Iterator[prom_core.Metric]:
        yield from self._held()
        yield from self._leading()
        yield self._peers()
        yield from self._gossip_counters()

    def _held(self) -> Iterator[prom_core.Metric]:
        engine = self._engine
        info = prom_core.InfoMetricFamily(
            f"{PREFIX}_node", "This agent: node name, data plane and lease backend.")
        info.add_metric([], {"node": self._node, "dataplane": engine.dataplane.kind,
                             "lease_backend": self._leadership.lease.backend})
        yield info
        version = engine.held.version
        yield _gauge("adopted_term", "Term of the snapshot held (and in the map).", version.term)
        yield _gauge("adopted_seq", "Sequence number, within its term, of the snapshot held.",
                     version.seq)
        yield _gauge("snapshot_entries", "Services in the snapshot held.",
                     len(engine.table) if engine.held.snapshot is None
                     else engine.held.snapshot.entry_count)
        yield _gauge("max_term_seen", "Highest term this agent has seen anywhere.",
                     engine.max_term_seen)
        yield _gauge("map_max_entries", "SERVICE_LIST capacity.", engine.dataplane.max_entries)

    def _leading(self) -> Iterator[prom_core.Metric]:
        leadership = self._leadership
        yield _gauge("is_leader", "1 while this agent holds the lease and publishes.",
                     1 if leadership.leading else 0)
        yield _gauge("leader_term", "The lease term this agent holds (0 unless it leads).",
                     leadership.term)
        yield _gauge("refusing_to_lead", "1 while this agent refuses to lead (see GetLeader).",
                     1 if leadership.refusal else 0)

    def _peers(self) -> prom_core.Metric:
        family = prom_core.GaugeMetricFamily(
            f"{PREFIX}_peers", "Known peers by state (alive, suspect, dead, unknown).",
            labels=["state"])
        counts = {state: 0 for state in peers.PeerState}
        for peer in self._engine.membership.peers():
            counts[peer.state] += 1
        for state, count in counts.items():
            family.add_metric([state.value], count)
        return family

    def _gossip_counters(self) -> Iterator[prom_core.Metric]:
        stats = self._engine.stats
        received = prom_core.CounterMetricFamily(
            f"{PREFIX}_messages_received", "Snapshots received, by path (push, pull, exchange, "
            "self) and decision (adopt, duplicate, stale, repair, conflict-win, conflict-lose, "
            "need-full).", labels=["kind", "result"])
        for key, count in sorted(stats.received.items()):
            kind, _, result = key.partition(":")
            received.add_metric([kind, result], count)
        yield received
        yield _counter("messages_rejected", "Messages refused: invalid (bad version, table, "
                       "hash or size: INVALID_ARGUMENT), cluster (another CLUSTER_ID: "
                       "FAILED_PRECONDITION), unproven-term (term and leader not in the lease "
                       "record: FAILED_PRECONDITION), not-member (a Gossip call from a "
                       "certificate without TLS_SERVER_NAME: PERMISSION_DENIED), forged (at the "
                       "leader, a version of its own term it never wrote: CONFLICT).", ["reason"],
                       [((reason,), stats.rejected[reason]) for reason in
                        ("invalid", "cluster", "unproven-term", "not-member", "forged")])
        yield _counter("messages_sent", "Snapshots sent: leader pushes (ok, failed) and "
                       "snapshots sent inside anti-entropy exchanges.", ["kind", "result"],
                       [(("push", "ok"), stats.pushes_sent),
                        (("push", "failed"), stats.push_failures),
                        (("exchange", "ok"), stats.pushes_in_exchange)])
        yield _counter("exchanges", "Anti-entropy exchanges this agent started, by result.",
                       ["result"], [(("ok",), stats.exchanges_ok),
                                    (("failed",), stats.exchanges_failed)])
        yield _counter("received_bytes", "Gossip message bytes received, by kind.", ["kind"],
                       [((k,), stats.bytes_received[k])
                        for k in ("push", "push-port", "exchange")])
        yield _counter("sent_bytes", "Gossip message bytes pushed by this agent as leader.",
                       ["kind"], [(("push",), stats.bytes_sent["push"])])
        yield _counter("map_repairs", "Map entries rewritten because they differed from the "
                       "held snapshot (hand edits, half-applied writes).", [],
                       [((), stats.repairs)])


class XdpCollector(registry.Collector):
    """This node's XDP side, read at scrape time: scale-up events read, interfaces."""

    def __init__(
        self, *, scale_events: events.EventHub, enforcer: enforcer_mod.Enforcer | None
    ) -> None:
        self._events = scale_events
        self._enforcer = enforcer

    def collect(self) -> Iterator[prom_core.Metric]:
        yield _counter("scale_events", "Scale-up events read from this node's XDP program "
                       "(packets to a service scaled to zero, rate-limited in the kernel).",
                       [], [((), self._events.published)])
        yield _counter("scale_events_dropped", "Scale-up events a slow reader lost here.",
                       [], [((), self._events.dropped)])
        interfaces = prom_core.GaugeMetricFamily(
            f"{PREFIX}_xdp_interfaces", "Interfaces matching XDP_INTERFACES, by what the agent "
            "did (attached, replaced, foreign, failed) and mode.", labels=["status", "mode"])
        counts: dict[tuple[str, str], int] = {}
        states = self._enforcer.interfaces.values() if self._enforcer is not None else ()
        for state in states:
            counts[(state.status, state.mode)] = counts.get((state.status, state.mode), 0) + 1
        for (status, mode), count in sorted(counts.items()):
            interfaces.add_metric([status, mode], count)
        yield interfaces


class ScalingCollector(registry.Collector):
    """Whether this node is blind, and (leader) why awake Services are not scaled down."""

    def __init__(self, status: scaling_mod.Status) -> None:
        self._status = status

    def collect(self) -> Iterator[prom_core.Metric]:
        yield _gauge("blind", "1 while this node cannot count its traffic (no program of ours "
                     "loaded, or an interface failed or carries another program): the leader "
                     "scales nothing down meanwhile. The reason is in GetState.",
                     1 if self._status.blind else 0)
        blocked = prom_core.GaugeMetricFamily(
            f"{PREFIX}_scale_down_blocked", "On the leader: awake opted-in Services whose "
            "scale-down the last round refused, by cause (office, no-live, silent, stale, "
            "blind, no-facts, traffic, scaled-up). Sentences in GetState.", labels=["cause"])
        counts = dict.fromkeys(scaling_mod.CAUSES, 0)
        for outlook in self._status.blocked():
            counts[outlook.verdict.cause] = counts.get(outlook.verdict.cause, 0) + 1
        for cause, count in counts.items():
            blocked.add_metric([cause], count)
        yield blocked


def _gauge(name: str, documentation: str, value: float) -> prom_core.Metric:
    return prom_core.GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _counter(
    name: str, documentation: str, labels: list[str],
    rows: list[tuple[tuple[str, ...], float]],
) -> prom_core.Metric:
    family = prom_core.CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for values, count in rows:
        family.add_metric(list(values), count)
    return family


class MetricsServer:
    """GET /metrics on METRICS_HOST:METRICS_PORT, served on the agent's event loop."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, *, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"METRICS_PORT {port} on {host}: cannot listen: {exc}") from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # what port 0 became
        log.info("metrics at http://%s:%d/metrics", host, self.port)

    async def _scrape(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
