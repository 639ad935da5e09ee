"""Scale-up events from the XDP program, fanned out to any number of async readers.

The XDP program drops packets to a service whose SERVICE_LIST value is 0 and reports each
such service (rate-limited in the kernel, see layout.EVENT_INTERVAL_NS) in a ring buffer. The
agent drains that ring in one task (dataplane/xdp.py, task `xdp.events`) and publishes every
record here; consumers (the WatchScaleRequests stream, the report call to the leader) each
iterate their own subscription:

    with agent.scale_events.subscribe() as events:   # registered here, before any await
        async for event in events:
            event.service_ip, event.source_ip, event.timestamp_ns

Contracts:
- One EventHub per agent; it exists whether or not a program is loaded (with no program, or
  the memory data plane, nothing is published; tests publish by hand).
- Each subscriber has its own bounded queue. A subscriber that falls behind loses the OLDEST
  events first, and `dropped` counts them: the kernel keeps emitting while a service sleeps,
  so a fresh event soon follows, and a slow reader must never hold back the ring or others.
- Events are delivered in the order the ring produced them; none is delivered twice to one
  subscriber. A subscription sees every event published between subscribe() and the end of
  its `with` block (leaving the block unsubscribes; iterating after that ends at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from types import TracebackType

DEFAULT_QUEUE = 1024  # events per subscriber before the oldest are dropped


@dataclasses.dataclass(frozen=True, slots=True)
class ScaleUpEvent:
    """A packet to a scaled-to-zero service, as the XDP program saw it.

    service_ip: the service IPv4 as SERVICE_LIST keys it (host byte order: 10.96.0.10 is
    0x0A60000A); source_ip: the sender's IPv4, same order; timestamp_ns: bpf_ktime_get_ns,
    i.e. CLOCK_MONOTONIC on this host (comparable with time.monotonic_ns() here, meaningless
    on another node).
    """

    service_ip: int
    source_ip: int
    timestamp_ns: int

    @property
    def service(self) -> str:
        return str(ipaddress.IPv4Address(self.service_ip))

    @property
    def source(self) -> str:
        return str(ipaddress.IPv4Address(self.source_ip))


class EventHub:
    """Fan-out of ScaleUpEvents to subscribers; see the module docstring."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE) -> None:
        self._queue_size = queue_size
        self._queues: set[asyncio.Queue[ScaleUpEvent]] = set()
        self.published = 0  # events seen since start
        self.dropped = 0  # events a slow subscriber lost (counted once per subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: ScaleUpEvent) -> None:
        """Hands event to every subscriber; never blocks (drops a slow one's oldest event)."""
        self.published += 1
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    def subscribe(self) -> Subscription:
        """A subscription, registered at once; use it as a context manager (see above)."""
        queue: asyncio.Queue[ScaleUpEvent] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        return Subscription(hub=self, queue=queue)

    def _unsubscribe(self, queue: asyncio.Queue[ScaleUpEvent]) -> None:
        self._queues.discard(queue)


class Subscription:
    """One reader's queue: an async iterator of ScaleUpEvents and a context manager."""

    def __init__(self, *, hub: EventHub, queue: asyncio.Queue[ScaleUpEvent]) -> None:
        self._hub = hub
        self._queue = queue
        self.closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ScaleUpEvent:
        if self.closed:
            raise StopAsyncIteration
        return await self._queue.get()

    def get_nowait(self) -> ScaleUpEvent | None:
        """The next queued event, or None (for polling readers)."""
        return None if self._queue.empty() else self._queue.get_nowait()

    def close(self) -> None:
        self.closed = True
        self._hub._unsubscribe(self._queue)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
