"""The pinned BPF map layout: the contract between this agent and the XDP program in bpf/.

This module is the ONE place that defines it. The C side includes bpf/service_list.h, which is
GENERATED from this module (`python tools/gen_bpf_header.py`; a unit test fails when the
committed header differs from c_header() below), so key and value types, struct layouts, map
names and default sizes cannot drift apart. The loader (dataplane/xdp.py) passes the pin
directory and the configured max_entries to the compiler as -D flags.

Maps under <pin_dir> (all pinned, all reused across restarts):
    SERVICE_LIST       hash u32 -> u32: service IPv4 in host byte order (ntohl(ip->daddr)) ->
                       ready replicas (0 = scaled to zero: drop and emit a scale-up event).
    SERVICE_LIST_META  array[1] of struct service_list_meta: the version SERVICE_LIST holds,
                       written by the agent only after a diff was fully applied.
    SERVICE_STATS      lru_percpu_hash u32 -> struct service_stats: packets the program passed,
                       dropped, or passed only because it failed open, per listed service and
                       per CPU (per-CPU: no atomic increments on the fast path; user space sums).
    HEARTBEAT          array[1] of struct heartbeat: the agent's last refresh on the kernel's
                       monotonic clock (bpf_ktime_get_ns = CLOCK_MONOTONIC) and FAIL_OPEN_AFTER;
                       older than that, the program passes everything (fail open).
    EVENT_RATE         lru_hash u32 -> u64: when the last scale-up event for a service was
                       emitted, so a burst to a sleeping service yields one event per
                       EVENT_INTERVAL_NS, not one per packet.
    XDP_PROG           the loaded program itself, so `detach` and the next agent can find it.
The scale-up events travel in a ring buffer (struct scale_event) owned by the loaded program: it
is not pinned, since only the agent that loaded the program reads it.

bcc reuses a pinned map without checking its shape, so the agent opens (or migrates) every pin
against its MapSpec BEFORE compiling. Any change to a size, a field or a name is a new
LAYOUT_VERSION; an agent that finds pins of another shape migrates them by copying
(dataplane/migrate.py), never replacing them with empty maps.
"""

from __future__ import annotations

import struct

from gossip_agent.system import bpfsys

SERVICE_LIST = "SERVICE_LIST"
SERVICE_LIST_META = "SERVICE_LIST_META"

# 1024 services per node is the original program's size; the table's memory is preallocated
# (about 80 KiB at 1024), so the default stays small and the agent's config can raise it.
DEFAULT_MAX_ENTRIES = 1024

KEY_SIZE = 4  # u32 service IPv4, host byte order
VALUE_SIZE = 4  # u32 ready replicas

# 1: SERVICE_LIST and SERVICE_LIST_META only. 2: + SERVICE_STATS, HEARTBEAT, EVENT_RATE,
# XDP_PROG (the XDP program). Pins of version 1 are compatible and are upgraded in place.
LAYOUT_VERSION = 2
# SERVICE_LIST_META records written by these layouts read the same (the struct did not change).
META_COMPATIBLE_VERSIONS = frozenset({1, 2})
META_KEY = 0
# struct service_list_meta in host byte order ("=": native order, standard sizes, no padding;
# the C struct has none either: 8 + 8 + 32 + 4 + 4).
META_STRUCT = struct.Struct("=QQ32sII")
HASH_SIZE = 32
assert META_STRUCT.size == 56

META_SPEC = bpfsys.MapSpec(
    name=SERVICE_LIST_META,
    map_type=bpfsys.BPF_MAP_TYPE_ARRAY,
    key_size=4,
    value_size=META_STRUCT.size,
    max_entries=1,
)


def service_list_spec(max_entries: int = DEFAULT_MAX_ENTRIES) -> bpfsys.MapSpec:
    return bpfsys.MapSpec(
        name=SERVICE_LIST,
        map_type=bpfsys.BPF_MAP_TYPE_HASH,
        key_size=KEY_SIZE,
        value_size=VALUE_SIZE,
        max_entries=max_entries,
    )


SERVICE_STATS = "SERVICE_STATS"
HEARTBEAT = "HEARTBEAT"
EVENT_RATE = "EVENT_RATE"
XDP_PROG = "XDP_PROG"
PROGRAM_FUNCTION = "xdp_service_list"  # the C function; the kernel keeps 15 bytes of its name

