"""Snapshots of SERVICE_LIST, their validation, and the adopt / ignore / conflict decision.

The table is kept in its wire form (see proto Snapshot.table): n little-endian u32 pairs
(key, value) sorted strictly by key. Keeping bytes end to end means the leader encodes once,
a receiver decodes in one C call (array.array) and the content hash is one sha256 over it.

Invariants:
- A Snapshot that passed validate() has a canonical table: equal content, equal bytes, equal hash.
- decide() is the only place that judges an incoming snapshot; push and anti-entropy both call it.
- Held.version never decreases through decide(): only ADOPT / REPAIR / CONFLICT_WIN replace it,
  and they require a version >= the held one.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import enum
import hashlib
import ipaddress
import itertools
import operator
import struct
import sys
from collections.abc import Mapping, Sequence

from gossip_agent import errors
from gossip_agent.core import versions

# Names are "namespace/name": a DNS-1123 subdomain namespace (<= 63) plus '/' plus a Service
# name (<= 63) fit well under 253; 253 (the longest DNS name) bounds anything a user could mean.
MAX_NAME_BYTES = 253
U32_MAX = 2**32 - 1
_ENTRY_BYTES = 8  # one (key, value) pair of u32
_U32_LE = struct.Struct("<I")  # a key or value as the wire table holds it
_PAIR_LE = struct.Struct("<II")  # one (key, value) pair as the wire table holds it


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """names is None when the sender omitted them (see proto Snapshot.names_omitted)."""

    version: versions.Version
    leader: str
    leader_address: str
    table: bytes
    names: tuple[str, ...] | None
    content_hash: bytes
    names_hash: bytes = b""

    @property
    def entry_count(self) -> int:
        return len(self.table) // _ENTRY_BYTES

    def entries(self) -> dict[int, int]:
        return table_to_dict(self.table)

    @property
    def complete(self) -> bool:
        return self.names is not None

    def name_map(self) -> dict[int, str]:
        if not self.names:
            return {}
        return dict(zip(table_keys(self.table), self.names, strict=True))


if array.array("I").itemsize != 4:  # pragma: no cover - every Linux ABI we target has it
    raise ImportError("array('I') is not 32 bits on this platform")


def u32_pairs(table: bytes) -> array.array[int]:
    """The u32 words of wire bytes (pairs of a table, or values), decoded in one C call; this
    runs several times per delivery, so the platform checks are made once, at import."""
    values = array.array("I", table)
    if sys.byteorder != "little":  # pragma: no cover - the wire is little-endian by contract
        values.byteswap()
    return values


def table_keys(table: bytes) -> array.array[int]:
    return u32_pairs(table)[0::2]


def table_to_dict(table: bytes) -> dict[int, int]:
    pairs = u32_pairs(table)
    return dict(zip(pairs[0::2], pairs[1::2], strict=True))


def encode_table(entries: Mapping[int, int]) -> bytes:
    """The canonical table bytes of a key -> value mapping."""
    pairs = array.array("I")
    for key in sorted(entries):
        pairs.append(key)
        pairs.append(entries[key])
    if sys.byteorder != "little":  # pragma: no cover
        pairs.byteswap()
    return pairs.tobytes()


def content_hash(table: bytes) -> bytes:
    return hashlib.sha256(table).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    """A snapshot as the value changes since `base` (same keys): see proto Snapshot.base."""

    version: versions.Version
    base: versions.Version
    leader: str
    leader_address: str
    changes: bytes  # (key, value) u32 pairs, sorted by key: only values that changed
    content_hash: bytes  # of the full table after the changes
    names_hash: bytes


class NeedFull(errors.GossipAgentError):
    """A delta that does not apply to what is held: the sender must send the full snapshot."""


def delta_between(old: Snapshot, new: Snapshot) -> Delta | None:
    """The delta form of `new` against `old`, or None when the keys (or names) differ."""
    if old.names_hash != new.names_hash or len(old.table) != len(new.table):
        return None
    old_pairs, new_pairs = u32_pairs(old.table), u32_pairs(new.table)
    if old_pairs[0::2] != new_pairs[0::2]:
        return None
    keys, values = new_pairs[0::2], new_pairs[1::2]
    changed = itertools.compress(range(len(keys)), map(operator.ne, old_pairs[1::2], values))
    pairs = array.array("I")
    for index in changed:
        pairs.append(keys[index])
        pairs.append(values[index])
    return Delta(new.version, old.version, new.leader, new.leader_address,
                 _le_bytes(pairs), new.content_hash, new.names_hash)


def expand(delta: Delta, held: Snapshot | None) -> Snapshot:
    """The full snapshot a delta describes, built on the held one; NeedFull if it does not fit."""
    return expand_with_previous(delta, held)[0]


def expand_with_previous(delta: Delta, held: Snapshot | None) -> tuple[Snapshot, bytes]:
    """expand(), and the values the delta replaced in the held table: one u32 per pair of
    delta.changes, in its order, encoded as the table is. What a map write restores if it
    fails halfway.

    Values are patched in place in a copy of the held table (binary search per changed key, on
    a view of its keys: no copy), so the result keeps the canonical encoding without re-sorting
    or re-encoding 1024 entries; a one-entry delta costs little more than the hash check.
    """
    if held is None or held.version != delta.base or held.names_hash != delta.names_hash:
        raise NeedFull(f"delta {delta.version} needs base {delta.base}")
    if len(delta.changes) % _ENTRY_BYTES:
        raise errors.SnapshotInvalid("delta changes are not whole (key, value) pairs")
    keys = _keys_view(held.table)
    patched = bytearray(held.table)
    replaced = bytearray()
    for key, value in _PAIR_LE.iter_unpack(delta.changes):
        index = bisect.bisect_left(keys, key)
        if index == len(keys) or keys[index] != key:
            raise NeedFull(f"delta {delta.version} changes a key missing at {delta.base}")
        at = index * _ENTRY_BYTES + 4  # the value half of the pair
        replaced += held.table[at:at + 4]  # from the held table: a key named twice is no matter
        _U32_LE.pack_into(patched, at, value)
    table = bytes(patched)
    if content_hash(table) != delta.content_hash:
        raise errors.SnapshotInvalid(f"delta {delta.version} content hash does not match")
    snapshot = Snapshot(delta.version, delta.leader, delta.leader_address, table, held.names,
                        delta.content_hash, held.names_hash)
    return snapshot, bytes(replaced)


def _keys_view(table: bytes) -> Sequence[int]:
    """The keys of a canonical table, for lookups: a strided view of its bytes on
    little-endian hosts (no copy of 1024 keys), a decoded array elsewhere."""
    if sys.byteorder != "little":  # pragma: no cover - the wire is little-endian by contract
        return table_keys(table)
    return memoryview(table).cast("I")[0::2]


def _le_bytes(pairs: array.array[int]) -> bytes:
    if sys.byteorder != "little":  # pragma: no cover - the wire is little-endian by contract
        pairs = array.array("I", pairs)
        pairs.byteswap()
    return pairs.tobytes()


def names_hash(table: bytes, names: tuple[str, ...]) -> bytes:
    """Identifies the names as aligned to the table's keys (equal hash: reusable names)."""
    digest = hashlib.sha256(table_keys(table).tobytes())
    digest.update("\0".join(names).encode())
    return digest.digest()


