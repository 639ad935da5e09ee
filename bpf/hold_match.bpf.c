// SPDX-License-Identifier: Apache-2.0
/* The cold-start hold match: an xt_bpf program that says which packets the agent holds.
 *
 * Used as `iptables -t raw -A PREROUTING -m bpf --object-pinned PIN_DIR/HOLD_MATCH
 * -j NFQUEUE --queue-num N` (no --queue-bypass, docs/cold-start.md). It matches (returns 1)
 * exactly the IPv4 packets the XDP program treats as "to a sleeping service":
 *   - the destination is in SERVICE_LIST with 0 replicas, and
 *   - the agent's heartbeat is fresh (same rule as the XDP program's failed_open()).
 * So a service that wakes up stops matching the moment the agent writes its replicas, and a
 * node whose agent is gone stops queueing when it fails open: the rule never outlives its
 * reason, and nothing is copied out of the map (an ipset would lag it).
 *
 * xt_bpf runs the program as a socket filter on the skb with skb->data at the IPv4 header
 * (the raw table sees packets before conntrack and before kube-proxy's DNAT), so the
 * destination address is at offset 16; load_word() returns it in host byte order, which is
 * SERVICE_LIST's key (ntohl(daddr), as service_list.bpf.c reads it).
 *
 * Maps: the same pins as the XDP program (service_list.h, generated from layout.py); this
 * program reads them and writes nothing.
 */
#include <uapi/linux/bpf.h>

#include "service_list.h"

BPF_TABLE_PINNED("hash", u32, u32, SERVICE_LIST, SERVICE_LIST_MAX_ENTRIES,
                 PIN_DIR "/SERVICE_LIST");
BPF_TABLE_PINNED("array", u32, struct heartbeat, HEARTBEAT, 1, PIN_DIR "/HEARTBEAT");

/* service_list.bpf.c's failed_open(), the same rule: signed age, all-zero record or
 * fail_open_after_ns 0 means "never fail open". */
static __always_inline int failed_open(u64 now)
{
    u32 zero = 0;
    struct heartbeat *beat = HEARTBEAT.lookup(&zero);
    if (!beat || beat->fail_open_after_ns == 0)
        return 0;
    s64 age = (s64)(now - beat->refreshed_ns);
    return age > (s64)beat->fail_open_after_ns;
}

int hold_match(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(0x0800))  /* ETH_P_IP */
        return 0;
    u32 service = load_word(skb, 16);  /* iphdr.daddr, host byte order */
    u32 *replicas = SERVICE_LIST.lookup(&service);
    if (!replicas || *replicas != 0)
        return 0;
    return !failed_open(bpf_ktime_get_ns());
}
