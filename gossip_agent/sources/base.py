"""The source Protocol: what the leader publishes. Only the leader's source produces snapshots.

- read() returns the desired table now, or None when the source has no state of its own and
  the leader continues from the newest snapshot it adopted (the api source: its state IS the
  snapshot, edited by SetService / DeleteService).
- watch(on_change) runs for the agent's life and calls on_change with each new desired table;
  followers run it too, so a new leader is already in sync when it takes office.
- accepts_writes tells whether SetService / DeleteService are allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Desired:
    entries: dict[int, int]
    names: dict[int, str]


class Source(Protocol):
    kind: str
    accepts_writes: bool

    def read(self) -> Desired | None: ...

    async def watch(self, on_change: Callable[[Desired], None]) -> None: ...
