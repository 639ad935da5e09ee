"""The agent's gRPC server: Gossip and State services, grpc.health.v1, server reflection.

Gossip handlers take raw bytes (no deserializer) and parse them here, so a message that does
not parse is INVALID_ARGUMENT with a sentence, not grpc's generic INTERNAL. Messages over
MAX_MESSAGE_BYTES never reach a handler: grpc refuses them with RESOURCE_EXHAUSTED.

SO_REUSEPORT is off: with grpc's default, a second agent on the same port would bind too and
silently share the traffic; we want it to fail fast.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gossip_agent import errors
from gossip_agent.api import state, status
from gossip_agent.api import streams as streams_mod
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import frames, wire
from gossip_agent.v1 import dataplane_pb2_grpc
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

log = logging.getLogger("gossip_agent.api")

GOSSIP_SERVICE = "gossip_agent.v1.Gossip"
STATE_SERVICE = "gossip_agent.v1.State"
DATAPLANE_SERVICE = "gossip_agent.v1.DataPlane"
# A health service name of its own: NOT_SERVING while this agent refuses to lead (e.g. bpffs
# with peers on other hosts), so probes and operators see it; the reason is in GetLeader.
LEASE_HEALTH = "gossip_agent.v1.Lease"
# SERVING when the port runs mutual TLS, NOT_SERVING when plaintext (security/setup.py): the
# plaintext announcement where probes and monitoring look.
TLS_HEALTH = "gossip_agent.v1.Tls"
# grpc_health.v1.HealthServicer: the package ships no type information for it.
HealthServicer = Any


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    if isinstance(exc, errors.GossipAgentError):
        await context.abort(status.code_for(exc), str(exc))
    log.exception("unexpected error in a handler")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")


def gossip_handler(
    engine: engine_mod.Engine, streams: streams_mod.OpenStreams, *, push_port: int = 0
) -> grpc.GenericRpcHandler[Any, Any]:
    """push_port: this agent's push port (api/pushport.py), announced in the initial metadata of
    every PushStream so the leader moves its pushes there; 0 announces none."""
    announce = ((frames.PORT_KEY, str(push_port)),) if push_port else ()

    async def push_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Reads with context.read() and acks with context.write(), not through async
        generators: two fewer coroutine layers to resume per pushed snapshot."""
        with streams.serving():
            if announce:
                await context.send_initial_metadata(announce)
            # request_deserializer=None: each message is its raw bytes; the end is grpc.aio.EOF.
            while isinstance(payload := await context.read(), bytes):
                engine.stats.bytes_received["push"] += len(payload)
                try:
                    message = wire.parse(pb.Snapshot, payload)
                    if engine.needs_proof(message):  # a new (term, leader): one lease read
                        await engine.prove(message, sender=context.peer())
                    result = engine.receive_push(message)
                except errors.GossipAgentError as exc:
                    await abort(context, exc)
                if wire.wants_ack(message, result):
                    await context.write(engine.push_ack(result))

    async def push(payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> pb.PushAck:
        engine.stats.bytes_received["push"] += len(payload)
        try:
            message = wire.parse(pb.Snapshot, payload)
            await engine.prove(message, sender=context.peer())
            return engine.handle_push(message)
        except errors.GossipAgentError as exc:
            await abort(context, exc)

    async def exchange(
        payload: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExchangeReply:
        engine.stats.bytes_received["exchange"] += len(payload)
        try:
            request = wire.parse(pb.ExchangeRequest, payload)
            if request.HasField("snapshot"):
                await engine.prove(request.snapshot, sender=context.peer())
            return engine.handle_exchange(request)
        except errors.GossipAgentError as exc:
            await abort(context, exc)

    ack_out = pb.PushAck.SerializeToString
    return grpc.method_handlers_generic_handler(GOSSIP_SERVICE, {
        "PushStream": grpc.stream_stream_rpc_method_handler(
            push_stream, request_deserializer=None, response_serializer=ack_out),
        "Push": grpc.unary_unary_rpc_method_handler(
            push, request_deserializer=None, response_serializer=ack_out),
        "Exchange": grpc.unary_unary_rpc_method_handler(
            exchange, request_deserializer=None,
            response_serializer=pb.ExchangeReply.SerializeToString),
    })


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Peers keep streams open and ping them; allow it without calls in flight.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.bdp_probe", 0),  # see transport.channel_options
    ]


def build(
    *,
    engine: engine_mod.Engine,
    state_service: state.StateService,
    health_servicer: HealthServicer,
    max_message_bytes: int,
    streams: streams_mod.OpenStreams,
    dataplane_service: dataplane_pb2_grpc.DataPlaneServicer | None = None,
    extra_handlers: tuple[grpc.GenericRpcHandler[Any, Any], ...] = (),
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),  # type: ignore[type-arg]
    push_port: int = 0,
) -> grpc.aio.Server:
    server = grpc.aio.server(options=server_options(max_message_bytes),
                             interceptors=interceptors)
    server.add_generic_rpc_handlers(
        (gossip_handler(engine, streams, push_port=push_port), *extra_handlers))
    pb_grpc.add_StateServicer_to_server(state_service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [GOSSIP_SERVICE, STATE_SERVICE]
    if dataplane_service is not None:
        dataplane_pb2_grpc.add_DataPlaneServicer_to_server(dataplane_service, server)
        services.append(DATAPLANE_SERVICE)
    reflection.enable_server_reflection(
        (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    return server


def build_health_only(health_servicer: HealthServicer) -> grpc.aio.Server:
    """A plaintext server with grpc.health.v1 alone (HEALTH_PORT): Kubernetes' gRPC probes
    cannot do mutual TLS, and health says nothing an outsider could misuse."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server


def bind(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Binds LISTEN_ADDR (mutual TLS when credentials are given: security/tls.py); raises
    OSError with a clear sentence when the port is taken."""
    taken = _cannot_bind(address)
    if taken:  # before grpc tries: its C core would print its own error line ahead of ours
        raise OSError(f"LISTEN_ADDR {address}: cannot listen (address in use?): {taken}")
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"LISTEN_ADDR {address}: cannot listen (address in use?): {exc}") from exc
    if port == 0:
        raise OSError(f"LISTEN_ADDR {address}: cannot listen (address in use?)")
    return port


def _cannot_bind(address: str) -> str:
    """Why a plain socket cannot bind `address` as grpc would (SO_REUSEADDR, no
    SO_REUSEPORT), or "" when it can or the address is not one to check here (port 0, a name
    that does not resolve: grpc then says what is wrong)."""
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (ValueError, OSError):
        return ""
    if port == 0:
        return ""
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc.strerror or str(exc)
    return ""


async def set_health(
    servicer: HealthServicer, *, serving: bool, names: tuple[str, ...]
) -> None:
    value = (
        health_pb2.HealthCheckResponse.SERVING if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in names:
        await servicer.set(name, value)

