"""The operator's view of the cluster's term epoch: inspect the lease record, and move the
epoch up to a given term safely under the lease (`gossip-agent epoch show|reset`).

The failure it answers: the lease backend was restored from a backup, recreated, or replaced by
another backend, so its record's term is below the terms the cluster has used (GetState's
max_term_seen). Agents prove a snapshot's term against the record (gossip/proof.py) and never
go back to a lower version, so until a leader moves above the old terms its first snapshots are
refused as stale and it must learn and bump first. Setting the epoch at or above the highest
term the agents report removes that round, and `show` tells whether it is needed.

Safety: `reset` takes the lease itself (so no agent can lead meanwhile and the change is one
atomic step of the backend, Lease.bump), refuses while an agent holds it (naming the holder),
and never lowers the term: agents keep their versions across restarts, so a lower epoch would
make every new leader's snapshots stale on every node. It releases the lease when done; the
next agent elected takes a term above it.
"""

from __future__ import annotations

import dataclasses

from gossip_agent import errors
from gossip_agent.leases import base


class EpochRefused(errors.GossipAgentError):
    """The epoch was not changed; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Reset:
    previous: int
    term: int


async def reset(lease: base.Lease, *, term: int) -> Reset:
    """Moves the record's term to `term` (>= the current one) while holding the lease."""
    record = await lease.read()
    previous = record.term if record is not None else 0
    if record is not None and record.holder:
        raise EpochRefused(f"the lease is held by {record.holder} at term {record.term}; "
                           "retry when no agent leads (stop the agents, or run this while "
                           "the cluster is being moved to this backend)")
    if term < previous:
        raise EpochRefused(f"term {term} is below the recorded term {previous}: lowering the "
                           "epoch would make every new leader's snapshots stale on every node "
                           "(agents never go back to a lower version)")
    grant = await lease.try_acquire(min_term=term)
    if grant is None:
        raise EpochRefused("an agent took the lease meanwhile; retry when no agent leads")
    try:
        reached = grant.term if grant.term >= term else await lease.bump(min_term=term)
    finally:
        await lease.release()
    return Reset(previous=previous, term=reached)
