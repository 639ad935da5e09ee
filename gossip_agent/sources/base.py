"""The source Protocol: what the leader publishes. Only the leader's source produces snapshots.

- read() returns the desired table now, or None when the source has no state of its own and
  the leader continues from the newest snapshot it adopted (the api source: its state IS the
  snapshot, edited by SetService / DeleteService).
- watch(on_change) runs for the agent's life and calls on_change with each new desired table;
  followers run it too, so a new leader is already in sync when it takes office.
- accepts_writes tells whether SetService / DeleteService are allowed.
- scale_up(request) is called on the leader only, once per scale-up request a node reported
  (a retried report is never handed over twice). It must not block: a source that scales
  workloads (kubernetes, later) queues the work. Sources that cannot scale anything (api,
  file) keep the last requests for inspection (RecordsScaleUps).

A source that costs something to watch (SOURCE=kubernetes: API server load) also implements
LeaderOnly: the agent hands it its Office and the source watches only while this agent leads,
so at rest only the leader touches the API; read() is None until it has caught up, and the new
leader continues from the newest adopted snapshot meanwhile (no blank map).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Protocol, runtime_checkable

# Scale-up requests a recording source keeps: the recent past, for tests and the console.
RECORDED_SCALE_UPS = 256


@dataclasses.dataclass(frozen=True)
class Desired:
    entries: dict[int, int]
    names: dict[int, str]


@dataclasses.dataclass(frozen=True)
class ScaleUp:
    """A node dropped packets to a service at 0 replicas and asks for it to be scaled up."""

    service_ip: int  # as in SERVICE_LIST: 10.96.0.10 -> 0x0A60000A
    name: str  # "namespace/name" from the held snapshot, "" when unknown
    node: str  # the node whose XDP program dropped the packets
    source_ip: int  # the client of the first dropped packet
    events: int  # scale-up events the node folded into this request (>= 1)


class RecordsScaleUps:
    """scale_up() for sources that cannot scale anything: remember the recent requests."""

    @functools.cached_property
    def scale_ups(self) -> collections.deque[ScaleUp]:
        return collections.deque(maxlen=RECORDED_SCALE_UPS)

    def scale_up(self, request: ScaleUp) -> None:
        self.scale_ups.append(request)


class Source(Protocol):
    kind: str
    accepts_writes: bool

    def read(self) -> Desired | None: ...

    async def watch(self, on_change: Callable[[Desired], None]) -> None: ...

    def scale_up(self, request: ScaleUp) -> None: ...


class Office(Protocol):
    """What a LeaderOnly source sees of leadership (gossip.leader.Leadership is one)."""

    @property
    def leading(self) -> bool: ...

    # Set whenever this agent takes office or steps down; its one consumer clears it.
    office_changed: asyncio.Event


@runtime_checkable
class LeaderOnly(Protocol):
    def follow(self, office: Office) -> None: ...
