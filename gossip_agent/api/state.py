"""gossip_agent.v1.State: what operators (grpcurl, the CLI) ask an agent.

Reads answer from this agent's own state. Writes go to the leader: handled here when this
agent leads, otherwise forwarded once to the leader's address (metadata marks a forwarded call
so it is never forwarded again), or refused with UNAVAILABLE naming the leader.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from gossip_agent import errors
from gossip_agent.api import scale, status
from gossip_agent.api import streams as streams_mod
from gossip_agent.core import scaling, snapshots, versions
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import transport as transport_mod
from gossip_agent.gossip import wire
from gossip_agent.leases import base as lease_base
from gossip_agent.scaling import hub as scale_hub_mod
from gossip_agent.security import identity
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

log = logging.getLogger("gossip_agent.api")

FORWARDED = "x-gossip-agent-forwarded"
Context = grpc.aio.ServicerContext[Any, Any]


def outlook_to_pb(outlook: scaling.Outlook) -> pb.ScaleDownOutlook:
    verdict = outlook.verdict
    return pb.ScaleDownOutlook(
        service=outlook.name, ip=snapshots.format_ip(outlook.service), allowed=verdict.allowed,
        cause=verdict.cause,
        reason=f"scale-down {'allowed' if verdict.allowed else 'blocked'}: {verdict.reason}")


class StateService(pb_grpc.StateServicer):
    def __init__(
        self,
        *,
        engine: engine_mod.Engine,
        leadership: leader_mod.Leadership,
        lease: lease_base.Lease,
        channels: transport_mod.GrpcTransport,
        forward_timeout: float,
        streams: streams_mod.OpenStreams,
        scale_hub: scale_hub_mod.Hub | None = None,
        policy: identity.Policy | None = None,
        security_note: str = "",
        scaling_status: scaling.Status | None = None,
    ) -> None:
        # Who may write (security/identity.py); None: nobody is checked (plaintext).
        self.policy = policy or identity.Policy(enforced=False, admins=frozenset(),
                                                member_name="")
        self.security_note = security_note  # e.g. "plaintext": shown in GetLeader
        self.scaling = scaling_status or scaling.Status()  # blindness, scale-down verdicts
        self.engine = engine
        self.scale_hub = scale_hub or scale_hub_mod.Hub()
        self.leadership = leadership
        self.lease = lease
        self.channels = channels
        self.forward_timeout = forward_timeout
        self.streams = streams

    # -- reads --------------------------------------------------------------------------------

    async def GetState(self, request: pb.GetStateRequest, context: Context) -> pb.GetStateResponse:
        engine = self.engine
        held = engine.held
        names = held.snapshot.name_map() if held.snapshot is not None else {}
        return pb.GetStateResponse(
            node=engine.node,
            version=wire.version_to_pb(held.version),
            leader=engine.leader_node,
            content_hash=held.content_hash.hex(),
            complete=held.complete,
            entries=[
                pb.Entry(ip=snapshots.format_ip(key), replicas=value, name=names.get(key, ""))
                for key, value in sorted(engine.table.items())
            ],
            dataplane=engine.dataplane.kind,
            map_path=engine.dataplane.location,
            map_max_entries=engine.dataplane.max_entries,
            max_term_seen=engine.max_term_seen,
            blind=self.scaling.blind,
            scale_down=[outlook_to_pb(o) for o in self.scaling.outlooks],
        )

    async def ListPeers(
        self, request: pb.ListPeersRequest, context: Context
    ) -> pb.ListPeersResponse:
        now = self.engine.clock()
        return pb.ListPeersResponse(peers=[
            pb.Peer(
                address=peer.address,
                node=peer.node,
                state=peer.state.value,
                last_contact_ms_ago=(
                    -1 if peer.last_contact is None else int((now - peer.last_contact) * 1000)
                ),
                version_known=wire.version_to_pb(peer.version_known),
                consecutive_failures=peer.failures,
                origin=peer.origin,
            )
            for peer in self.engine.membership.peers()
        ])

    async def GetLeader(
        self, request: pb.GetLeaderRequest, context: Context
    ) -> pb.GetLeaderResponse:
        record, note = await self._lease_record()
        holder = record.holder if record is not None else ""
        node = lease_base.node_of(holder) if holder else self.engine.leader_node
        term = record.term if record is not None else self.engine.held.version.term
        return pb.GetLeaderResponse(
            holder=holder,
            leader_node=node,
            leader_address=self._address_of(node),
            # A leader reports the term it leads at: the record may already name a newer
            # holder (redis: DEL, or an expired key) until this agent's next renewal.
            term=self.leadership.term if self.leadership.leading else max(
                term, self.leadership.term),
            backend=self.lease.backend,
            is_self=self.leadership.leading,
            refusal=self.leadership.refusal,
            note="; ".join(n for n in (self.leadership.opening, self.lease.note, note,
                                        self.security_note) if n),
        )

    async def _lease_record(self) -> tuple[lease_base.LeaseRecord | None, str]:
        try:
            return await self.lease.read(), ""
        except errors.LeaseUnavailable as exc:
            return None, f"lease unreadable ({exc}); showing the gossip view"

    def _address_of(self, node: str) -> str:
        if not node:
            return ""
        if node == self.engine.node:
            return self.engine.address
        if node == self.engine.leader_node and self.engine.leader_address:
            return self.engine.leader_address
        return self.engine.membership.address_of(node) or ""

    async def WatchState(
        self, request: pb.WatchStateRequest, context: Context
    ) -> AsyncIterator[pb.StateEvent]:
        with self.streams.serving():
            async for event in self._events():
                yield event
        await context.abort(grpc.StatusCode.UNAVAILABLE, "agent is shutting down")

    async def _events(self) -> AsyncIterator[pb.StateEvent]:
        sent: versions.Version | None = None
        while True:
            event = self.engine.last_event
            if event is not None and event.version != sent:
                sent = event.version
                yield _event_pb(event, node=self.engine.node)
                # An adoption while this generator was suspended at `yield` (grpc sending the
                # event) has already fired its wake-up: look again before waiting.
                continue
            await self.engine.changed()

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Context
    ) -> pb.GetHistoryResponse:
        return pb.GetHistoryResponse(
            events=[_event_pb(event, node="") for event in self.engine.history])

    async def WatchScaleRequests(
        self, request: pb.WatchScaleRequestsRequest, context: Context
    ) -> AsyncIterator[pb.ScaleRequest]:
        async for message in scale.watch(self.scale_hub, request, context, self.streams):
            yield message

    # -- writes -------------------------------------------------------------------------------

    async def SetService(self, request: pb.SetServiceRequest, context: Context) -> pb.WriteResponse:
        try:
            key = snapshots.parse_ip(request.ip)
            snapshots.check_replicas(request.replicas)
            name = snapshots.check_name(request.name.strip())
        except errors.GossipAgentError as exc:
            await context.abort(status.code_for(exc), str(exc))
        return await self._write(
            context, "SetService", request, updates={key: (request.replicas, name)}, deletes=()
        )

    async def DeleteService(
        self, request: pb.DeleteServiceRequest, context: Context
    ) -> pb.WriteResponse:
        try:
            key = snapshots.parse_ip(request.ip)
        except errors.GossipAgentError as exc:
            await context.abort(status.code_for(exc), str(exc))
        return await self._write(context, "DeleteService", request, updates={}, deletes=(key,))

    async def _write(
        self,
        context: Context,
        method: str,
        request: Any,
        *,
        updates: dict[int, tuple[int, str]],
        deletes: tuple[int, ...],
    ) -> pb.WriteResponse:
        caller = await self._authorise(context, method)
        if self.leadership.holds_lease:  # in office, or taking office (UNAVAILABLE: retry)
            try:
                result = await self.leadership.write(updates=updates, deletes=deletes)
            except errors.GossipAgentError as exc:
                await context.abort(status.code_for(exc), str(exc))
            return pb.WriteResponse(
                version=wire.version_to_pb(result.version), leader=result.leader,
                acked_peers=result.acked_peers, written_monotonic_ns=result.written_monotonic_ns,
                quorum=result.quorum,
            )
        return await self._forward(context, method, request, caller=caller)

    async def _authorise(self, context: Context, method: str) -> str:
        """The admin name the write is made for; PERMISSION_DENIED (nothing changes) if none."""
        decision = self.policy.authorise_write(
            names=identity.names_of(context.auth_context()),
            metadata={k: str(v) for k, v in context.invocation_metadata() or ()},
            peer=context.peer())
        if not decision.allowed:
            log.warning("refused %s: %s", method, decision.reason,
                        extra={"method": method, "caller": decision.caller})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.reason)
        return decision.caller

    async def _forward(
        self, context: Context, method: str, request: Any, *, caller: str
    ) -> pb.WriteResponse:
        metadata = dict(context.invocation_metadata() or ())
        record, _ = await self._lease_record()
        node = record.node if record is not None and record.holder else self.engine.leader_node
        address = self._address_of(node)
        if FORWARDED in metadata or not address or node == self.engine.node:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _no_leader_message(node, address))
        call = self.channels.channel(address).unary_unary(
            f"/gossip_agent.v1.State/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=pb.WriteResponse.FromString,
        )
        try:
            reply = await call(
                request, timeout=self.forward_timeout,
                metadata=((FORWARDED, "1"), (identity.FORWARDED_FOR, caller)),
            )
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                exc.code(), f"forwarded to leader {node} at {address}: {exc.details()}"
            )
        assert isinstance(reply, pb.WriteResponse)
        return reply


def _event_pb(event: engine_mod.StateEvent, *, node: str) -> pb.StateEvent:
    return pb.StateEvent(
        node=node,
        version=wire.version_to_pb(event.version),
        leader=event.leader,
        content_hash=event.content_hash.hex(),
        entry_count=event.entry_count,
        applied_monotonic_ns=event.applied_monotonic_ns,
        applied_unix_ms=event.applied_unix_ms,
        via=event.via,
    )


def _no_leader_message(node: str, address: str) -> str:
    if not node:
        return "no leader is elected yet; retry shortly"
    if not address:
        return f"leader is {node}, but its address is not known here yet; retry shortly"
    return f"this agent is not the leader; the leader is {node} at {address}"
