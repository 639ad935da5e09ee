"""Gossip is for members only: under mutual TLS the Gossip service (PushStream, Push, Exchange,
Report) answers only certificates that carry the agents' shared name.

The cluster CA signs more than agents: the admin certificate, readers' certificates. They may
read State (and an admin may write), but a snapshot, a digest or a node report is an agent's
word. A Gossip call from any other certificate therefore ends with PERMISSION_DENIED before its
handler runs, whatever its cluster id: nothing is parsed, counted as received or changed. The
refusal is counted (Stats.rejected["not-member"], metric messages_rejected{reason=
"not-member"}) and logged once per caller address and certificate names.

Who is a member is identity.Policy.is_member, the same test that decides whose FORWARDED_FOR
header the leader believes. Plaintext (no TLS) has no identities: the gate is off and gossip
stays open, as the start-up warning and the Tls health service say.

grpc.aio server interceptors see the method and the metadata, not the peer's certificate, so
MembersOnly wraps the method's handler instead (security/gate.py, as cluster.ClusterCheck does too):
the wrapper reads context.auth_context() and then runs the original behaviour unchanged, with the
same serializers. Cost: one auth_context() (a small dict built from the connection's verified
certificate) per call, so once per push stream, none per snapshot on it. In the server's interceptor
chain it comes before ClusterCheck, so a non-member is refused as such whatever cluster id it sends,
and a member from another cluster still gets FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from gossip_agent.security import cluster, gate, identity

log = logging.getLogger("gossip_agent.security")

REASON = "not-member"  # Stats.rejected key and metric label

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def refusal_message(*, described: str, member_name: str) -> str:
    return (f"caller {described} is not a member: the Gossip service answers only "
            f"certificates naming {member_name} (TLS_SERVER_NAME), which agents carry")


class MembersOnly(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses Gossip calls from certificates that are not members (when TLS is on)."""

    def __init__(self, *, policy: identity.Policy, on_refused: Callable[[], None]) -> None:
        self.policy = policy
        self.on_refused = on_refused
        self._logged = cluster.LogOnce()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if (handler is None or not self.policy.enforced
                or not handler_call_details.method.startswith(cluster.GOSSIP_PREFIX)):
            return handler
        return gate.guarded(handler, self._admit)

    async def _admit(self, context: gate.Context) -> None:
        """Returns for a member; ends the call with PERMISSION_DENIED otherwise."""
        names = identity.names_of(context.auth_context())
        if self.policy.is_member(names):
            return
        self.on_refused()
        peer = context.peer()
        message = refusal_message(described=identity.describe(names, peer),
                                  member_name=self.policy.member_name)
        if self._logged.first((cluster.host_of(peer), names)):
            log.warning("refused gossip from %s: %s", peer, message,
                        extra={"peer": peer, "names": sorted(names)})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
