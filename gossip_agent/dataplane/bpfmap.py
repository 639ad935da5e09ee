"""SERVICE_LIST as real pinned BPF maps (DataPlane kind "bpf"), opened without compiling C.

Layout (dataplane/layout.py is the contract with the XDP program):
    <pin_dir>/SERVICE_LIST       hash u32 -> u32, max_entries configurable (default 1024)
    <pin_dir>/SERVICE_LIST_META  array[1] of struct service_list_meta (version, content hash)
    <pin_dir>/SERVICE_STATS      lru_percpu_hash u32 -> passed, dropped, fail_open (per CPU)
    <pin_dir>/HEARTBEAT          array[1]: refreshed_ns, fail_open_after_ns (the fail-open guard)
    <pin_dir>/EVENT_RATE         lru_hash u32 -> u64 (the program's event rate limit)

Invariants:
- One agent per pin directory: open_pinned() holds an exclusive flock on the directory itself
  for the object's lifetime (errors.PinDirInUse otherwise). The bpffs lease locks a
  subdirectory, so an agent may use its pin directory as its lease directory too.
- The data plane never goes blank: existing pins are reused with their entries; a pin of
  another shape (older layout, other max_entries) is migrated by copying (dataplane/migrate.py)
  or, where it cannot be, refused (DataPlaneError) and left in place; never replaced empty.
- apply() is all or nothing. It knows the previous values of the keys it touches before
  writing, refuses a result larger than max_entries before writing, writes deletes then
  updates (batched), then the meta record. If any write fails it restores the previous values
  of every key it touched, leaves the meta record as it was, and raises DataPlaneError. So the
  meta record always describes a table that was fully written.
- Where the previous values come from: a diff that states them (MapDiff.previous, set by the
  engine, which diffs against the table it wrote itself) is taken at its word, with no read;
  any other diff has them looked up in the map first. Taking the engine's word is safe because
  that table is the one the meta record describes: the map differs from it only after a hand
  edit (or a rollback that failed too), and then a rollback restores the touched keys to the
  recorded version, which is what the map-repair check (Engine.repair_map, a full read every
  REPAIR_EVERY_ROUNDS anti-entropy rounds) would write anyway. The entry count it implies is
  used to refuse early, but never alone: before refusing, the map is read to be sure; a count
  short of the truth ends in the kernel's E2BIG, which rolls back like any failed write.
"""

from __future__ import annotations

import array
import contextlib
import os
import struct
from collections.abc import Mapping
from typing import TypeAlias

from gossip_agent import errors
from gossip_agent.core import diff, versions
from gossip_agent.dataplane import base, layout, migrate
from gossip_agent.system import bpfsys

_META_KEY = struct.pack("=I", layout.META_KEY)  # u32 key 0, host byte order
_U32 = struct.Struct("=I")  # SERVICE_LIST keys and values: u32 in host byte order
# Above this many touched keys, one batch read of the whole map beats per-key lookups.
_LOOKUP_ONE_BY_ONE_MAX = 64


