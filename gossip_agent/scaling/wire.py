"""Scale-up requests and node reports on the wire (gossip_agent.v1.ScaleRequest, NodeReport).

Between agents (NodeReport) addresses are fixed32 integers, the keys the data plane uses, so a
report costs no string formatting on the node and no parsing on the leader; towards operators
(ScaleRequest on WatchScaleRequests) they stay dotted strings for grpcurl. compat.py reads and
writes the dotted layout of agents before 0.2.

report_from_pb validates everything a leader acts on, so a report either parses completely or
is refused with ReportInvalid (INVALID_ARGUMENT) and nothing is counted.
"""

from __future__ import annotations

import dataclasses

from gossip_agent import errors
from gossip_agent.core import reports, snapshots, traffic
from gossip_agent.scaling import hub
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
    """The compact layout (fixed32 addresses); compat.legacy_report_to_pb writes the old one."""
    summary = report.summary
    message = pb.NodeReport(
        node=node, incarnation=incarnation, seq=report.seq, compact=True,
        scale_ups=[pb.ScaleUp(service=r.service_ip, source=r.source_ip,
                              monotonic_ns=r.monotonic_ns, unix_ms=r.unix_ms, events=r.events)
                   for r in report.requests],
    )
    if summary is not None:
        message.has_summary = True
        message.generation = summary.generation
        message.full = summary.full
        message.blind = summary.blind
        message.facts.extend(pb.ServiceFact(service=f.service_ip, passed=f.passed,
                                            dropped=f.dropped, idle_ns=f.idle_ns)
                             for f in summary.facts)
    return message


def report_from_pb(message: pb.NodeReport) -> Incoming:
    """A report in the compact layout (compat.read_report takes either layout)."""
    check_header(message.node, message.seq)
    check_sizes(message.node, requests=len(message.scale_ups), facts=len(message.facts))
    requests = tuple(reports.Request(service_ip=r.service, source_ip=r.source,
                                     monotonic_ns=r.monotonic_ns, unix_ms=r.unix_ms,
                                     events=max(1, r.events))
                     for r in message.scale_ups)
    check_requests(requests, node=message.node)
    summary = _summary_from_pb(message) if message.has_summary else None
    return Incoming(message.node, message.incarnation,
                    reports.Report(message.seq, requests, summary))


def check_header(node: str, seq: int) -> None:
    if not node or len(node) > MAX_NODE_NAME:
        raise errors.ReportInvalid(
            f"report node name must be 1..{MAX_NODE_NAME} characters, got {len(node)}")
    if seq < 1:
        raise errors.ReportInvalid(f"report from {node}: seq must be >= 1")


def check_sizes(node: str, *, requests: int, facts: int) -> None:
    """A report's bounds, in either layout, checked before anything in it is built."""
    if requests > reports.MAX_REPORT_REQUESTS:
        raise errors.ReportInvalid(
            f"report from {node} carries {requests} scale requests; "
            f"at most {reports.MAX_REPORT_REQUESTS} are accepted")
    if facts > traffic.MAX_FACTS:
        raise errors.ReportInvalid(
            f"report from {node} carries {facts} traffic facts; "
            f"at most {traffic.MAX_FACTS} are accepted")


def check_requests(requests: tuple[reports.Request, ...], *, node: str) -> None:
    if len({r.service_ip for r in requests}) != len(requests):
        raise errors.ReportInvalid(
            f"report from {node} names a service twice (requests are per service)")


def check_summary(*, node: str, facts: tuple[traffic.Fact, ...], blind: str, full: bool) -> None:
    """A summary's rules, in either layout (its size: check_sizes)."""
    if len({f.service_ip for f in facts}) != len(facts):
        raise errors.ReportInvalid(f"report from {node} has two traffic facts for one service")
    if blind:  # a blind node counts nothing, so a blind summary with facts contradicts itself
        if len(blind) > MAX_BLIND_REASON:
            raise errors.ReportInvalid(
                f"report from {node}: blind reason of {len(blind)} characters; "
                f"at most {MAX_BLIND_REASON} are accepted")
        if facts:
            raise errors.ReportInvalid(
                f"report from {node} says the node is blind but carries traffic facts")
        if not full:
            raise errors.ReportInvalid(
                f"report from {node} says the node is blind in a delta (a blind summary is "
                f"always full)")


def _summary_from_pb(message: pb.NodeReport) -> traffic.Summary:
    facts = tuple(traffic.Fact(f.service, f.passed, f.dropped, f.idle_ns)
                  for f in message.facts)
    check_summary(node=message.node, facts=facts, blind=message.blind, full=message.full)
    if message.generation < 1:
        raise errors.ReportInvalid(f"report from {message.node}: summary generation must be >= 1")
    return traffic.Summary(message.generation, full=message.full, facts=facts,
                           blind=message.blind)


