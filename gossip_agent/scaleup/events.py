"""The scale-up event source Protocol: what the data plane tells the agent about dropped packets.

The XDP program emits one event per service per rate-limit period when it drops a packet to a
service at 0 replicas (service IP, source IP, kernel timestamp). The agent reads them through
this Protocol: the BPF reader in the data-plane package (bcc's ring/perf buffer) on a real
node, MemoryEvents in tests and on nodes without an XDP program (nothing then arrives, since
nothing is dropped).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class ScaleUpEvent:
    service_ip: int  # host byte order, as SERVICE_LIST keys: ntohl(daddr)
    source_ip: int  # ntohl(saddr) of the dropped packet
    monotonic_ns: int  # bpf_ktime_get_ns() when the packet was dropped (this host's clock)


class EventSource(Protocol):
    kind: str

    def events(self) -> AsyncIterator[ScaleUpEvent]:
        """Every event from now on, for the agent's life (the task reading it is cancelled)."""
        ...


class MemoryEvents:
    """Events handed in by emit(): tests, and agents whose data plane raises none."""

    kind = "memory"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[ScaleUpEvent] = asyncio.Queue()

    def emit(self, event: ScaleUpEvent) -> None:
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[ScaleUpEvent]:
        while True:
            yield await self._queue.get()
