"""gossip_agent.v1.DataPlane: the node's XDP program, interfaces, fail-open state and counters.

Thin: everything is read from the kernel's maps and the enforcer's interface table at call
time (a few bpf() calls; SERVICE_STATS holds at most MAP_MAX_ENTRIES services).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import grpc.aio

from gossip_agent import errors
from gossip_agent.dataplane import base, enforcer, events
from gossip_agent.v1 import dataplane_pb2 as pb
from gossip_agent.v1 import dataplane_pb2_grpc as pb_grpc

SERVICE_NAME = "gossip_agent.v1.DataPlane"
Context = grpc.aio.ServicerContext[Any, Any]


class DataPlaneService(pb_grpc.DataPlaneServicer):
    def __init__(
        self,
        *,
        node: str,
        plane: base.DataPlane,
        enforcer: enforcer.Enforcer | None,
        hub: events.EventHub,
    ) -> None:
        self._node = node
        self._plane = plane
        self._enforcer = enforcer
        self._hub = hub

    async def GetDataPlane(
        self, request: pb.GetDataPlaneRequest, context: Context
    ) -> pb.GetDataPlaneResponse:
        reply = pb.GetDataPlaneResponse(node=self._node, dataplane=self._plane.kind,
                                        scale_up_events=self._hub.published)
        if self._enforcer is None:
            return reply
        try:
            _fill(reply, self._enforcer)
        except errors.DataPlaneError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return reply


def _fill(reply: pb.GetDataPlaneResponse, source: enforcer.Enforcer) -> None:
    plane = source.plane
    reply.pin_dir = plane.pin_dir
    reply.xdp_interfaces = ",".join(source.patterns)
    if source.program is not None:
        reply.program_id = source.program.prog_id
    for state in sorted(source.interfaces.values(), key=lambda s: s.name):
        reply.interfaces.add(name=state.name, ifindex=state.ifindex, status=state.status,
                             mode=state.mode, detail=state.detail)
    refreshed_ns, after_ns = plane.read_heartbeat()
    age_ns = time.monotonic_ns() - refreshed_ns
    reply.fail_open_after_seconds = after_ns / 1e9
    # Signed as in the program: a refresh stamped after this reading of the clock is fresh
    # (age 0 here, never -1, which means "never written").
    reply.heartbeat_age_ms = max(0, age_ns) // 1_000_000 if refreshed_ns else -1
    reply.failed_open = bool(after_ns) and age_ns > after_ns
    listed = plane.read()
    for service, per_cpu in sorted(plane.stats().items()):
        counters = reply.services.add(
            ip=str(ipaddress.IPv4Address(service)), listed=service in listed,
            passed=sum(c[0] for c in per_cpu), dropped=sum(c[1] for c in per_cpu),
            fail_open=sum(c[2] for c in per_cpu))
        for cpu, (passed, dropped, fail_open) in enumerate(per_cpu):
            if passed or dropped or fail_open:
                counters.per_cpu.add(cpu=cpu, passed=passed, dropped=dropped,
                                     fail_open=fail_open)
