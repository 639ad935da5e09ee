"""Gossip is for members only: under mutual TLS the Gossip service (PushStream, Push, Exchange,
Report) answers only certificates that carry the agents' shared name.

The cluster CA signs more than agents: the admin certificate, readers' certificates. They may
read State (and an admin may write), but a snapshot, a digest or a node report is an agent's
word. A Gossip call from any other certificate therefore ends with PERMISSION_DENIED before its
handler runs, whatever its cluster id: nothing is parsed, counted as received or changed. The
refusal is counted (Stats.rejected["not-member"], metric messages_rejected{reason=
"not-member"}) and logged once per caller address and certificate names.

Who is a member is identity.Policy.is_member, the same test that decides whose FORWARDED_FOR
header the leader believes. Plaintext (no TLS) has no identities: the gate is off and gossip
stays open, as the start-up warning and the Tls health service say.

grpc.aio server interceptors see the method and the metadata, not the peer's certificate, so
MembersOnly wraps the method's handler instead (as cluster.ClusterCheck replaces it): the
wrapper reads context.auth_context() and then runs the original behaviour unchanged, with the
same serializers. Cost: one auth_context() (a small dict built from the connection's verified
certificate) per call, so once per push stream, none per snapshot on it. In the server's
interceptor chain it comes before ClusterCheck, so a non-member is refused as such whatever
cluster id it sends, and a member from another cluster still gets FAILED_PRECONDITION.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from gossip_agent.security import cluster, identity

log = logging.getLogger("gossip_agent.security")

REASON = "not-member"  # Stats.rejected key and metric label

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Context = grpc.aio.ServicerContext[Any, Any]
Admit = Callable[[Context], Awaitable[None]]
# A handler's behaviour (unary_unary, stream_stream...), called with (request or request
# iterator, context). grpc.aio runs coroutine functions and async generator functions; ours are
# all one or the other (grpc-stubs types them as the sync API's, hence the loose type).
Behaviour = Callable[..., Any]


def refusal_message(*, described: str, member_name: str) -> str:
    return (f"caller {described} is not a member: the Gossip service answers only "
            f"certificates naming {member_name} (TLS_SERVER_NAME), which agents carry")


class MembersOnly(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses Gossip calls from certificates that are not members (when TLS is on)."""

    def __init__(self, *, policy: identity.Policy, on_refused: Callable[[], None]) -> None:
        self.policy = policy
        self.on_refused = on_refused
        self._logged = cluster.LogOnce()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if (handler is None or not self.policy.enforced
                or not handler_call_details.method.startswith(cluster.GOSSIP_PREFIX)):
            return handler
        return guarded(handler, self._admit)

    async def _admit(self, context: Context) -> None:
        """Returns for a member; ends the call with PERMISSION_DENIED otherwise."""
        names = identity.names_of(context.auth_context())
        if self.policy.is_member(names):
            return
        self.on_refused()
        peer = context.peer()
        message = refusal_message(described=identity.describe(names, peer),
                                  member_name=self.policy.member_name)
        if self._logged.first((cluster.host_of(peer), names)):
            log.warning("refused gossip from %s: %s", peer, message,
                        extra={"peer": peer, "names": sorted(names)})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)


def guarded(handler: Handler, admit: Admit) -> Handler:
    """`handler` with `admit(context)` awaited before its behaviour: same kind of call, same
    serializers, same behaviour once admitted."""
    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, admit), **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, admit), **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, admit), **serializers)
    return grpc.unary_unary_rpc_method_handler(
        _unary(handler.unary_unary, admit), **serializers)


def _unary(behaviour: Behaviour | None, admit: Admit) -> Behaviour:
    assert behaviour is not None, "grpc built this handler without its behaviour"

    async def admitted(request: Any, context: Context) -> Any:
        await admit(context)
        return await behaviour(request, context)

    return admitted


def _streaming(behaviour: Behaviour | None, admit: Admit) -> Behaviour:
    """grpc.aio tells the two kinds of response-streaming behaviour apart by the function: an
    async generator function yields the responses (PushStream); a coroutine function writes
    them with context.write or writes none (ClusterCheck's refusal). The wrapper keeps the
    kind, so grpc drives the wrapped behaviour exactly as it would the original."""
    assert behaviour is not None, "grpc built this handler without its behaviour"
    if inspect.isasyncgenfunction(behaviour):
        async def admitted_responses(request: Any, context: Context) -> AsyncIterator[Any]:
            await admit(context)
            # aclosing: the original's cleanup (`finally`, `with`) runs when the call ends,
            # not when the garbage collector finds its generator.
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response

        return admitted_responses

    async def admitted(request: Any, context: Context) -> None:
        await admit(context)
        await behaviour(request, context)

    return admitted