# struct service_stats { u64 passed; u64 dropped; u64 fail_open; }: one copy per possible CPU,
# each copy rounded up to 8 bytes by the kernel (24 already is).
STATS_STRUCT = struct.Struct("=QQQ")
# struct heartbeat { u64 refreshed_ns; u64 fail_open_after_ns; }: 0 fail_open_after_ns = never
# fail open; refreshed_ns is CLOCK_MONOTONIC (bpf_ktime_get_ns), comparable on this host only.
# The program judges the age now - refreshed_ns as SIGNED (s64): a refresh stamped after its own
# clock reading is fresh, not 2^64 ns old.
HEARTBEAT_STRUCT = struct.Struct("=QQ")
# struct scale_event { u32 service_ip; u32 source_ip; u64 timestamp_ns; }: both addresses in host
# byte order (ntohl), timestamp bpf_ktime_get_ns (CLOCK_MONOTONIC).
EVENT_STRUCT = struct.Struct("=IIQ")
# One scale-up event per service per 100 ms at most: user space deduplicates per service anyway,
# so this only bounds the rate a packet flood can push through the ring.
EVENT_INTERVAL_NS = 100_000_000
# 16 pages (64 KiB) hold 4096 events: a burst to 1024 sleeping services fits four times over.
EVENT_RING_PAGES = 16

HEARTBEAT_SPEC = bpfsys.MapSpec(
    name=HEARTBEAT,
    map_type=bpfsys.BPF_MAP_TYPE_ARRAY,
    key_size=4,
    value_size=HEARTBEAT_STRUCT.size,
    max_entries=1,
)


def stats_spec(max_entries: int = DEFAULT_MAX_ENTRIES) -> bpfsys.MapSpec:
    return bpfsys.MapSpec(SERVICE_STATS, bpfsys.BPF_MAP_TYPE_LRU_PERCPU_HASH, KEY_SIZE,
                          STATS_STRUCT.size, max_entries)


def event_rate_spec(max_entries: int = DEFAULT_MAX_ENTRIES) -> bpfsys.MapSpec:
    return bpfsys.MapSpec(EVENT_RATE, bpfsys.BPF_MAP_TYPE_LRU_HASH, KEY_SIZE, 8, max_entries)


def pinned_specs(max_entries: int) -> tuple[bpfsys.MapSpec, ...]:
    """Every pinned map of this layout, SERVICE_LIST first."""
    return (service_list_spec(max_entries), META_SPEC, stats_spec(max_entries), HEARTBEAT_SPEC,
            event_rate_spec(max_entries))


def c_header() -> str:
    """bpf/service_list.h, generated from the definitions above (see the module docstring)."""
    return _C_HEADER.format(
        layout_version=LAYOUT_VERSION,
        max_entries=DEFAULT_MAX_ENTRIES,
        hash_size=HASH_SIZE,
        event_interval_ns=EVENT_INTERVAL_NS,
        ring_pages=EVENT_RING_PAGES,
        meta_size=META_STRUCT.size,
        stats_size=STATS_STRUCT.size,
        heartbeat_size=HEARTBEAT_STRUCT.size,
        event_size=EVENT_STRUCT.size,
    )


_C_HEADER = """\
/* GENERATED by tools/gen_bpf_header.py from gossip_agent/dataplane/layout.py: do not edit.
 * The map layout shared by the XDP program and the agent; see layout.py for the contract.
 * The loader defines PIN_DIR (a string literal) and SERVICE_LIST_MAX_ENTRIES (MAP_MAX_ENTRIES).
 */
#ifndef GOSSIP_AGENT_SERVICE_LIST_H
#define GOSSIP_AGENT_SERVICE_LIST_H

#define LAYOUT_VERSION {layout_version}
#ifndef SERVICE_LIST_MAX_ENTRIES
#define SERVICE_LIST_MAX_ENTRIES {max_entries}
#endif
#define EVENT_INTERVAL_NS {event_interval_ns}ULL
#define EVENT_RING_PAGES {ring_pages}

/* SERVICE_LIST: u32 service IPv4 (host byte order) -> u32 ready replicas. */

struct service_list_meta {{
    u64 term;
    u64 seq;
    u8 hash[{hash_size}];
    u32 layout_version;
    u32 reserved;
}};
_Static_assert(sizeof(struct service_list_meta) == {meta_size}, "layout.META_STRUCT");

struct service_stats {{
    u64 passed;
    u64 dropped;
    u64 fail_open;
}};
_Static_assert(sizeof(struct service_stats) == {stats_size}, "layout.STATS_STRUCT");

/* HEARTBEAT: failed open when (s64)(bpf_ktime_get_ns() - refreshed_ns) > fail_open_after_ns;
 * signed, so a refresh stamped ahead of the program's clock reading counts as fresh. */
struct heartbeat {{
    u64 refreshed_ns;
    u64 fail_open_after_ns;
}};
_Static_assert(sizeof(struct heartbeat) == {heartbeat_size}, "layout.HEARTBEAT_STRUCT");

struct scale_event {{
    u32 service_ip;
    u32 source_ip;
    u64 timestamp_ns;
}};
_Static_assert(sizeof(struct scale_event) == {event_size}, "layout.EVENT_STRUCT");

#endif
"""
