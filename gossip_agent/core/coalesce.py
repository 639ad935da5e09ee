"""Burst coalescing: many source changes in a short window become one snapshot.

Leading edge, then at most one snapshot per window: an isolated change is published at once
(no added latency), and a burst of changes inside a window after a publish becomes a single
snapshot at the window's end.
"""

from __future__ import annotations


def publish_at(*, now: float, last_publish: float | None, window: float) -> float:
    """When the pending changes should be published (monotonic seconds)."""
    if last_publish is None:
        return now
    return max(now, last_publish + window)
