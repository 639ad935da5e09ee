"""Terms and who may lead.

A new leader's term is strictly above every term it has seen (in gossip, in its persisted
state, in the backend), whatever the backend's counter says: counters restart (Redis without
persistence, a recreated ConfigMap, a switch of backend). Versions then never go backwards.
"""

from __future__ import annotations

from collections.abc import Iterable


def next_term(*, backend_term: int, max_seen: int) -> int:
    """The term a leader takes: the backend's next counter value, lifted above max_seen."""
    return max(backend_term, max_seen + 1)


def refuse_to_lead(*, backend: str, own_boot_id: str, peer_boot_ids: Iterable[str]) -> str:
    """Why this agent must not lead ("" when it may).

    A bpffs lease is a lock on one host's BPF filesystem: agents on two hosts would each get
    one, and the cluster would have one leader per node.
    """
    if backend != "bpffs":
        return ""
    others = sorted({boot for boot in peer_boot_ids if boot and boot != own_boot_id})
    if not others:
        return ""
    return (
        f"COORDINATION_BACKEND=bpffs only spans one host, and {len(others)} peer(s) run on "
        f"another host (boot id {others[0][:8]}...); use redis or configmap across nodes"
    )
