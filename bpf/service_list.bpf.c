// SPDX-License-Identifier: Apache-2.0
/* The gossip-agent XDP program: enforces the SERVICE_LIST the cluster agreed on.
 *
 * For every IPv4 packet, the destination address (ntohl(ip->daddr), as the original
 * scale-to-zero program reads it) is looked up in the pinned SERVICE_LIST map:
 *   - not listed: XDP_PASS, not counted (most traffic is not to a managed service);
 *   - replicas > 0: XDP_PASS, counted as passed;
 *   - replicas == 0: XDP_DROP, counted as dropped, and a scale-up event (service, source,
 *     time) goes to the SCALE_EVENTS ring, at most one per service per EVENT_INTERVAL_NS;
 *   - replicas == 0 but the agent's heartbeat is older than its FAIL_OPEN_AFTER: XDP_PASS,
 *     counted as fail_open, so a dead or uninstalled agent cannot leave zeros dropping forever.
 * Everything that is not IPv4 over Ethernet passes untouched.
 *
 * Map layout: service_list.h, generated from gossip_agent/dataplane/layout.py (the contract).
 * Every map is pinned under PIN_DIR (defined by the loader) and reused across reloads, so a
 * new program enforces what the previous one did from its first packet.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#include "service_list.h"

BPF_TABLE_PINNED("hash", u32, u32, SERVICE_LIST, SERVICE_LIST_MAX_ENTRIES,
                 PIN_DIR "/SERVICE_LIST");
BPF_TABLE_PINNED("lru_percpu_hash", u32, struct service_stats, SERVICE_STATS,
                 SERVICE_LIST_MAX_ENTRIES, PIN_DIR "/SERVICE_STATS");
BPF_TABLE_PINNED("array", u32, struct heartbeat, HEARTBEAT, 1, PIN_DIR "/HEARTBEAT");
BPF_TABLE_PINNED("lru_hash", u32, u64, EVENT_RATE, SERVICE_LIST_MAX_ENTRIES,
                 PIN_DIR "/EVENT_RATE");
BPF_RINGBUF_OUTPUT(SCALE_EVENTS, EVENT_RING_PAGES);

/* The stats slot of this CPU for a listed service, created on first use (NULL only if the
 * kernel cannot allocate one: the verdict never depends on counting). */
static __always_inline struct service_stats *stats_of(u32 service)
{
    struct service_stats *stats = SERVICE_STATS.lookup(&service);
    if (stats)
        return stats;
    struct service_stats zero = {};
    SERVICE_STATS.insert(&service, &zero);
    return SERVICE_STATS.lookup(&service);
}

/* True when the agent has not refreshed its heartbeat for longer than FAIL_OPEN_AFTER. A
 * record never written (all zero) or fail_open_after_ns 0 means "never fail open".
 * The age is signed: a refresh stamped after this CPU's reading of the clock (the agent read
 * CLOCK_MONOTONIC a moment later, or on another CPU) has a small negative age and is fresh.
 * Unsigned, it would wrap to about 2^64 ns and fail open exactly when the agent is alive.
 * fail_open_after_ns is at most 7 days (config.py), far inside s64. */
static __always_inline int failed_open(u64 now)
{
    u32 zero = 0;
    struct heartbeat *beat = HEARTBEAT.lookup(&zero);
    if (!beat || beat->fail_open_after_ns == 0)
        return 0;
    s64 age = (s64)(now - beat->refreshed_ns);
    return age > (s64)beat->fail_open_after_ns;
}

/* One event per service per EVENT_INTERVAL_NS: the last emission time lives in EVENT_RATE.
 * Two CPUs racing on the same service may both emit once; user space deduplicates. */
static __always_inline void emit_scale_up(u32 service, u32 source, u64 now)
{
    u64 *last = EVENT_RATE.lookup(&service);
    if (last && now - *last < EVENT_INTERVAL_NS)
        return;
    EVENT_RATE.update(&service, &now);
    struct scale_event *event = SCALE_EVENTS.ringbuf_reserve(sizeof(struct scale_event));
    if (!event)
        return; /* ring full: the agent is behind; the next packet after the interval retries */
    event->service_ip = service;
    event->source_ip = source;
    event->timestamp_ns = now;
    SCALE_EVENTS.ringbuf_submit(event, 0);
}

int xdp_service_list(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return XDP_PASS;

    u32 service = bpf_ntohl(ip->daddr);
    u32 *replicas = SERVICE_LIST.lookup(&service);
    if (!replicas)
        return XDP_PASS;
    struct service_stats *stats = stats_of(service);
    if (*replicas > 0) {
        if (stats)
            stats->passed++;
        return XDP_PASS;
    }
    u64 now = bpf_ktime_get_ns();
    if (failed_open(now)) {
        if (stats)
            stats->fail_open++;
        return XDP_PASS;
    }
    if (stats)
        stats->dropped++;
    emit_scale_up(service, bpf_ntohl(ip->saddr), now);
    return XDP_DROP;
}
