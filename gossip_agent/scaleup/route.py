"""Where a node's report goes: to this agent's own inbox while it leads, else to the leader named
by the snapshot it holds (Snapshot.leader_address) over gossip_agent.v1.Gossip/Report.

Every failure becomes reporter.Undeliverable, with a sentence naming the leader; grpc's
exception types stay in this module.
"""

from __future__ import annotations

import grpc
import grpc.aio

from gossip_agent import errors
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import transport
from gossip_agent.scaleup import compat, reporter
from gossip_agent.scaleup import inbox as inbox_mod
from gossip_agent.v1 import gossip_pb2 as pb

Report = reporter.Report

REPORT = "/gossip_agent.v1.Gossip/Report"


def ack_of(taken: inbox_mod.Taken, seq: int) -> pb.ReportAck:
    return pb.ReportAck(seq=seq, duplicate=taken.duplicate, leader=taken.leader, term=taken.term,
                        need_full=taken.need_full, compact=True)


def _serialize(message: Report) -> bytes:
    return message.SerializeToString()


class ToLeader:
    def __init__(
        self,
        *,
        engine: engine_mod.Engine,
        leadership: leader_mod.Leadership,
        inbox: inbox_mod.Inbox,
        channels: transport.GrpcTransport,
        timeout: float,
    ) -> None:
        self.engine = engine
        self.leadership = leadership
        self.inbox = inbox
        self.channels = channels
        self.timeout = timeout

    async def __call__(self, message: Report) -> pb.ReportAck:
        if self.leadership.leading:
            return self._to_self(message)
        node, address = self.engine.leader_node, self.engine.leader_address
        if not address or node == self.engine.node:
            raise reporter.Undeliverable("no leader is known yet")
        return await self._call(message, node=node, address=address)

    def _to_self(self, message: Report) -> pb.ReportAck:
        try:
            taken = self.inbox.take(compat.read_report(message))
        except errors.GossipAgentError as exc:
            raise reporter.Undeliverable(f"this agent as leader: {exc}") from exc
        return ack_of(taken, message.seq)

    async def _call(self, message: Report, *, node: str, address: str) -> pb.ReportAck:
        # Either layout serialises itself: the legacy one goes to leaders before 0.2 (compat).
        call = self.channels.channel(address).unary_unary(
            REPORT, request_serializer=_serialize,
            response_deserializer=pb.ReportAck.FromString,
        )
        try:
            reply = await call(message, timeout=self.timeout, metadata=self.channels.metadata)
        except grpc.aio.AioRpcError as exc:
            raise reporter.Undeliverable(
                f"leader {node} at {address}: {exc.code().name}: {exc.details()}") from exc
        assert isinstance(reply, pb.ReportAck)
        return reply
