"""Node reports in the layout of agents before 0.2, for rolling updates from 0.1 (delete in 0.3).

Agents before 0.2 wrote NodeReport with dotted-string addresses in fields 4 and 5 and a whole
summary each time (compat.proto's LegacyNodeReport), and read only that. During a rolling
update both kinds run side by side:
- an older node reports to a newer leader: the leader parses NodeReport, sees no `compact` flag
  and reads the same bytes again as LegacyNodeReport (read_report), a full summary;
- a newer node reports to an older leader: the older leader reads none of the compact fields
  and its ReportAck lacks `compact`, so the node sends what that report carried again, in this
  layout and always whole, for as long as it reaches leaders that do so (scaleup.reporter).
"""

from __future__ import annotations

from gossip_agent import errors
from gossip_agent.core import reports, snapshots, traffic
from gossip_agent.gossip import wire as gossip_wire
from gossip_agent.scaling import wire
from gossip_agent.v1 import compat_pb2
from gossip_agent.v1 import gossip_pb2 as pb


def read_report(message: pb.NodeReport | compat_pb2.LegacyNodeReport,
                payload: bytes = b"") -> wire.Incoming:
    """A report in either layout; `payload` is the bytes `message` was parsed from (read
    again as the legacy layout when the report is not compact)."""
    if isinstance(message, compat_pb2.LegacyNodeReport):  # this agent's own, as it leads
        return legacy_report_from_pb(message)
    if message.compact:
        return wire.report_from_pb(message)
    wire.check_header(message.node, message.seq)
    legacy = gossip_wire.parse(compat_pb2.LegacyNodeReport,
                               payload or message.SerializeToString())
    return legacy_report_from_pb(legacy)


def legacy_report_to_pb(report: reports.Report, *, node: str,
                        incarnation: int) -> compat_pb2.LegacyNodeReport:
    """The layout an older leader reads. Its summary must be full: an older leader replaces a
    node's facts with every summary."""
    summary = report.summary
    if summary is not None and not summary.full:
        raise ValueError("an agent before 0.2 reads only full summaries")
    message = compat_pb2.LegacyNodeReport(
        node=node, incarnation=incarnation, seq=report.seq,
        scale_requests=[wire.request_to_pb(r, node=node) for r in report.requests])
    if summary is not None:
        message.has_summary = True
        message.blind = summary.blind
        message.traffic.extend(
            compat_pb2.TrafficFact(service_ip=snapshots.format_ip(f.service_ip),
                                   passed=f.passed, dropped=f.dropped, idle_ns=f.idle_ns)
            for f in summary.facts)
    return message


def legacy_report_from_pb(message: compat_pb2.LegacyNodeReport) -> wire.Incoming:
    node = message.node
    wire.check_header(node, message.seq)
    wire.check_sizes(node, requests=len(message.scale_requests), facts=len(message.traffic))
    try:
        requests = tuple(reports.Request(
            service_ip=snapshots.parse_ip(r.service_ip), source_ip=snapshots.parse_ip(r.source_ip),
            monotonic_ns=r.monotonic_ns, unix_ms=r.unix_ms, events=max(1, r.events))
            for r in message.scale_requests)
        facts = tuple(traffic.Fact(snapshots.parse_ip(f.service_ip), f.passed, f.dropped,
                                   f.idle_ns) for f in message.traffic)
    except errors.GossipAgentError as exc:
        raise errors.ReportInvalid(f"report from {node}: {exc}") from exc
    wire.check_requests(requests, node=node)
    summary = None
    if message.has_summary:
        wire.check_summary(node=node, facts=facts, blind=message.blind, full=True)
        # Generation 0: a whole summary, never followed by a delta from that node.
        summary = traffic.Summary(0, full=True, facts=facts, blind=message.blind)
    return wire.Incoming(node, message.incarnation, reports.Report(message.seq, requests, summary))
