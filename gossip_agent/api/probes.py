"""Kubernetes probes over grpc.health.v1: readiness and liveness as two health service names.

- LIVE (`gossip_agent.v1.Live`): SERVING from start-up while the event loop and the gRPC server
  run; a check is answered by the loop itself, so a stuck loop or a dead server fails the probe
  by timing out. It never depends on the cluster: a cold cluster (no leader, no snapshot) must not
  make the kubelet restart every agent in a loop. It goes NOT_SERVING only once shutdown began.
- READY (`gossip_agent.v1.Ready`): NOT_SERVING until this agent holds a current snapshot or
  knows there is none newer yet, and again from the start of shutdown. Current means one of:
  it adopted a snapshot (pushed, pulled, or its own as leader), or an anti-entropy exchange with a
  peer finished, which leaves it holding at least what that peer holds (a cold cluster: both
  hold nothing, and both are ready). A version recovered from the pinned map alone is not
  enough: it may be old, and a rolling update should wait until the agent has caught up.
- "" (overall), Gossip, State: SERVING from start-up until shutdown; Lease: NOT_SERVING while
  this agent refuses to lead (api.server.LEASE_HEALTH).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gossip_agent.api import server as server_mod
from gossip_agent.gossip import engine as engine_mod

log = logging.getLogger("gossip_agent.api")

READY = "gossip_agent.v1.Ready"
LIVE = "gossip_agent.v1.Live"

# How often readiness is re-checked while waiting for an exchange to finish (adoptions wake it
# at once). A tenth of a second is invisible next to a probe period (seconds).
READINESS_POLL_SECONDS = 0.1


def why_ready(engine: engine_mod.Engine) -> str:
    """Why this agent is ready, or "" while it is not."""
    event = engine.last_event
    if event is not None and event.via != "recovered":
        return f"holds version {event.version} adopted via {event.via}"
    if engine.stats.exchanges_ok > 0:
        return (f"an exchange with a peer found nothing newer than version "
                f"{engine.held.version}")
    return ""


async def watch_readiness(
    engine: engine_mod.Engine, health: server_mod.HealthServicer
) -> None:
    """The `health.readiness` task: turns READY on once, then ends."""
    while not (reason := why_ready(engine)):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READINESS_POLL_SECONDS):
                await engine.changed()
    await server_mod.set_health(health, serving=True, names=(READY,))
    log.info("ready: %s", reason, extra={"reason": reason})
