"""An in-memory data plane: for tests, simulations and machines without BPF.

Nothing is enforced on a node that uses it; the agent says so in the log and in GetState.
`fail_next` lets tests make the next apply fail halfway, to check all-or-nothing behaviour.
"""

from __future__ import annotations

from gossip_agent import errors
from gossip_agent.core import diff, versions
from gossip_agent.dataplane import base


class MemoryDataPlane:
    kind = "memory"
    location = ""

    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self.table: dict[int, int] = {}
        self.version = versions.ZERO
        self.content_hash = b""
        self.fail_next = False
        self.applies = 0

    def load(self) -> base.Persisted:
        return base.Persisted(self.version, self.content_hash, dict(self.table))

    def apply(
        self, change: diff.MapDiff, *, version: versions.Version, content_hash: bytes
    ) -> None:
        result = diff.patch(self.table, change)
        if len(result) > self.max_entries:
            raise errors.DataPlaneError(
                f"map would hold {len(result)} entries; max is {self.max_entries}"
            )
        if self.fail_next:
            self.fail_next = False
            raise errors.DataPlaneError("injected failure: map left as it was")
        self.table = result
        self.version, self.content_hash = version, content_hash
        self.applies += 1

    def read(self) -> dict[int, int]:
        return dict(self.table)

    def close(self) -> None:
        pass
