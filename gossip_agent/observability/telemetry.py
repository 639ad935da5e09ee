"""The telemetry plug point: events the engine and the leader report as they happen.

Counters that are plain state (messages received by kind and result, exchanges, bytes) live in
engine.Stats and are read when someone looks (console, a scrape). This Protocol carries only what
must be observed at the moment it happens: a distribution (adoption latency, map apply time) or
an event outside the engine (lease acquired or lost, a scale-up request). One small object is
passed in; observability.metrics implements it with prometheus_client, and Recorder below keeps
the events in memory for tests, simulations and agents without METRICS_PORT.

Contract: every method is synchronous, cheap (called on the event loop, on the hot path of an
adoption) and never raises.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Protocol

# Why a leader lost its lease (gossip_agent_lease_losses_total{reason}): renewal failed, it gave
# the lease up (shutdown or refusing to lead), or it could not move its term up.
LOSS_REASONS = ("renew-failed", "released", "bump-failed")
# Outcomes of a scale-up request as the leader handles it (gossip_agent_scale_requests_total).
SCALE_RESULTS = ("received", "scaled", "coalesced", "failed")


class Telemetry(Protocol):
    def adopted(self, *, via: str, age_seconds: float, apply_seconds: float) -> None:
        """A snapshot was adopted: age = time since the leader wrote it (carried on the wire,
        each hop adding its own monotonic elapsed time), apply = the map write here."""

    def lease_acquired(self, *, backend: str, term: int) -> None: ...

    def lease_lost(self, *, backend: str, reason: str) -> None: ...

    def scale_requested(self, *, result: str) -> None:
        """One scale-up request handled by the leader (issue 4 calls this): `result` is one
        of SCALE_RESULTS."""


@dataclasses.dataclass(frozen=True, slots=True)
class Adoption:
    via: str
    age_seconds: float
    apply_seconds: float


class Recorder:
    """The in-memory Telemetry: keeps the last adoptions and counts the rest."""

    def __init__(self, *, keep: int = 256) -> None:
        self.adoptions: collections.deque[Adoption] = collections.deque(maxlen=keep)
        self.lease_acquisitions = 0
        self.lease_losses: collections.Counter[str] = collections.Counter()
        self.scale_requests: collections.Counter[str] = collections.Counter()

    def adopted(self, *, via: str, age_seconds: float, apply_seconds: float) -> None:
        self.adoptions.append(Adoption(via, age_seconds, apply_seconds))

    def lease_acquired(self, *, backend: str, term: int) -> None:
        self.lease_acquisitions += 1

    def lease_lost(self, *, backend: str, reason: str) -> None:
        self.lease_losses[reason] += 1

    def scale_requested(self, *, result: str) -> None:
        self.scale_requests[result] += 1
