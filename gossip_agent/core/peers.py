"""Membership: which peers exist, how they are doing, and when to try them again.

Peers come from discovery (a static list, headless-Service DNS) and from gossip (addresses
peers mention in their digests). A peer whose calls fail is suspected and retried with
exponential backoff, so a dead peer costs one failed call per backoff period and never delays
the others. Time is passed in (monotonic seconds); nothing here reads a clock.

States: unknown (never contacted) -> alive (last call succeeded) -> suspect (1..dead_after-1
consecutive failures) -> dead (dead_after or more; still retried at the backoff cap). Any
success returns a peer to alive.

Departures, so that the table (and what callers keep per address: channels, push streams)
follows the cluster through pod-IP churn instead of growing with every address ever seen:
- Discovery is believed about the addresses it withdraws: when an answer no longer lists an
  address it listed, the peer goes, even if gossip mentioned it too (a pod that was deleted;
  a live agent that was dropped by mistake is met again when it next calls). The address is
  remembered as withdrawn (the last MAX_WITHDRAWN of them), so digests of peers that have not
  refreshed yet cannot bring it back; only discovery listing it again, or the address calling
  this agent itself (met), can.
- An EMPTY answer is the exception: it withdraws only what discovery alone taught. A Service
  with no endpoints, or a broken record, must not cut an agent off from the peers it talks to.
- A peer only gossip knows is dropped once dead for forget_after.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable

from gossip_agent.core import versions

STATIC = "static"
DNS = "dns"
GOSSIP = "gossip"
# Origins whose address sets come from discovery and are replaced wholesale on each refresh.
DISCOVERED = (STATIC, DNS)
# Withdrawn addresses remembered (see the module docstring): about 100 KB at most, and far
# more departures than gossip can still be carrying from the peers' previous views.
MAX_WITHDRAWN = 1024


class PeerState(enum.Enum):
    UNKNOWN = "unknown"
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Retry timing for failing peers.

    base: first retry delay after a failure (seconds); doubled per consecutive failure.
    cap: the longest delay; a dead peer is retried this often.
    dead_after: consecutive failures after which a peer counts as dead.
    forget_after: a gossip-learned peer that is dead this long is dropped (discovered ones stay
    while discovery lists them).
    jitter: fraction of the delay randomised, so agents do not retry in lockstep.
    """

    base: float = 0.2
    cap: float = 5.0
    dead_after: int = 3
    forget_after: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        raw = min(self.cap, self.base * float(2 ** max(0, failures - 1)))
        return raw * (1 + self.jitter * (2 * rng.random() - 1))


@dataclasses.dataclass(slots=True)
class Peer:
    address: str
    origins: set[str]
    node: str = ""
    state: PeerState = PeerState.UNKNOWN
    last_contact: float | None = None
    version_known: versions.Version = versions.ZERO
    failures: int = 0
    next_attempt: float = 0.0
    dead_since: float | None = None
    boot_id: str = ""
    leader: bool = False

    @property
    def origin(self) -> str:
        for name in (STATIC, DNS, GOSSIP):
            if name in self.origins:
                return name
        return GOSSIP


@dataclasses.dataclass(frozen=True, slots=True)
class Contact:
    """What a successful call taught about the peer."""

    node: str
    version: versions.Version
    boot_id: str = ""
    leader: bool = False


