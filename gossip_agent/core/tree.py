"""The relay tree (issue 18, groundwork): who sends each snapshot to whom, computed by every
agent alone from its view of the members and the leader's identity, with no coordination.

Layout. The members (the leader included) are ordered by sha256(term, address), the leader is
put first, and the order is read as an F-ary heap: position i sends to positions F*i+1 ..
F*i+F. So:
- the leader sends to at most F agents, and every agent relays to at most F (its cost per
  change is O(F) whatever N is);
- the last agent is ceil(log_F(N*(F-1)+1)) - 1 hops from the leader;
- when N - 1 <= F the tree is today's star: the leader sends to everyone;
- a new term deals new positions, so no agent stays an inner relay for ever, and agents that
  agree on the members and the term compute the same tree in any input order.

Routing around. `children` skips a member its caller believes down (dead or suspect) and takes
on that member's own children instead, recursively: everyone below a dead relay is still
reached, one hop sooner, and a relay's sends grow by F - 1 per dead child only. `parent` is the
nearest ancestor not down: where a relay expects its snapshot from. Views differ between
agents for a while; a delivery that a stale view loses is what the per-hop acknowledgement and
anti-entropy repair (gossip/, not here).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable

Down = Callable[[str], bool]  # whether the caller believes a member dead or suspect


def _nobody(address: str) -> bool:
    return False


def _rank(term: int, address: str) -> bytes:
    return hashlib.sha256(f"{term}\0{address}".encode()).digest()


@dataclasses.dataclass(frozen=True)
class Tree:
    order: tuple[str, ...]  # position -> member address; the leader at 0
    fanout: int
    _positions: dict[str, int] = dataclasses.field(repr=False, compare=False)

    @property
    def leader(self) -> str:
        return self.order[0]

    def position(self, address: str) -> int | None:
        return self._positions.get(address)

    def depth(self, address: str) -> int:
        """Hops from the leader with nobody down (0 for the leader)."""
        position, hops = self._positions[address], 0
        while position:
            position, hops = (position - 1) // self.fanout, hops + 1
        return hops

    def children(self, address: str, *, down: Down = _nobody) -> list[str]:
        """Whom `address` sends to: its positions' children, each one believed down replaced by
        that one's own children (recursively). Empty for a non-member."""
        position = self._positions.get(address)
        if position is None:
            return []
        out: list[str] = []
        pending = list(self._below(position))
        while pending:
            child = pending.pop(0)
            member = self.order[child]
            if down(member):
                pending[0:0] = self._below(child)  # its subtree comes to us, in order
            else:
                out.append(member)
        return out

    def parent(self, address: str, *, down: Down = _nobody) -> str | None:
        """Whom `address` expects its snapshots from: the nearest ancestor not down (None for
        the leader and for non-members)."""
        position = self._positions.get(address)
        if not position:
            return None
        while position:
            position = (position - 1) // self.fanout
            if position == 0 or not down(self.order[position]):
                return self.order[position]
        return None  # pragma: no cover - the loop returns at the root

    def _below(self, position: int) -> range:
        first = self.fanout * position + 1
        return range(min(first, len(self.order)), min(first + self.fanout, len(self.order)))


def build(members: Iterable[str], *, leader: str, term: int, fanout: int) -> Tree:
    """The tree of `members` (the leader added if missing) for `term`, `fanout` >= 1."""
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, not {fanout}")
    others = sorted({m for m in members if m != leader}, key=lambda m: _rank(term, m))
    order = (leader, *others)
    return Tree(order, fanout, {address: i for i, address in enumerate(order)})
