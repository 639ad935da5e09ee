"""Scale-up requests in the API: Gossip/Report and Gossip/ReportStream (a node's reports to the
leader, one unary call each or one stream for all) and State/WatchScaleRequests (the stream
operators and the leader's tooling read).

Report takes raw bytes, like the other Gossip handlers, so a message that does not parse is
INVALID_ARGUMENT with a sentence. It is registered as its own generic handler next to the Gossip
one (grpc asks each handler in turn for a method), so server.gossip_handler stays as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from gossip_agent import errors
from gossip_agent.api import status
from gossip_agent.api import streams as streams_mod
from gossip_agent.gossip import wire as gossip_wire
from gossip_agent.scaling import compat, route, wire
from gossip_agent.scaling import hub as hub_mod
from gossip_agent.scaling import inbox as inbox_mod
from gossip_agent.v1 import gossip_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
# server.GOSSIP_SERVICE, not imported from there: server imports state, which imports this.
GOSSIP_SERVICE = "gossip_agent.v1.Gossip"


def report_handler(inbox: inbox_mod.Inbox,
                   streams: streams_mod.OpenStreams) -> grpc.GenericRpcHandler[Any, Any]:
    async def report(payload: bytes, context: Context) -> pb.ReportAck:
        return await _take(inbox, payload, context)

    async def report_stream(payloads: AsyncIterator[bytes],
                            context: Context) -> AsyncIterator[pb.ReportAck]:
        with streams.serving():
            async for payload in payloads:
                yield await _take(inbox, payload, context)

    return grpc.method_handlers_generic_handler(GOSSIP_SERVICE, {
        "Report": grpc.unary_unary_rpc_method_handler(
            report, request_deserializer=None,
            response_serializer=pb.ReportAck.SerializeToString),
        "ReportStream": grpc.stream_stream_rpc_method_handler(
            report_stream, request_deserializer=None,
            response_serializer=pb.ReportAck.SerializeToString),
    })


async def _take(inbox: inbox_mod.Inbox, payload: bytes, context: Context) -> pb.ReportAck:
    """One report, in either layout, taken by the inbox; its refusal ends the call."""
    try:
        message = gossip_wire.parse(pb.NodeReport, payload)
        taken = inbox.take(compat.read_report(message, payload))
    except errors.GossipAgentError as exc:
        await context.abort(status.code_for(exc), str(exc))
    return route.ack_of(taken, message.seq)


async def watch(
    hub: hub_mod.Hub,
    request: pb.WatchScaleRequestsRequest,
    context: Context,
    streams: streams_mod.OpenStreams,
) -> AsyncIterator[pb.ScaleRequest]:
    scope = request.scope.strip().lower()
    if scope not in hub_mod.SCOPES:
        exc = errors.ReportInvalid(
            f"scope {request.scope!r} is not one of all, local, reported")
        await context.abort(status.code_for(exc), str(exc))
    with streams.serving(), hub.reader(scope) as reader:
        # Headers now, not with the first request: a client that awaits them knows it is
        # registered and will miss nothing raised from then on.
        await context.send_initial_metadata(())
        while True:
            seen, skipped = await reader.next()
            yield wire.seen_to_pb(seen, skipped=skipped)
    await context.abort(grpc.StatusCode.UNAVAILABLE, "agent is shutting down")
