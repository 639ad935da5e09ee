"""A check run before a gRPC handler: grpc.aio server interceptors see the method and the
metadata, not the peer's certificate nor a way to answer, so a check that needs the call's
context (members.MembersOnly) or ends it with a status (cluster.ClusterCheck) replaces the
method's handler with one that awaits the check first and then runs the original behaviour
unchanged: same kind of call, same serializers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Context = grpc.aio.ServicerContext[Any, Any]
# Returns to let the call go on; ends it with context.abort() otherwise.
Admit = Callable[[Context], Awaitable[None]]
# A handler's behaviour (unary_unary, stream_stream...), called with (request or request
# iterator, context). grpc.aio runs coroutine functions and async generator functions; ours are
# all one or the other (grpc-stubs types them as the sync API's, hence the loose type).
Behaviour = Callable[..., Any]


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
    """grpc.aio tells the two kinds of response-streaming behaviour apart by the function: an async
    generator function yields the responses (PushStream); a coroutine function writes them with
    context.write or writes none. The wrapper keeps the kind, so grpc drives the wrapped behaviour
    exactly as it would the original."""
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
