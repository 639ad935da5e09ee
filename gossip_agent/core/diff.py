"""Map diffs: what to write so a map holding `old` holds `new`.

Applying deletes before updates frees slots first, so a full map can still take a snapshot
that swaps entries; keys kept by both sides are never removed, so their packets never see a
missing entry mid-apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class MapDiff:
    updates: dict[int, int]
    deletes: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not self.updates and not self.deletes

    def __len__(self) -> int:
        return len(self.updates) + len(self.deletes)


def diff(old: Mapping[int, int], new: Mapping[int, int]) -> MapDiff:
    updates = {key: value for key, value in new.items() if old.get(key) != value}
    deletes = tuple(sorted(key for key in old if key not in new))
    return MapDiff(updates=updates, deletes=deletes)


def patch(old: Mapping[int, int], change: MapDiff) -> dict[int, int]:
    """The mapping after applying `change` to `old` (diff's inverse, used by tests and repair)."""
    result = {key: value for key, value in old.items() if key not in set(change.deletes)}
    result.update(change.updates)
    return result
