"""The term this agent holds the lease at, shared by the engine and leadership.

Leadership moves it (a grant, a bump, stepping down); the engine reads it to judge what
arrives (a version of this leader's own term that it never wrote is FORGED) and raises the
alarm when the term must be left: a higher term was seen anywhere, or the term is spent (a
forged version of it is around, or its seq is exhausted). The lease loop wakes on that alarm
(`higher`) and moves above through the backend's atomic step before the next write.

It is passed to the engine at construction and reached by leadership through the engine, so
neither writes the other's attributes and both always see the same term.
"""

from __future__ import annotations

import asyncio


class LeadingTerm:
    def __init__(self) -> None:
        self.term = 0  # 0: this agent does not hold the lease
        # The leading term, once it must be left; leadership moves above it and clears it.
        self.spent = 0
        self.higher = asyncio.Event()  # a term above `term` was seen, or it is spent

    def take(self, term: int) -> None:
        """The lease was granted at `term`."""
        self.term = term

    def moved(self, term: int) -> None:
        """The term was moved up to `term` through the backend: nothing is spent, no alarm."""
        self.term = term
        self.spent = 0
        self.higher.clear()

    def leave(self) -> None:
        """This agent stepped down."""
        self.term = 0
        self.higher.clear()

    def spend(self) -> None:
        """The leading term must be left before the next write (no-op while not leading)."""
        if self.term:
            self.spent = self.term
            self.higher.set()

    def note(self, term: int) -> None:
        """A term seen anywhere: the alarm when it is above the leading one."""
        if self.term and term > self.term:
            self.higher.set()
