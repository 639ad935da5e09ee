"""An in-process network for simulations: many agents in one event loop.

Each call goes through the same serialize / parse / handle path as gRPC (the receiver parses
the bytes), with per-message loss, random delay, and partitions that cut every call between
two groups. With `costs`, each agent is also one CPU that messages queue for: sending one
costs its sender `costs.send` seconds, receiving and handling one costs its receiver
`costs.receive` (an acknowledgement costs its reader `costs.send`), and each hop takes
`costs.latency` on the wire, so a leader's fan-out to N
peers takes N x send of its time, as on a real node (tools/simulate.py runs this on virtual
time, lab/vtime.py). Shipped in the package (as memberlist ships its mock transport) so tests and
experiments can build clusters without sockets. The random generator is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Collection, Iterable
from typing import Protocol

from gossip_agent import errors
from gossip_agent.gossip import base, wire
from gossip_agent.v1 import gossip_pb2 as pb


class Handler(Protocol):
    """The receiving side of the Gossip service (the engine implements it)."""

    def handle_push(self, message: pb.Snapshot) -> pb.PushAck: ...

    def handle_exchange(self, request: pb.ExchangeRequest) -> pb.ExchangeReply: ...


@dataclasses.dataclass(frozen=True)
class Costs:
    """Seconds of one agent's CPU per message sent and per message received and handled, and
    of one-way network latency per hop."""

    send: float = 0.0
    receive: float = 0.0
    latency: float = 0.0
    # 0: each agent has a CPU of its own (a node each). k > 0: all agents share k CPUs, as the
    # benchmark's processes share this machine's cores (to check the model against it).
    cores: int = 0


class MemoryNetwork:
    def __init__(
        self,
        *,
        rng: random.Random,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        costs: Costs | None = None,
    ) -> None:
        self.rng = rng
        self.loss = loss
        self.delay = delay
        self.costs = costs
        self._busy: dict[str, float] = {}  # when each agent's modelled CPU is next free
        self._cores = [0.0] * (costs.cores if costs is not None else 0)  # shared CPUs' free times
        self.sends: dict[str, int] = {}  # messages each agent sent (costs only)
        self.cpu: dict[str, float] = {}  # modelled CPU seconds each agent spent (costs only)
        self.peers_of: dict[str, set[str]] = {}  # whom each agent sent to (costs only)
        self._handlers: dict[str, Handler] = {}
        self._down: set[str] = set()
        self._groups: list[set[str]] = []
        self.delivered = 0
        self.dropped = 0

    def register(self, address: str, handler: Handler) -> None:
        self._handlers[address] = handler
        self._down.discard(address)

    def take_down(self, address: str) -> None:
        """The node stops answering (crash); register() brings it back."""
        self._down.add(address)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only nodes in the same group can talk; nodes in no group talk to nobody."""
        self._groups = [set(group) for group in groups]

    def heal(self) -> None:
        self._groups = []

    def _reachable(self, src: str, dst: str) -> bool:
        if dst in self._down or dst not in self._handlers:
            return False
        if not self._groups:
            return True
        return any(src in group and dst in group for group in self._groups)

    async def _cpu(self, address: str, seconds: float) -> None:
        """Occupies `address`'s modelled CPU for `seconds`, after what it already queued."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._busy.get(address, 0.0))
        if self._cores:  # the earliest free of the shared CPUs, once this agent is free
            core = min(range(len(self._cores)), key=self._cores.__getitem__)
            start = max(start, self._cores[core])
            self._cores[core] = start + seconds
        done = start + seconds
        self._busy[address] = done
        self.cpu[address] = self.cpu.get(address, 0.0) + seconds
        await asyncio.sleep(done - now)

    async def _travel(self, src: str, dst: str, *, ack: bool = False) -> Handler:
        """The hop from src to dst: lost, or dst's handler once the message arrived and dst's
        modelled CPU took it (an acknowledgement costs its reader what a send costs: a few
        bytes, nothing to apply)."""
        costs = self.costs
        if costs is not None:
            self.sends[src] = self.sends.get(src, 0) + 1
            self.peers_of.setdefault(src, set()).add(dst)
            await self._cpu(src, costs.send)
            await asyncio.sleep(costs.latency)
        low, high = self.delay
        if high > 0:
            await asyncio.sleep(self.rng.uniform(low, high))
        if not self._reachable(src, dst) or self.rng.random() < self.loss:
            self.dropped += 1
            raise base.PeerUnreachable(dst, "unreachable (simulated)", code="UNAVAILABLE")
        self.delivered += 1
        if costs is not None:
            await self._cpu(dst, costs.send if ack else costs.receive)
        return self._handlers[dst]

    def transport_for(self, address: str) -> MemoryTransport:
        return MemoryTransport(self, address)


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._net = network
        self._address = address
        self._on_ack: base.AckHandler = lambda address, ack: None

    def set_ack_handler(self, handler: base.AckHandler) -> None:
        self._on_ack = handler

    async def push(self, address: str, payload: bytes, *, timeout: float) -> None:
        handler = await self._net._travel(self._address, address)
        message = wire.parse(pb.Snapshot, payload)
        try:
            ack = handler.handle_push(message)
        except errors.GossipAgentError as exc:
            raise base.PeerUnreachable(address, str(exc), code="INVALID_ARGUMENT") from exc
        if wire.ack_wanted(message, ack):
            with contextlib.suppress(base.PeerUnreachable):  # acks can be lost too
                await self._net._travel(address, self._address, ack=True)
                self._on_ack(address, ack)

    async def exchange(
        self, address: str, request: pb.ExchangeRequest, *, timeout: float
    ) -> pb.ExchangeReply:
        handler = await self._net._travel(self._address, address)
        parsed = wire.parse(pb.ExchangeRequest, request.SerializeToString())
        try:
            reply = handler.handle_exchange(parsed)
        except errors.GossipAgentError as exc:
            raise base.PeerUnreachable(address, str(exc), code="INVALID_ARGUMENT") from exc
        await self._net._travel(address, self._address)  # the reply can be lost too
        return wire.parse(pb.ExchangeReply, reply.SerializeToString())

    async def forget(self, address: str) -> None:
        pass

    async def retain(self, addresses: Collection[str]) -> int:
        return 0

    async def close(self) -> None:
        pass