def with_names(snapshot: Snapshot, held: Snapshot | None) -> Snapshot:
    """Fills omitted names from the held snapshot when they are the same names.

    The keys are compared too, not only the names hash the sender claims (it cannot be checked
    without the names): so a held snapshot's names always match its keys and names hash, which
    validate() relies on to skip re-checking the same names.
    """
    if snapshot.names is not None or held is None or held.names is None:
        return snapshot
    if held.names_hash != snapshot.names_hash or not _same_keys(snapshot.table, held.table):
        return snapshot
    return dataclasses.replace(snapshot, names=held.names)


def build(
    *,
    version: versions.Version,
    leader: str,
    leader_address: str,
    entries: Mapping[int, int],
    names: Mapping[int, str],
) -> Snapshot:
    """A snapshot the leader writes: canonical table, names aligned to it, hash computed."""
    table = encode_table(entries)
    aligned = tuple(names.get(key, "") for key in sorted(entries)) if names else ()
    if not any(aligned):
        aligned = ()
    return Snapshot(
        version=version,
        leader=leader,
        leader_address=leader_address,
        table=table,
        names=aligned,
        content_hash=content_hash(table),
        names_hash=names_hash(table, aligned),
    )


def validate(snapshot: Snapshot, *, max_entries: int, held: Snapshot | None = None) -> None:
    """Raises SnapshotTooLarge or SnapshotInvalid; returns None for a snapshot safe to adopt.

    `held`: the snapshot this agent holds, which passed these checks when it was adopted (or
    was patched from one that did, keeping its keys). Keys equal to its keys are ascending, and
    the same names over the same keys have its valid names hash: both checks are skipped then,
    which saves about 100 us of per-key Python work on a 1024-entry delivery. The content hash
    is always checked.
    """
    if not snapshot.version.is_valid():
        raise errors.SnapshotInvalid(f"snapshot version {snapshot.version} is not a valid version")
    if not snapshot.leader:
        raise errors.SnapshotInvalid("snapshot names no leader")
    if len(snapshot.table) % _ENTRY_BYTES:
        raise errors.SnapshotInvalid(
            f"snapshot table is {len(snapshot.table)} bytes, not a multiple of {_ENTRY_BYTES}"
        )
    count = snapshot.entry_count
    if count > max_entries:
        raise errors.SnapshotTooLarge(
            f"snapshot {snapshot.version} has {count} entries; this map holds {max_entries}"
        )
    same_keys = held is not None and _same_keys(snapshot.table, held.table)
    if not same_keys:
        keys = table_keys(snapshot.table)
        # map(operator.lt) runs in C: this check is on every delivery's hot path.
        if not all(map(operator.lt, keys, keys[1:])):
            raise errors.SnapshotInvalid(
                f"snapshot {snapshot.version} table keys are not strictly ascending"
            )
    if snapshot.content_hash != content_hash(snapshot.table):
        raise errors.SnapshotInvalid(f"snapshot {snapshot.version} content hash does not match")
    if snapshot.names is None or (same_keys and _same_names(snapshot, held)):
        return
    _validate_names(snapshot.names, count)
    if snapshot.names_hash != names_hash(snapshot.table, snapshot.names):
        raise errors.SnapshotInvalid(f"snapshot {snapshot.version} names hash does not match")


