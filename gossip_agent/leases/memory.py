"""An in-memory lease shared by agents in one process: simulations and tests.

It keeps the backend contract (atomic term counter, compare-and-act renew/release) so the
same leadership code runs over it; `revoke()` plays a lease expiring under its holder, and
`reset_counter()` plays a backend that forgot its counter (Redis FLUSHALL, a recreated
ConfigMap), which leaders must survive without versions going back.
"""

from __future__ import annotations

import time

from gossip_agent import errors
from gossip_agent.core import terms
from gossip_agent.leases import base


class MemoryLeaseStore:
    def __init__(self) -> None:
        self.holder = ""
        self.term = 0
        self.acquired_unix = 0.0
        self.available = True
        self.acquisitions: list[tuple[str, int]] = []  # (holder, term): the safety record

    def revoke(self) -> None:
        self.holder = ""

    def reset_counter(self) -> None:
        self.holder = ""
        self.term = 0


class MemoryLease:
    backend = "memory"
    note = "in-memory lease: one process only"

    def __init__(self, store: MemoryLeaseStore, *, node: str) -> None:
        self.store = store
        self.holder = base.holder_identity(node)

    def _check(self) -> None:
        if not self.store.available:
            raise errors.LeaseUnavailable("in-memory lease store is marked unavailable")

    async def try_acquire(self, *, min_term: int) -> base.Grant | None:
        self._check()
        if self.store.holder and self.store.holder != self.holder:
            return None
        term = terms.next_term(backend_term=self.store.term + 1, max_seen=min_term - 1)
        self.store.holder, self.store.term = self.holder, term
        self.store.acquired_unix = time.time()
        self.store.acquisitions.append((self.holder, term))
        return base.Grant(self.holder, term)

    async def renew(self) -> bool:
        self._check()
        return self.store.holder == self.holder

    def proven(self) -> bool:
        return self.store.holder == self.holder

    async def bump(self, *, min_term: int) -> int:
        self._check()
        if self.store.holder != self.holder:
            raise errors.LeaseLost(f"lease is held by {self.store.holder or 'nobody'}")
        self.store.term = max(self.store.term + 1, min_term)
        self.store.acquisitions.append((self.holder, self.store.term))
        return self.store.term

    async def release(self) -> None:
        if self.store.holder == self.holder:
            self.store.holder = ""

    async def read(self) -> base.LeaseRecord | None:
        self._check()
        if not self.store.term:
            return None
        return base.LeaseRecord(self.store.holder, self.store.term, self.store.acquired_unix)

    async def close(self) -> None:
        await self.release()
