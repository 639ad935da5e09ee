"""The data-plane Protocol: the map the XDP program reads, and the version persisted beside it.

Contract:
- load() returns what survives a restart: the version and content hash persisted in the meta map
  (written only after a diff was fully applied) and the table the map holds right now. A map
  is never replaced by an empty one: an existing pin is reused with its entries.
- apply(change, version, content_hash) writes deletes then updates, then the meta record. It is
  all or nothing: on a failure it restores the entries it touched, leaves the meta record as it
  was and raises errors.DataPlaneError. What the touched entries held may be taken from
  change.previous when the diff states it (the engine's diffs do) rather than read first.
- read() returns the table the map holds now (used to detect and repair hand edits).
- Calls are synchronous: a bpf() map operation takes microseconds, cheaper than a thread hop.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from gossip_agent.core import diff, versions


@dataclasses.dataclass(frozen=True, slots=True)
class Persisted:
    version: versions.Version
    content_hash: bytes  # b"" when nothing was ever applied
    table: dict[int, int]


class DataPlane(Protocol):
    kind: str  # "bpf" (pinned BPF maps) or "memory" (BPF unavailable: nothing enforced)
    location: str  # the SERVICE_LIST pin path, or "" for memory
    max_entries: int

    def load(self) -> Persisted: ...

    def apply(
        self, change: diff.MapDiff, *, version: versions.Version, content_hash: bytes
    ) -> None: ...

    def read(self) -> dict[int, int]: ...

    def close(self) -> None: ...