def _same_keys(table: bytes, other: bytes) -> bool:
    """Whether two tables have the same keys in the same order (array ==: one memcmp)."""
    return len(table) == len(other) and table_keys(table) == table_keys(other)


def _same_names(snapshot: Snapshot, held: Snapshot | None) -> bool:
    """Whether snapshot carries held's names and names hash (tuple ==: C, identity first)."""
    return (held is not None and held.names is not None
            and snapshot.names_hash == held.names_hash and snapshot.names == held.names)


def _validate_names(names: tuple[str, ...], count: int) -> None:
    if names and len(names) != count:
        raise errors.SnapshotInvalid(f"snapshot has {len(names)} names for {count} entries")
    # Fast path in C: a UTF-8 character is at most 4 bytes, so 63 characters always fit.
    if not names or max(map(len, names)) * 4 <= MAX_NAME_BYTES:
        return
    for name in names:
        if len(name.encode()) > MAX_NAME_BYTES:
            raise errors.SnapshotInvalid(f"service name {name[:40]!r}... exceeds 253 bytes")


class Decision(enum.Enum):
    ADOPT = "adopt"  # newer version: replace what is held
    DUPLICATE = "duplicate"  # same version, same content, nothing missing
    STALE = "stale"  # older version: ignore, tell the sender what is held
    REPAIR = "repair"  # same version and content, but what is held is incomplete: take it
    CONFLICT_WIN = "conflict-win"  # same version, other content, incoming wins the tie-break
    CONFLICT_LOSE = "conflict-lose"  # same version, other content, held wins the tie-break
    # At the leader: a version of its own term that it did not write (a forgery or a bug). Never
    # adopted; the leader moves its term up so its next write supersedes it everywhere.
    FORGED = "forged"

    @property
    def adopts(self) -> bool:
        return self in _ADOPTING

    @property
    def is_conflict(self) -> bool:
        return self in _CONFLICTS


