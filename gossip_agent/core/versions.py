"""Snapshot versions: (term, seq), ordered lexicographically.

Invariants:
- term is the lease's fencing token; one leader per term (guaranteed by the backend's atomic
  counter and by terms.next_term), so one (term, seq) names one content.
- seq increases with each snapshot a leader writes in its term; both start at 1.
- Version(0, 0) is "holds nothing": below every real version.
"""

from __future__ import annotations

import dataclasses
from typing import NewType

Term = NewType("Term", int)
NodeName = NewType("NodeName", str)

U64_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Version:
    """Compared as the tuple (term, seq): dataclass order=True compares fields in order."""

    term: int
    seq: int

    def __str__(self) -> str:
        return f"{self.term}.{self.seq}"

    def next_seq(self) -> Version:
        return Version(self.term, self.seq + 1)

    def is_valid(self) -> bool:
        return 1 <= self.term <= U64_MAX and 1 <= self.seq <= U64_MAX


ZERO = Version(0, 0)