class BpfDataPlane:
    """The agent's pinned maps; build it with open_pinned()."""

    kind = "bpf"

    def __init__(
        self,
        *,
        pin_dir: str,
        lock_fd: int,
        table: bpfsys.PinnedMap,
        meta: bpfsys.PinnedMap,
        others: tuple[bpfsys.PinnedMap, ...] = (),
    ) -> None:
        self.pin_dir = pin_dir
        self.location = table.path
        self.max_entries = table.spec.max_entries
        self._lock_fd = lock_fd
        self._table = table
        self._meta = meta
        self._others = {pinned.spec.name: pinned for pinned in others}
        self._count = len(table.items_u32())  # entries in the map; kept up to date by apply()

    def load(self) -> base.Persisted:
        version, content_hash = decode_meta(self._read_meta_raw(), path=self._meta.path)
        return base.Persisted(version, content_hash, self.read())

    def read(self) -> dict[int, int]:
        items = self._table.items_u32()
        self._count = len(items)
        return items

    def apply(
        self, change: diff.MapDiff, *, version: versions.Version, content_hash: bytes
    ) -> None:
        record = encode_meta(version, content_hash, path=self._meta.path)
        writes = _u32_writes(change, path=self.location)
        before, size = self._before_and_size(change)
        try:
            self._write(writes, before, record)
        except errors.DataPlaneError as exc:
            self.read()  # recount: the failed write may have changed the map before rollback
            raise self._rolled_back(change, before, version, exc) from exc
        self._count = size

    def _before_and_size(self, change: diff.MapDiff) -> tuple[Mapping[int, int], int]:
        """The previous values of the touched keys (for rollback) and the entry count after the
        change; refuses, before any write, a count above max_entries that the map confirms."""
        if change.previous is not None:
            # previous holds exactly the touched keys present before (MapDiff's contract):
            # each of those is replaced or removed, every other update adds an entry.
            size = self._count + len(change.updates) - len(change.previous)
            if size <= self.max_entries:
                return change.previous, size
            # Refuse only on what the map holds (read whole: recounted), not on the engine's
            # word: the map may differ from the table the engine wrote.
            before = self.read()
        else:
            before = self._before(change)
        size = (self._count - sum(1 for key in change.deletes if key in before)
                + len(change.updates.keys() - before.keys()))
        _check_capacity(size, max_entries=self.max_entries, path=self.location)
        return before, size

    def _before(self, change: diff.MapDiff) -> dict[int, int]:
        """The current values of (at least) the keys a change touches, for rollback and sizing,
        when the change does not state them.

        A typical snapshot changes a few entries: looking those up one by one (~3 us each)
        is far cheaper than reading all 1024 entries on every delivery; big changes read all
        and use the whole table as it is (a superset serves rollback and sizing alike, and
        filtering 1024 keys in Python would cost more than the kernel's batch read).
        """
        touched = [*change.deletes, *change.updates]
        if len(touched) > _LOOKUP_ONE_BY_ONE_MAX:
            return self.read()
        before = {}
        for key in touched:
            raw = self._table.lookup(_U32.pack(key))
            if raw is not None:
                before[key] = _U32.unpack(raw)[0]
        return before

    @property
    def table_map_id(self) -> int:
        """The kernel id of SERVICE_LIST: a program that uses this map is this agent's."""
        return bpfsys.map_info(self._table.fd, path=self.location).map_id

    def stats(self) -> dict[int, list[tuple[int, int, int]]]:
        """SERVICE_STATS: service -> [(passed, dropped, fail_open) for each possible CPU]."""
        stats = self._others[layout.SERVICE_STATS]
        stride = (layout.STATS_STRUCT.size + 7) // 8 * 8
        result = {}
        for key in stats.keys_raw():
            raw = stats.lookup(key)
            if raw is None:
                continue  # evicted while we walked
            result[_U32.unpack(key)[0]] = [
                layout.STATS_STRUCT.unpack_from(raw, offset)
                for offset in range(0, len(raw), stride)
            ]
        return result

    def write_heartbeat(self, *, refreshed_ns: int, fail_open_after_ns: int) -> None:
        """The fail-open guard's record: the program passes everything once the kernel's
        monotonic clock is more than fail_open_after_ns past refreshed_ns (0 = never)."""
        record = layout.HEARTBEAT_STRUCT.pack(refreshed_ns, fail_open_after_ns)
        self._others[layout.HEARTBEAT].update(_META_KEY, record)

    def read_heartbeat(self) -> tuple[int, int]:
        """(refreshed_ns, fail_open_after_ns); (0, 0) when never written."""
        raw = self._others[layout.HEARTBEAT].lookup(_META_KEY)
        refreshed, after = layout.HEARTBEAT_STRUCT.unpack(raw or bytes(16))
        return refreshed, after

    def close(self) -> None:
        for pinned in self._others.values():
            pinned.close()
        self._meta.close()
        self._table.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the pin-directory flock
            self._lock_fd = -1

    def _read_meta_raw(self) -> bytes:
        raw = self._meta.lookup(_META_KEY)
        return raw if raw is not None else bytes(layout.META_STRUCT.size)

    def _write(self, writes: _Writes, before: Mapping[int, int], record: bytes) -> None:
        keys, values, deletes = writes
        if deletes:
            # Only keys present are deleted: one missing key fails a whole delete batch.
            self._table.delete_u32_batch(key for key in deletes if key in before)
        self._table.update_u32_batch(keys, values)
        self._meta.update(_META_KEY, record)

    def _rolled_back(
        self,
        change: diff.MapDiff,
        before: Mapping[int, int],
        version: versions.Version,
        cause: Exception,
    ) -> errors.DataPlaneError:
        """Restores the touched keys; returns the error to raise, saying how that went."""
        touched = set(change.deletes) | change.updates.keys()
        what = f"applying snapshot {version} ({len(change)} changes) to {self.location} failed"
        try:
            self._restore(touched, before)
        except errors.DataPlaneError as exc:
            return errors.DataPlaneError(
                f"{what}: {cause}; restoring the {len(touched)} entries it touched failed too "
                f"({exc}), so the map may hold a mix until the next apply; the meta record "
                f"was left as it was"
            )
        return errors.DataPlaneError(
            f"{what}: {cause}; the {len(touched)} entries it touched were restored and the "
            f"meta record was left as it was"
        )

    def _restore(self, touched: set[int], before: Mapping[int, int]) -> None:
        # Deletes first: keys the failed apply added may be what stands in the way of
        # re-inserting the ones it removed.
        self._table.delete_u32_batch(key for key in touched if key not in before)
        back = {key: before[key] for key in touched if key in before}
        self._table.update_u32_batch(back.keys(), back.values())


# A change as the batch calls take it: (update keys, their values, deletes), u32 arrays.
_Writes: TypeAlias = "tuple[array.array[int], array.array[int], array.array[int]]"


