"""Map diffs: what to write so a map holding `old` holds `new`.

Applying deletes before updates frees slots first, so a full map can still take a snapshot
that swaps entries; keys kept by both sides are never removed, so their packets never see a
missing entry mid-apply.

A diff between two canonical tables (diff_tables, from_changes) keeps its pairs as u32 arrays
(U32Pairs) and knows what each touched key held before (MapDiff.previous): the data plane then
writes the arrays in one batch call and needs no read of the map for rollback or sizing. That is
what keeps a 1024-entry churn near the kernel's own cost (issue 15).
"""

from __future__ import annotations

import array
import dataclasses
import itertools
from collections.abc import Iterator, Mapping

from gossip_agent.core import snapshots


class U32Pairs(Mapping[int, int]):
    """key -> value held as two parallel u32 arrays (as a canonical table gives them).

    Why not a dict: the data plane hands these arrays to one batch bpf() call as they are,
    while a dict of 1024 entries costs about 60 us to build and as much again to turn back into
    arrays. Lookups (rollback, tests, the memory data plane) build the dict once, on demand.
    """

    __slots__ = ("keys_u32", "values_u32", "_dict")

    def __init__(self, keys: array.array[int], values: array.array[int]) -> None:
        if keys.typecode != "I" or values.typecode != "I" or len(keys) != len(values):
            raise ValueError("U32Pairs takes two u32 arrays ('I') of the same length")
        self.keys_u32 = keys
        self.values_u32 = values
        self._dict: dict[int, int] | None = None

    def _as_dict(self) -> dict[int, int]:
        if self._dict is None:
            self._dict = dict(zip(self.keys_u32, self.values_u32, strict=True))
        return self._dict

    def __getitem__(self, key: int) -> int:
        return self._as_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._as_dict()

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys_u32)

    def __len__(self) -> int:
        return len(self.keys_u32)

    def __repr__(self) -> str:
        return f"U32Pairs({self._as_dict()!r})"


def u32_arrays(pairs: Mapping[int, int]) -> tuple[array.array[int], array.array[int]]:
    """(keys, values) as u32 arrays: as held for U32Pairs, converted (one C loop each) for any
    other mapping. A key or value outside 0..2^32-1 raises OverflowError."""
    if isinstance(pairs, U32Pairs):
        return pairs.keys_u32, pairs.values_u32
    return array.array("I", pairs.keys()), array.array("I", pairs.values())


@dataclasses.dataclass(frozen=True, slots=True)
class MapDiff:
    updates: Mapping[int, int]
    deletes: tuple[int, ...]
    # What the touched keys (updates and deletes) held before, exactly those that were present
    # then; None when unknown. Set only by diffs between tables the writer itself wrote to the
    # map (the engine's), so a data plane may take it for what the map holds instead of
    # reading it. Two diffs that write the same thing are equal whatever they say it replaces.
    previous: Mapping[int, int] | None = dataclasses.field(default=None, compare=False)

    @property
    def empty(self) -> bool:
        return not self.updates and not self.deletes

    def __len__(self) -> int:
        return len(self.updates) + len(self.deletes)


def diff(old: Mapping[int, int], new: Mapping[int, int]) -> MapDiff:
    """previous is left unknown: `old` may be a stale reading of the map (tests, repair)."""
    updates = {key: value for key, value in new.items() if old.get(key) != value}
    deletes = tuple(sorted(key for key in old if key not in new))
    return MapDiff(updates=updates, deletes=deletes)


def diff_tables(old: bytes, new: bytes) -> MapDiff:
    """diff() of two canonical snapshot tables (see core.snapshots), fast when the keys match,
    with `previous` known (old is a whole table, not a reading of part of a map).

    Most snapshots change a few replica counts and keep the key set. Then the keys are compared
    as arrays (memcmp) and the values by one XOR of the two value arrays taken as big integers:
    a zero word is an unchanged value. All of it runs in C, where comparing 1024 values pair by
    pair in Python costs about 40 us on every delivery.
    """
    old_pairs, new_pairs = snapshots.u32_pairs(old), snapshots.u32_pairs(new)
    keys = new_pairs[0::2]
    if old_pairs[0::2] != keys:
        return _diff_keyed(old_pairs, new_pairs)
    old_values, values = old_pairs[1::2], new_pairs[1::2]
    changed = _changed_flags(old_values, values)
    if all(changed):  # every value changed (a full churn): the arrays are the diff as they are
        return MapDiff(updates=U32Pairs(keys, values), deletes=(),
                       previous=U32Pairs(keys, old_values))
    touched = array.array("I", itertools.compress(keys, changed))
    return MapDiff(
        updates=U32Pairs(touched, array.array("I", itertools.compress(values, changed))),
        deletes=(),
        previous=U32Pairs(touched, array.array("I", itertools.compress(old_values, changed))),
    )


def _changed_flags(old: array.array[int], new: array.array[int]) -> list[int]:
    """One int per value, non-zero where old and new differ (their XOR)."""
    if not new:
        return []
    xor = int.from_bytes(old.tobytes(), "little") ^ int.from_bytes(new.tobytes(), "little")
    return memoryview(xor.to_bytes(len(new) * new.itemsize, "little")).cast("I").tolist()


def _diff_keyed(old_pairs: array.array[int], new_pairs: array.array[int]) -> MapDiff:
    """The general case (keys added or removed): through dicts."""
    old = dict(zip(old_pairs[0::2], old_pairs[1::2], strict=True))
    change = diff(old, dict(zip(new_pairs[0::2], new_pairs[1::2], strict=True)))
    previous = {key: old[key] for key in itertools.chain(change.updates, change.deletes)
                if key in old}
    return dataclasses.replace(change, previous=previous)


def from_changes(changes: bytes, *, replaced: bytes | None = None) -> MapDiff:
    """The MapDiff a delta's (key, value) pairs describe (see snapshots.Delta): the leader
    already named what changed, so the receiver need not compare all ~1024 entries again.
    `replaced`: the values those keys held before, one u32 per pair in the same order
    (snapshots.expand_with_previous), which become the diff's `previous`."""
    pairs = snapshots.u32_pairs(changes)
    keys = pairs[0::2]
    previous = None if replaced is None else U32Pairs(keys, snapshots.u32_pairs(replaced))
    return MapDiff(updates=U32Pairs(keys, pairs[1::2]), deletes=(), previous=previous)


def patch(old: Mapping[int, int], change: MapDiff) -> dict[int, int]:
    """The mapping after applying `change` to `old` (diff's inverse, used by tests and repair)."""
    gone = set(change.deletes)
    result = {key: value for key, value in old.items() if key not in gone}
    result.update(change.updates)
    return result