# Module constants: looking members up on the class (Decision.ADOPT) costs ~0.1 us each in
# Python 3.11, and these run on every delivery.
_ADOPTING = (Decision.ADOPT, Decision.REPAIR, Decision.CONFLICT_WIN)
_CONFLICTS = (Decision.CONFLICT_WIN, Decision.CONFLICT_LOSE)


@dataclasses.dataclass(frozen=True, slots=True)
class Held:
    """What an agent holds: the version floor, its content hash, and the snapshot if known.

    complete is False after a restart that recovered the version (and the table, from the pinned
    map) but not the whole snapshot; the same version from a peer then REPAIRs it.
    """

    version: versions.Version
    content_hash: bytes
    complete: bool
    snapshot: Snapshot | None

    @classmethod
    def of(cls, snapshot: Snapshot) -> Held:
        return cls(snapshot.version, snapshot.content_hash, snapshot.complete, snapshot)


NOTHING = Held(versions.ZERO, b"", False, None)


def decide(
    held: Held, *, version: versions.Version, digest: bytes, complete: bool = True,
    own_term: int = 0,
) -> Decision:
    """Judges an incoming (version, content hash) against what is held.

    `complete` says whether the incoming snapshot carries its names: only a complete one can
    REPAIR an incomplete held snapshot of the same version.

    Equal versions with different content cannot happen with a correct lease (one leader per
    term); if they do, the larger hash wins on every agent, so the cluster still converges.

    `own_term`: the term this agent leads at (0 when it does not lead; callers pass 0 for the
    leader's own writes). In that term the leader wrote everything there is, and holds its
    newest write, so anything of that term newer than what it holds, or equal with other
    content, is FORGED: say seq 2^64-1 in its term, which would otherwise stall its
    publication and every follower behind a version no leader wrote.
    """
    if own_term and version.term == own_term and (
            version > held.version or (version == held.version and digest != held.content_hash)):
        return Decision.FORGED
    if version > held.version:
        return Decision.ADOPT
    if version < held.version:
        return Decision.STALE
    if digest == held.content_hash:
        return Decision.REPAIR if complete and not held.complete else Decision.DUPLICATE
    return Decision.CONFLICT_WIN if digest > held.content_hash else Decision.CONFLICT_LOSE


def apply(held: Held, snapshot: Snapshot, *, own_term: int = 0) -> tuple[Decision, Held]:
    """decide() and the resulting Held, for callers (and tests) that want both."""
    decision = decide(held, version=snapshot.version, digest=snapshot.content_hash,
                      complete=snapshot.complete, own_term=own_term)
    return decision, (Held.of(snapshot) if decision.adopts else held)


def parse_ip(text: str) -> int:
    """Dotted IPv4 -> the map key (host-order integer, as ntohl(daddr) gives)."""
    try:
        return int(ipaddress.IPv4Address(text.strip()))
    except ipaddress.AddressValueError as exc:
        raise errors.SnapshotInvalid(f"{text!r} is not an IPv4 address") from exc


def format_ip(key: int) -> str:
    return str(ipaddress.IPv4Address(key))


def check_replicas(replicas: int) -> int:
    if not 0 <= replicas <= U32_MAX:
        raise errors.SnapshotInvalid(f"replicas {replicas} is outside 0..{U32_MAX}")
    return replicas


def check_name(name: str) -> str:
    if len(name.encode()) > MAX_NAME_BYTES:
        raise errors.SnapshotInvalid(f"service name {name[:40]!r}... exceeds 253 bytes")
    return name