def _u32_writes(change: diff.MapDiff, *, path: str) -> _Writes:
    """The change as u32 arrays (as they are for a diff between tables: no conversion);
    refuses, before any write, keys or values that do not fit a u32."""
    try:
        keys, values = diff.u32_arrays(change.updates)
        return keys, values, array.array("I", change.deletes)
    except OverflowError as exc:
        raise errors.DataPlaneError(
            f"a key or value for {path} is outside 0..{2**32 - 1} ({exc}); nothing was written"
        ) from exc


def _check_capacity(size: int, *, max_entries: int, path: str) -> None:
    """Refuses, before any write, a result the map cannot hold (the kernel would stop the
    update batch at E2BIG halfway; if entries added behind our back make it do so anyway,
    apply() rolls back)."""
    if size > max_entries:
        raise errors.DataPlaneError(
            f"applying this snapshot would put {size} entries in {path}, which holds at most "
            f"{max_entries}; the map and its meta record were left as they were"
        )


def encode_meta(version: versions.Version, content_hash: bytes, *, path: str) -> bytes:
    """struct service_list_meta for a fully applied snapshot (see layout.py)."""
    if len(content_hash) not in (0, layout.HASH_SIZE):
        raise errors.DataPlaneError(
            f"content hash for {path} is {len(content_hash)} bytes; expected "
            f"{layout.HASH_SIZE} (sha256) or none"
        )
    if not (0 <= version.term <= versions.U64_MAX and 0 <= version.seq <= versions.U64_MAX):
        raise errors.DataPlaneError(f"version {version} does not fit the u64 fields of {path}")
    digest = content_hash.ljust(layout.HASH_SIZE, b"\0")
    return layout.META_STRUCT.pack(version.term, version.seq, digest, layout.LAYOUT_VERSION, 0)


def decode_meta(raw: bytes, *, path: str) -> tuple[versions.Version, bytes]:
    """(version, content hash); (ZERO, b"") for a record never written (all zero)."""
    term, seq, digest, layout_version, _reserved = layout.META_STRUCT.unpack(raw)
    if layout_version == 0:
        return versions.ZERO, b""
    if layout_version not in layout.META_COMPATIBLE_VERSIONS:
        raise errors.DataPlaneError(
            f"{path} was written with layout version {layout_version}; this agent knows "
            f"version {layout.LAYOUT_VERSION}"
        )
    return versions.Version(term, seq), (b"" if digest == bytes(layout.HASH_SIZE) else digest)


def open_pinned(*, pin_dir: str, max_entries: int) -> BpfDataPlane:
    """Opens (or creates, mkdir -p included) the agent's maps under pin_dir, and owns pin_dir.

    Raises errors.PinDirInUse if another agent holds pin_dir, errors.DataPlaneError if pin_dir
    is not on bpffs, bpf() fails, or an existing pin does not match the layout.
    """
    if max_entries < 1:
        raise errors.DataPlaneError(f"max_entries for {pin_dir} must be >= 1, not {max_entries}")
    _require_bpffs(pin_dir)
    with contextlib.ExitStack() as undo:
        lock_fd = _lock_pin_dir(pin_dir)
        undo.callback(os.close, lock_fd)
        opened = []
        for spec in layout.pinned_specs(max_entries):
            pinned = migrate.open_or_migrate(os.path.join(pin_dir, spec.name), spec)
            undo.callback(pinned.close)
            opened.append(pinned)
        undo.pop_all()  # success: the data plane owns the fds from here
    table, meta, *others = opened
    return BpfDataPlane(pin_dir=pin_dir, lock_fd=lock_fd, table=table, meta=meta,
                        others=tuple(others))


def _require_bpffs(pin_dir: str) -> None:
    try:
        on_bpffs = bpfsys.is_bpffs(pin_dir)
    except OSError as exc:
        raise errors.DataPlaneError(f"cannot check BPF_PIN_DIR {pin_dir}: {exc}") from exc
    if not on_bpffs:
        raise errors.DataPlaneError(
            f"BPF_PIN_DIR {pin_dir} is not on a BPF filesystem "
            f"(mount it with: mount -t bpf bpf /sys/fs/bpf)"
        )


def _lock_pin_dir(pin_dir: str) -> int:
    try:
        fd = bpfsys.lock_directory(pin_dir)
    except OSError as exc:
        raise errors.DataPlaneError(f"cannot open BPF_PIN_DIR {pin_dir}: {exc.strerror}") from exc
    if fd is None:
        raise errors.PinDirInUse(
            f"BPF_PIN_DIR {pin_dir} is already used by another agent on this host; "
            f"give each agent its own pin directory"
        )
    return fd


def bpf_available(path: str = "/sys/fs/bpf") -> tuple[bool, str]:
    """(True, "") if path is on a mounted bpffs and this process can create BPF maps; else
    (False, why) so the agent can fall back to the memory data plane and say why."""
    try:
        if not bpfsys.is_bpffs(path):
            return False, f"{path} is not a mounted BPF filesystem (mount -t bpf bpf {path})"
        bpfsys.probe_map_create()
    except (OSError, errors.DataPlaneError) as exc:
        return False, f"cannot create BPF maps: {exc}"
    return True, ""
