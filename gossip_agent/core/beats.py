"""Lease heartbeats carried by gossip, so followers need not poll the Kubernetes API.

The leader of a configmap/lease backend records a Beat on every successful renewal; every agent
puts the newest Beat it knows in its anti-entropy digest, so beats spread like any digest.
A follower keeps only the newest (by term, then seq: one holder per term) and when it was
first heard here, on this agent's monotonic clock. That gives two answers:

- quiet(): a newer beat was heard within `window` seconds, so the leader is alive and renewing
  and there is nothing to ask the API (the API load at rest is the leader's renewals alone).
- first_heard(holder, stamp): when this agent first heard of the record that a given renewal
  wrote. A record read from the API with that fingerprint counts as observed then: the beat
  left the leader after its write succeeded, so this is never earlier than the write, and
  judging expiry from it is at least as safe as client-go's "when I first saw these bytes".

Pure: the caller passes the clock reading in.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Beat:
    holder: str  # "" = released
    term: int
    seq: int
    stamp: str  # fingerprint of the stored record

    @property
    def order(self) -> tuple[int, int]:
        return (self.term, self.seq)


class BeatBoard:
    def __init__(self) -> None:
        self.best: Beat | None = None
        self.heard_at = 0.0  # when `best` was first heard (monotonic seconds)

    def offer(self, beat: Beat, *, now: float) -> bool:
        """Keeps the beat if it is newer than the best known; True when it was."""
        if self.best is not None and beat.order <= self.best.order:
            return False
        self.best, self.heard_at = beat, now
        return True

    def quiet(self, *, holder: str, window: float, now: float) -> bool:
        """True while another holder's beats keep arriving (no reason to read the record)."""
        best = self.best
        return (best is not None and bool(best.holder) and best.holder != holder
                and now - self.heard_at < window)

    def first_heard(self, *, holder: str, stamp: str) -> float | None:
        best = self.best
        if best is None or best.holder != holder or best.stamp != stamp:
            return None
        return self.heard_at
