"""Opening a pinned map of the current layout, migrating an older or differently sized pin.

A pin whose shape differs from its MapSpec (another max_entries, or a map type of the same
key and value sizes, e.g. from an older layout) is never used as it is and never replaced by
an empty map (the data plane would go blank). Instead:

  1. a new map of the current spec is created (unpinned);
  2. every entry of the old map is copied into it (raw bytes: key and value sizes match);
  3. the new map is pinned at <name>_migrating, then renamed over the old pin (rename(2) is
     atomic on bpffs: a reader of the path sees the old map or the new one, never nothing).

If the old entries do not fit the new max_entries, or the key or value sizes differ (no
conversion is defined for any layout so far), nothing is changed and DataPlaneError says why.
Programs loaded before keep the old map (they hold it by fd, not by path) until they are
replaced: the agent loads a new program right after opening the maps when XDP_INTERFACES is
set, and says so in the log otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os

from gossip_agent import errors
from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys

log = logging.getLogger("gossip_agent.dataplane")
MIGRATING_SUFFIX = "_migrating"  # no dot: bpffs refuses dotted names


def open_or_migrate(path: str, spec: bpfsys.MapSpec) -> bpfsys.PinnedMap:
    """The map pinned at path, of exactly `spec`: reused, created, or migrated (see above)."""
    fd = bpfsys._obj_get(path)
    if fd is None:
        return bpfsys.PinnedMap.open_or_create(path, spec)
    try:
        found = bpfsys.map_info(fd, path=path).as_spec()
    except BaseException:
        os.close(fd)
        raise
    if _same_shape(found, spec):
        return bpfsys.PinnedMap(fd, path=path, spec=spec)
    old = bpfsys.PinnedMap(fd, path=path, spec=found)
    try:
        return _migrate(old, spec)
    finally:
        old.close()


def _same_shape(found: bpfsys.MapSpec, spec: bpfsys.MapSpec) -> bool:
    return (found.map_type, found.key_size, found.value_size, found.max_entries) == (
        spec.map_type, spec.key_size, spec.value_size, spec.max_entries)


def _migrate(old: bpfsys.PinnedMap, spec: bpfsys.MapSpec) -> bpfsys.PinnedMap:
    entries = _entries(old, spec)
    fd = bpfsys.create_map(spec, path=old.path)
    new = bpfsys.PinnedMap(fd, path=old.path, spec=spec)
    with contextlib.ExitStack() as undo:
        undo.callback(new.close)
        for key, value in entries:
            new.update(key, value)
        _swap_pin(new, old.path)
        undo.pop_all()
    log.warning("migrated %s from %s to %s by copying its %d entries; programs loaded before "
                "use the old map until replaced", old.path, old.spec.describe(),
                spec.describe(), len(entries))
    return new


def _entries(old: bpfsys.PinnedMap, spec: bpfsys.MapSpec) -> list[tuple[bytes, bytes]]:
    """The old map's entries, after checking they can be copied into a map of `spec`."""
    found = old.spec
    percpu_changed = (found.map_type in bpfsys.PERCPU_TYPES) != (
        spec.map_type in bpfsys.PERCPU_TYPES)
    if (found.key_size, found.value_size) != (spec.key_size, spec.value_size) or percpu_changed:
        raise errors.DataPlaneError(
            f"the map pinned at {old.path} is {found.describe()}, this agent's layout "
            f"(version {layout.LAYOUT_VERSION}) needs {spec.describe()}, and no migration "
            f"between them is defined; it was left as it is (remove it by hand, or use "
            f"another BPF_PIN_DIR)")
    entries = []
    for key in old.keys_raw():
        value = old.lookup(key)
        if value is not None:  # deleted while we walked: nothing to copy
            entries.append((key, value))
    if len(entries) > spec.max_entries and found.map_type not in _EVICTING:
        raise errors.DataPlaneError(
            f"the map pinned at {old.path} holds {len(entries)} entries, more than the "
            f"{spec.max_entries} of {spec.describe()}; it was left as it is (raise "
            f"MAP_MAX_ENTRIES, or shrink the table first)")
    return entries[: spec.max_entries]


# LRU maps are caches (counters, event rate limits): dropping the excess loses nothing needed.
_EVICTING = frozenset({bpfsys.BPF_MAP_TYPE_LRU_HASH, bpfsys.BPF_MAP_TYPE_LRU_PERCPU_HASH})


def _swap_pin(new: bpfsys.PinnedMap, path: str) -> None:
    staging = path + MIGRATING_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)  # left over from a migration that died half-way
    bpfsys._call("obj_pin", staging, bpfsys._lib().bpf_obj_pin, new.fd, staging.encode())
    try:
        os.rename(staging, path)
    except OSError as exc:
        os.unlink(staging)
        raise errors.DataPlaneError(f"cannot move the migrated map over {path}: {exc}") from exc
