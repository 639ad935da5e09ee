"""The pinned BPF map layout: the contract between this agent and the XDP program in bpf/.

This module is the ONE place that defines it. A C program shares it by declaring exactly:

    // <pin_dir>/SERVICE_LIST: key = service IPv4 in host byte order (ntohl(ip->daddr)),
    // value = ready replicas (0 = scaled to zero: drop and emit a scale-up event).
    BPF_TABLE_PINNED("hash", u32, u32, SERVICE_LIST, 1024, "<pin_dir>/SERVICE_LIST");

    // <pin_dir>/SERVICE_LIST_META: one record, key 0, written by the agent only after a diff
    // was fully applied to SERVICE_LIST. The XDP program never needs to read it.
    struct service_list_meta {
        u64 term;            // version of the snapshot SERVICE_LIST holds: (term, seq)
        u64 seq;
        u8  hash[32];        // sha256 of the snapshot's canonical table (core.snapshots)
        u32 layout_version;  // LAYOUT_VERSION below; 0 = never written
        u32 reserved;        // 0
    };                       // 56 bytes, no padding
    BPF_TABLE_PINNED("array", u32, struct service_list_meta, SERVICE_LIST_META, 1, "...");

bcc reuses a pinned map only if type, key size, value size and max_entries all match, and the
agent refuses (DataPlaneError) an existing pin that differs instead of replacing it: replacing
would blank the data plane. Any change to a size, a field or a name is a new LAYOUT_VERSION and
needs the C side changed in the same commit.
"""

from __future__ import annotations

import dataclasses
import struct

# Kernel enum bpf_map_type values (include/uapi/linux/bpf.h); stable UAPI.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2

MAP_TYPE_NAMES = {BPF_MAP_TYPE_HASH: "hash", BPF_MAP_TYPE_ARRAY: "array"}


@dataclasses.dataclass(frozen=True, slots=True)
class MapSpec:
    """What a pinned map must be; an existing pin is checked against every field."""

    name: str  # the pin's file name and the map name (the kernel keeps the first 15 bytes)
    map_type: int
    key_size: int
    value_size: int
    max_entries: int

    def describe(self) -> str:
        kind = MAP_TYPE_NAMES.get(self.map_type, f"type {self.map_type}")
        return (
            f"{kind} key {self.key_size}B value {self.value_size}B max_entries {self.max_entries}"
        )


SERVICE_LIST = "SERVICE_LIST"
SERVICE_LIST_META = "SERVICE_LIST_META"

# 1024 services per node is the original program's size; the table's memory is preallocated
# (about 80 KiB at 1024), so the default stays small and the agent's config can raise it.
DEFAULT_MAX_ENTRIES = 1024

KEY_SIZE = 4  # u32 service IPv4, host byte order
VALUE_SIZE = 4  # u32 ready replicas

LAYOUT_VERSION = 1
META_KEY = 0
# struct service_list_meta in host byte order ("=": native order, standard sizes, no padding;
# the C struct has none either: 8 + 8 + 32 + 4 + 4).
META_STRUCT = struct.Struct("=QQ32sII")
HASH_SIZE = 32
assert META_STRUCT.size == 56

META_SPEC = MapSpec(
    name=SERVICE_LIST_META,
    map_type=BPF_MAP_TYPE_ARRAY,
    key_size=4,
    value_size=META_STRUCT.size,
    max_entries=1,
)


def service_list_spec(max_entries: int = DEFAULT_MAX_ENTRIES) -> MapSpec:
    return MapSpec(
        name=SERVICE_LIST,
        map_type=BPF_MAP_TYPE_HASH,
        key_size=KEY_SIZE,
        value_size=VALUE_SIZE,
        max_entries=max_entries,
    )
