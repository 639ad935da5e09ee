"""The cluster id on every gossip call, so two clusters sharing a network, a Redis or a
headless Service name never mix state.

Carried as call metadata (CLUSTER_KEY), not in each message: a push stream carries it once
when it opens and every snapshot on it inherits it, so the hot path costs nothing, and the
leader's once-serialized payload stays the same bytes for every peer. The server checks it in
an interceptor before any Gossip handler (PushStream, Push, Exchange, Report) runs: a call
from another cluster (or with none, when this agent has one) ends with FAILED_PRECONDITION
naming both ids, is counted (Stats.rejected["cluster"], metric messages_rejected{reason=
"cluster"}) and logged once per caller address and id.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from gossip_agent.security import gate

log = logging.getLogger("gossip_agent.security")

CLUSTER_KEY = "x-gossip-agent-cluster"
GOSSIP_PREFIX = "/gossip_agent.v1.Gossip/"
# Distinct (peer, id) pairs remembered for log-once; beyond it every refusal is logged again.
MAX_REMEMBERED = 1024

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def refusal_message(*, theirs: str, ours: str) -> str:
    return (f"cluster id {theirs or '(none)'} of the caller is not this agent's cluster "
            f"{ours or '(none)'}: agents of different clusters never exchange state")


class ClusterCheck(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses Gossip calls whose CLUSTER_KEY metadata is not `cluster_id`."""

    def __init__(self, *, cluster_id: str, on_refused: Callable[[], None]) -> None:
        self.cluster_id = cluster_id
        self.on_refused = on_refused
        self._logged = LogOnce()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if not handler_call_details.method.startswith(GOSSIP_PREFIX):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        theirs = str(metadata.get(CLUSTER_KEY, ""))
        if theirs == self.cluster_id:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._refusing(handler, theirs=theirs)

    def _refusing(self, handler: Handler, *, theirs: str) -> Handler:
        message = refusal_message(theirs=theirs, ours=self.cluster_id)

        async def refuse(context: gate.Context) -> None:
            self.on_refused()
            self._log_once(context.peer(), theirs, message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)

        return gate.guarded(handler, refuse)  # refuses before the handler would run

    def _log_once(self, peer: str, theirs: str, message: str) -> None:
        if self._logged.first((host_of(peer), theirs)):
            log.warning("refused gossip from %s: %s", peer, message,
                        extra={"peer": peer, "cluster_id": theirs})


def host_of(peer: str) -> str:
    """grpc's peer ("ipv4:10.0.0.5:41234") without the ephemeral port: one key per caller."""
    return peer.rpartition(":")[0]


class LogOnce:
    """The refusals already logged, so a caller retrying every second is logged once.

    Remembers up to MAX_REMEMBERED keys; beyond that every new refusal is logged again, which
    bounds memory without hiding a refusal.
    """

    def __init__(self) -> None:
        self._seen: set[Hashable] = set()

    def first(self, key: Hashable) -> bool:
        """True when `key` should be logged now (not seen yet)."""
        if key in self._seen:
            return False
        if len(self._seen) < MAX_REMEMBERED:
            self._seen.add(key)
        return True
