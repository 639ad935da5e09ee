"""Where a node's report goes: to this agent's own inbox while it leads, else to the leader named
by the snapshot it holds (Snapshot.leader_address) over gossip_agent.v1.Gossip/ReportStream.

One stream stays open to the leader and carries every report (the reporter sends one at a time
and waits for its ack, so the stream never holds two). It is closed and opened again after any
failure and whenever the leader changes. A leader before 0.2 has no ReportStream (UNIMPLEMENTED):
reports to it go as unary Report calls, as that leader expects.

Every failure becomes reporter.Undeliverable, with a sentence naming the leader; grpc's
exception types stay in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import grpc.aio

from gossip_agent import errors
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import transport
from gossip_agent.scaling import compat, reporter
from gossip_agent.scaling import inbox as inbox_mod
from gossip_agent.v1 import gossip_pb2 as pb

Report = reporter.Report
log = logging.getLogger("gossip_agent.scaleup")

REPORT = "/gossip_agent.v1.Gossip/Report"
REPORT_STREAM = "/gossip_agent.v1.Gossip/ReportStream"
StreamCall = grpc.aio.StreamStreamCall[Report, pb.ReportAck]


class _NoStream(Exception):
    """The leader predates ReportStream (UNIMPLEMENTED)."""


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
        self._stream: tuple[str, StreamCall] | None = None  # (leader address, open stream)
        self._unary_only: set[str] = set()  # leaders before 0.2 (no ReportStream)
        self.streams_opened = 0  # for tests and the console

    async def __call__(self, message: Report) -> pb.ReportAck:
        if self.leadership.leading:
            self.close()
            return self._to_self(message)
        node, address = self.engine.leader_node, self.engine.leader_address
        if not address or node == self.engine.node:
            raise reporter.Undeliverable("no leader is known yet")
        if address not in self._unary_only:
            try:
                return await self._over_stream(message, node=node, address=address)
            except _NoStream:
                log.info("leader %s at %s has no ReportStream (before 0.2): reporting with "
                         "unary calls", node, address)
                self._unary_only.add(address)
        return await self._call(message, node=node, address=address)

    def close(self) -> None:
        """Ends the open stream, if any (this agent leads now, or it stops)."""
        if self._stream is not None:
            self._stream[1].cancel()
            self._stream = None

    def _stream_to(self, address: str) -> StreamCall:
        if self._stream is not None and self._stream[0] != address:
            self.close()  # the leader changed
        if self._stream is None:
            method = self.channels.channel(address).stream_stream(
                REPORT_STREAM, request_serializer=_serialize,
                response_deserializer=pb.ReportAck.FromString)
            self._stream = (address, method(metadata=self.channels.metadata))  # type: ignore[call-arg]
            self.streams_opened += 1
        return self._stream[1]

    async def _over_stream(self, message: Report, *, node: str, address: str) -> pb.ReportAck:
        call = self._stream_to(address)
        try:
            async with asyncio.timeout(self.timeout):
                await call.write(message)
                ack = await call.read()
        except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as exc:
            raise await self._failed(call, exc, node=node, address=address) from exc
        if not isinstance(ack, pb.ReportAck):  # the leader ended the stream
            raise await self._failed(call, None, node=node, address=address)
        return ack

    async def _failed(self, call: StreamCall, exc: BaseException | None, *, node: str,
                      address: str) -> Exception:
        """Closes the stream; what to raise: _NoStream, or Undeliverable with the status."""
        self.close()
        if isinstance(exc, TimeoutError):
            return reporter.Undeliverable(
                f"leader {node} at {address}: no acknowledgement within {self.timeout:g}s")
        code, details = grpc.StatusCode.UNKNOWN, "stream closed"
        with contextlib.suppress(Exception):  # the call is over: its status is known
            code, details = await call.code(), await call.details()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return _NoStream()
        return reporter.Undeliverable(f"leader {node} at {address}: {code.name}: {details}")

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
