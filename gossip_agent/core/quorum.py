"""How many peers make a write durable, and how many a new leader must hear from first.

A write is acknowledged (WriteResponse) once `write_acks(n)` peers hold its version, so the
leader and they are a majority of the n members it knows. A new leader publishes its term's
first snapshot only after a digest round that reached `office_peers(n)` peers, so it and they
are at least ceil(n / 2) members. The two sets always share a member:

    (write_acks(n) + 1) + (office_peers(n) + 1) = (n // 2 + 1) + (n - n // 2) = n + 1 > n

and that member holds the write or something newer (versions never go back, and by the same
argument every later leader took office holding it), which the digest round pulls. So no
change of leader loses an acknowledged write, whatever set of agents is cut off or killed:
found by the fault campaign, where a leader elected while cut off from every peer published its
stale table over writes that one peer had acknowledged.

Taking office needs one peer fewer than a write when n is even, so a two-agent cluster fails
over without the dead one (a write there needs both, and the survivor holds it). n is the
membership each agent knows (discovery plus gossip, this agent included); views that differ
while discovery catches up can weaken the overlap for that moment. Cost: nothing per interval;
a write waits for write_acks(n) acknowledgements (the leader asks that many peers and a few
more), and taking office for office_peers(n) digest replies.

Pure: counts in, counts out.
"""

from __future__ import annotations


def write_acks(members: int) -> int:
    """Peers that must hold a write before it is acknowledged (members includes the leader)."""
    return max(0, members) // 2


def office_peers(members: int) -> int:
    """Peers a new leader must reach in its digest round before its first publish."""
    return max(0, members - members // 2 - 1)
