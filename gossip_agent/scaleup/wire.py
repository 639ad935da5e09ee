"""Scale-up requests and node reports on the wire (gossip_agent.v1.ScaleRequest, NodeReport).

report_from_pb validates everything a leader acts on, so a report either parses completely or
is refused with ReportInvalid (INVALID_ARGUMENT) and nothing is counted.
"""

from __future__ import annotations

import dataclasses

from gossip_agent import errors
from gossip_agent.core import reports, snapshots, traffic
from gossip_agent.scaleup import hub
from gossip_agent.v1 import gossip_pb2 as pb

# Longest node name accepted in a report: a Kubernetes node name is a DNS subdomain.
MAX_NODE_NAME = 253
# Longest blindness reason accepted: a sentence naming an interface and a kernel error.
MAX_BLIND_REASON = 512


@dataclasses.dataclass(frozen=True)
class Incoming:
    node: str
    incarnation: int
    report: reports.Report


def request_to_pb(request: reports.Request, *, node: str, via: str = "", name: str = "",
                  skipped: int = 0) -> pb.ScaleRequest:
    return pb.ScaleRequest(
        service_ip=snapshots.format_ip(request.service_ip),
        source_ip=snapshots.format_ip(request.source_ip),
        node=node,
        monotonic_ns=request.monotonic_ns,
        unix_ms=request.unix_ms,
        via=via,
        events=request.events,
        skipped=skipped,
        name=name,
    )


def seen_to_pb(seen: hub.Seen, *, skipped: int) -> pb.ScaleRequest:
    return request_to_pb(seen.request, node=seen.node, via=seen.via, name=seen.name,
                         skipped=skipped)


def report_to_pb(report: reports.Report, *, node: str, incarnation: int) -> pb.NodeReport:
    return pb.NodeReport(
        node=node, incarnation=incarnation, seq=report.seq,
        scale_requests=[request_to_pb(r, node=node) for r in report.requests],
        traffic=[fact_to_pb(f) for f in report.summary or ()],
        has_summary=report.summary is not None,
        blind=report.blind,
    )


def fact_to_pb(fact: traffic.Fact) -> pb.TrafficFact:
    return pb.TrafficFact(service_ip=snapshots.format_ip(fact.service_ip), passed=fact.passed,
                          dropped=fact.dropped, idle_ns=fact.idle_ns)


def report_from_pb(message: pb.NodeReport) -> Incoming:
    if not message.node or len(message.node) > MAX_NODE_NAME:
        raise errors.ReportInvalid(
            f"report node name must be 1..{MAX_NODE_NAME} characters, got {len(message.node)}")
    if message.seq < 1:
        raise errors.ReportInvalid(f"report from {message.node}: seq must be >= 1")
    if len(message.scale_requests) > reports.MAX_REPORT_REQUESTS:
        raise errors.ReportInvalid(
            f"report from {message.node} carries {len(message.scale_requests)} scale requests; "
            f"at most {reports.MAX_REPORT_REQUESTS} are accepted")
    requests = tuple(_request_from_pb(r, node=message.node) for r in message.scale_requests)
    if len({r.service_ip for r in requests}) != len(requests):
        raise errors.ReportInvalid(
            f"report from {message.node} names a service twice (requests are per service)")
    summary = _summary_from_pb(message) if message.has_summary else None
    _check_blind(message)
    return Incoming(message.node, message.incarnation,
                    reports.Report(message.seq, requests, summary,
                                   message.blind if summary is not None else ""))


def _check_blind(message: pb.NodeReport) -> None:
    """A blind node counts nothing, so a blind summary with facts contradicts itself."""
    if not message.blind:
        return
    if len(message.blind) > MAX_BLIND_REASON:
        raise errors.ReportInvalid(
            f"report from {message.node}: blind reason of {len(message.blind)} characters; "
            f"at most {MAX_BLIND_REASON} are accepted")
    if message.traffic:
        raise errors.ReportInvalid(
            f"report from {message.node} says the node is blind but carries traffic facts")


def _summary_from_pb(message: pb.NodeReport) -> tuple[traffic.Fact, ...]:
    if len(message.traffic) > traffic.MAX_FACTS:
        raise errors.ReportInvalid(
            f"report from {message.node} carries {len(message.traffic)} traffic facts; "
            f"at most {traffic.MAX_FACTS} are accepted")
    try:
        facts = tuple(traffic.Fact(service_ip=snapshots.parse_ip(f.service_ip), passed=f.passed,
                                   dropped=f.dropped, idle_ns=f.idle_ns)
                      for f in message.traffic)
    except errors.GossipAgentError as exc:
        raise errors.ReportInvalid(f"report from {message.node}: {exc}") from exc
    if len({f.service_ip for f in facts}) != len(facts):
        raise errors.ReportInvalid(
            f"report from {message.node} has two traffic facts for one service")
    return facts


def _request_from_pb(message: pb.ScaleRequest, *, node: str) -> reports.Request:
    try:
        service = snapshots.parse_ip(message.service_ip)
        source = snapshots.parse_ip(message.source_ip)
    except errors.GossipAgentError as exc:
        raise errors.ReportInvalid(f"report from {node}: {exc}") from exc
    return reports.Request(
        service_ip=service, source_ip=source, monotonic_ns=message.monotonic_ns,
        unix_ms=message.unix_ms, events=max(1, message.events),
    )