class Membership:
    """The peer table of one agent. Mutable, but pure: callers pass `now`."""

    def __init__(
        self, *, self_address: str, policy: BackoffPolicy, rng: random.Random
    ) -> None:
        self._self_addresses = {self_address}
        self._policy = policy
        self._rng = rng
        self._peers: dict[str, Peer] = {}
        self._withdrawn: dict[str, None] = {}  # insertion-ordered: the oldest first

    def set_discovered(self, origin: str, addresses: Iterable[str]) -> None:
        """Replaces the address set one discovery origin currently reports; peers it no
        longer lists go (see the module docstring for what an empty answer keeps)."""
        wanted = {a for a in addresses if a not in self._self_addresses}
        for address in wanted:
            self._withdrawn.pop(address, None)
            self._peers.setdefault(address, Peer(address, set())).origins.add(origin)
        for peer in list(self._peers.values()):
            if origin in peer.origins and peer.address not in wanted:
                peer.origins.discard(origin)
                if wanted:
                    peer.origins.discard(GOSSIP)
                if not peer.origins:
                    del self._peers[peer.address]
                    if wanted:
                        self._withdraw(peer.address)

    def _withdraw(self, address: str) -> None:
        self._withdrawn[address] = None
        while len(self._withdrawn) > MAX_WITHDRAWN:
            del self._withdrawn[next(iter(self._withdrawn))]

    def learn(self, addresses: Iterable[str]) -> None:
        """Adds addresses a peer mentioned (not those discovery withdrew); they stay while
        they answer."""
        for address in addresses:
            if address not in self._withdrawn:
                self._add_gossiped(address)

    def met(self, address: str) -> None:
        """An agent at `address` called this one: a peer, even if discovery withdrew it."""
        self._withdrawn.pop(address, None)
        self._add_gossiped(address)

    def _add_gossiped(self, address: str) -> None:
        if address and address not in self._self_addresses:
            self._peers.setdefault(address, Peer(address, set())).origins.add(GOSSIP)

    def mark_self(self, address: str) -> None:
        """An address turned out to be this agent (its digest named our node): never call it."""
        self._self_addresses.add(address)
        self._peers.pop(address, None)

    def succeeded(self, address: str, *, now: float, contact: Contact) -> None:
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.node = contact.node
        peer.state = PeerState.ALIVE
        peer.last_contact = now
        peer.version_known = contact.version
        peer.failures = 0
        peer.next_attempt = now
        peer.dead_since = None
        peer.boot_id = contact.boot_id or peer.boot_id
        peer.leader = contact.leader

    def saw_version(self, address: str, *, now: float, version: versions.Version) -> None:
        """A push acknowledgement: the peer is alive and holds `version`."""
        peer = self._peers.get(address)
        if peer is not None:
            peer.version_known = version
            peer.last_contact = now
            if peer.state is not PeerState.ALIVE:
                peer.state, peer.failures, peer.dead_since = PeerState.ALIVE, 0, None

    def failed(self, address: str, *, now: float) -> float:
        """Records a failed call; returns the delay before the peer should be tried again."""
        peer = self._peers.get(address)
        if peer is None:
            return self._policy.cap
        peer.failures += 1
        delay = self._policy.delay(peer.failures, self._rng)
        peer.next_attempt = now + delay
        if peer.failures >= self._policy.dead_after:
            if peer.state is not PeerState.DEAD:
                peer.dead_since = now
            peer.state = PeerState.DEAD
        else:
            peer.state = PeerState.SUSPECT
        self._forget_long_dead(now)
        return delay

    def _forget_long_dead(self, now: float) -> None:
        for peer in list(self._peers.values()):
            if (
                peer.origins == {GOSSIP}
                and peer.dead_since is not None
                and now - peer.dead_since >= self._policy.forget_after
            ):
                del self._peers[peer.address]

    def ready(self, *, now: float) -> list[str]:
        """Peers whose backoff has passed: candidates for this round's calls."""
        return [p.address for p in self._peers.values() if p.next_attempt <= now]

    def addresses(self) -> list[str]:
        return sorted(self._peers)

    def peers(self) -> list[Peer]:
        return [self._peers[a] for a in sorted(self._peers)]

    def get(self, address: str) -> Peer | None:
        return self._peers.get(address)

    def address_of(self, node: str) -> str | None:
        for peer in self._peers.values():
            if peer.node == node:
                return peer.address
        return None

    def boot_ids(self) -> set[str]:
        return {p.boot_id for p in self._peers.values() if p.boot_id}
