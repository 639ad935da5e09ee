"""The peer-transport plug point: how one agent calls another.

Implementations: transport.GrpcTransport (gossip_agent.v1.Gossip over grpc.aio) and
memory.MemoryNetwork (the same calls in one event loop, with loss, delay and partitions, for
simulations). Every failure surfaces as PeerUnreachable, whatever carried the call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from gossip_agent.v1 import gossip_pb2 as pb


class PeerUnreachable(Exception):
    """A call to a peer failed or timed out; the caller suspects the peer and backs off."""

    def __init__(self, address: str, detail: str, *, code: str = "") -> None:
        super().__init__(f"peer {address}: {detail}")
        self.address = address
        self.code = code


AckHandler = Callable[[str, pb.PushAck], None]


class Transport(Protocol):
    def set_ack_handler(self, handler: AckHandler) -> None:
        """Where PushAcks arriving on push streams go (address, ack)."""
        ...

    async def push(self, address: str, payload: bytes, *, timeout: float) -> None:
        """Writes one serialized pb.Snapshot on the peer's push stream (opened on demand)."""
        ...

    async def exchange(
        self, address: str, request: pb.ExchangeRequest, *, timeout: float
    ) -> pb.ExchangeReply: ...

    async def forget(self, address: str) -> None:
        """Drops any stream or channel kept for a peer that left."""
        ...

    async def retain(self, addresses: Collection[str]) -> int:
        """Forgets every address not in `addresses`; returns how many were forgotten."""
        ...

    async def close(self) -> None: ...
