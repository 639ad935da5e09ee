"""The anti-entropy loop: every GOSSIP_INTERVAL, exchange digests with one random ready peer.

This repairs whatever a push missed (a peer that was down, a lost message, a partition that
healed): an agent behind pulls the newer snapshot in the same round trip, an agent ahead pushes
it, and agents that agree exchange only two small digests. The same round re-checks the local
map against the held table, so hand edits and half-applied writes are repaired too, and closes
the channels and push streams of peers that left (membership no longer lists them).

Cost per GOSSIP_INTERVAL on one agent: one exchange (two digests of at most MAX_DIGEST_PEERS
addresses; a snapshot only where versions differ), O(P log P) over its P peers and channels,
and every REPAIR_EVERY_ROUNDS rounds one read of the map (O(E)). Independent of N beyond P.
"""

from __future__ import annotations

import asyncio
import logging
import random

from gossip_agent import errors
from gossip_agent.core import fanout
from gossip_agent.gossip import engine as engine_mod

log = logging.getLogger("gossip_agent.gossip")


def _jittered(interval: float, rng: random.Random) -> float:
    # +-10% so agents started together do not all call at the same instant.
    return interval * (0.9 + 0.2 * rng.random())


# The map is re-read and compared with the held table every this many rounds: reading 1024
# entries costs more than a digest exchange, and hand edits are rare (minutes, not seconds).
REPAIR_EVERY_ROUNDS = 10


async def run_round(
    engine: engine_mod.Engine, *, rng: random.Random, repair: bool
) -> dict[str, bool]:
    """One round; returns each peer called and whether the exchange succeeded (the console's
    `anti-entropy` command shows it)."""
    ready = engine.membership.ready(now=engine.clock())
    results = {}
    for target in fanout.choose(ready, rng=rng, k=1):
        results[target] = await engine.exchange_with(target)
    closed = await engine.close_departed()
    if closed:
        log.debug("closed the channels of %d peer(s) that left", closed)
    if not repair:
        return results
    try:
        engine.repair_map()
    except errors.DataPlaneError as exc:
        log.error("could not repair the map: %s", exc)
    return results


async def run(engine: engine_mod.Engine, *, interval: float, rng: random.Random) -> None:
    rounds = 0
    while True:
        await asyncio.sleep(_jittered(interval, rng))
        rounds += 1
        await run_round(engine, rng=rng, repair=rounds % REPAIR_EVERY_ROUNDS == 1)
