"""GrpcTransport's push streams against a real grpc server on 127.0.0.1:0: a write that a peer
never takes (it stopped reading, so HTTP/2 flow control blocks the write) fails after the
timeout, so that peer's push worker backs off alone; writes a peer does take never time out,
however many follow one another; and a blocked write cancelled from outside is cancelled, not
timed out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from gossip_agent.api import server as server_mod
from gossip_agent.gossip import base as gossip_base
from gossip_agent.gossip import transport as transport_mod

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 4 << 20
# Larger than any HTTP/2 window grpc opens for a stream: the first write to a peer that reads
# nothing stays blocked.
BLOCKING_PAYLOAD = b"\0" * (3 << 20)


async def _never_reads(requests: AsyncIterator[bytes], context: Any) -> None:
    await asyncio.Event().wait()


async def _reads_everything(requests: AsyncIterator[bytes], context: Any) -> None:
    while isinstance(await context.read(), bytes):
        pass


async def _serve(handler: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=server_mod.server_options(MAX_MESSAGE_BYTES))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        server_mod.GOSSIP_SERVICE, {"PushStream": grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=None, response_serializer=None)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_write_a_peer_never_reads_fails_after_the_timeout_and_drops_its_stream() -> None:
    server, address = await _serve(_never_reads)
    transport = transport_mod.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES)
    try:
        started = time.monotonic()
        with pytest.raises(gossip_base.PeerUnreachable) as caught:
            for _ in range(4):  # the first write that flow control holds back
                await transport.push(address, BLOCKING_PAYLOAD, timeout=0.5)
        elapsed = time.monotonic() - started
        assert caught.value.code == "DEADLINE_EXCEEDED", caught.value
        assert 0.5 <= elapsed < 5.0, f"the blocked write failed after {elapsed:.2f}s"
        assert address not in transport._streams  # the next push opens a new stream
    finally:
        await transport.close()
        await server.stop(None)


async def test_writes_a_peer_takes_never_time_out_however_long_they_go_on() -> None:
    server, address = await _serve(_reads_everything)
    transport = transport_mod.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES)
    try:
        # Each write finishes well within 0.1 s; together they last several timeouts, so the
        # stream's one timer fires while writes are in flight and must follow them.
        deadline = time.monotonic() + 0.6
        writes = 0
        while time.monotonic() < deadline:
            await transport.push(address, b"snapshot", timeout=0.1)
            writes += 1
            await asyncio.sleep(0.005)
        assert writes > 20
        assert address in transport._streams  # never dropped
    finally:
        await transport.close()
        await server.stop(None)


async def test_a_blocked_write_cancelled_from_outside_is_cancelled_not_timed_out() -> None:
    server, address = await _serve(_never_reads)
    transport = transport_mod.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES)

    async def push_until_blocked() -> None:
        for _ in range(4):
            await transport.push(address, BLOCKING_PAYLOAD, timeout=30.0)

    try:
        task = asyncio.create_task(push_until_blocked(), name="test.push")
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await transport.close()
        await server.stop(None)
