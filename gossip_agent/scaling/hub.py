"""Fan-out of scale-up requests to WatchScaleRequests readers.

Each reader has its own bounded queue: a slow reader loses its oldest requests (and is told how
many) instead of holding memory or slowing the agent; publishing never waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Iterator

from gossip_agent.core import reports

# Requests one reader may fall behind by before the oldest are dropped: minutes of the kernel's
# rate-limited events for a handful of sleeping services, a few hundred KB at worst.
READER_QUEUE = 1024

LOCAL = "local"
REPORT = "report"
SCOPES = ("", "all", LOCAL, "reported")


@dataclasses.dataclass(frozen=True)
class Seen:
    """A request as this agent saw it: raised by its own data plane, or reported to it."""

    request: reports.Request
    node: str
    via: str  # LOCAL or REPORT
    name: str


class Reader:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._queue: collections.deque[Seen] = collections.deque(maxlen=READER_QUEUE)
        self._skipped = 0
        self._ready = asyncio.Event()

    def wants(self, seen: Seen) -> bool:
        if self.scope == LOCAL:
            return seen.via == LOCAL
        if self.scope == "reported":
            return seen.via == REPORT
        return True

    def put(self, seen: Seen) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._skipped += 1
        self._queue.append(seen)
        self._ready.set()

    async def next(self) -> tuple[Seen, int]:
        """The oldest queued request and how many were lost before it."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        skipped, self._skipped = self._skipped, 0
        return self._queue.popleft(), skipped


class Hub:
    def __init__(self) -> None:
        self._readers: set[Reader] = set()
        self.published = 0

    @contextlib.contextmanager
    def reader(self, scope: str) -> Iterator[Reader]:
        reader = Reader(scope)
        self._readers.add(reader)
        try:
            yield reader
        finally:
            self._readers.discard(reader)

    @property
    def readers(self) -> int:
        return len(self._readers)

    def publish(self, seen: Seen) -> None:
        self.published += 1
        for reader in self._readers:
            if reader.wants(seen):
                reader.put(seen)
