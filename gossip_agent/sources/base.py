"""The source Protocol: what the leader publishes. Only the leader's source produces snapshots.

- read() returns the desired table now, or None when the source has no state of its own and
  the leader continues from the newest snapshot it adopted (the api source: its state IS the
  snapshot, edited by SetService / DeleteService).
- watch(on_change) runs for the agent's life and calls on_change with each new desired table;
  followers run it too, so a new leader is already in sync when it takes office.
- accepts_writes tells whether SetService / DeleteService are allowed.

A source that costs something to watch (SOURCE=kubernetes: API server load) also implements
LeaderOnly: the agent hands it its Office and the source watches only while this agent leads,
so at rest only the leader touches the API; read() is None until it has caught up, and the new
leader continues from the newest adopted snapshot meanwhile (no blank map).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Desired:
    entries: dict[int, int]
    names: dict[int, str]


class Source(Protocol):
    kind: str
    accepts_writes: bool

    def read(self) -> Desired | None: ...

    async def watch(self, on_change: Callable[[Desired], None]) -> None: ...


class Office(Protocol):
    """What a LeaderOnly source sees of leadership (gossip.leader.Leadership is one)."""

    @property
    def leading(self) -> bool: ...

    # Set whenever this agent takes office or steps down; its one consumer clears it.
    office_changed: asyncio.Event


@runtime_checkable
class LeaderOnly(Protocol):
    def follow(self, office: Office) -> None: ...
