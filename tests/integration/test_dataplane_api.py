"""gossip_agent.v1.DataPlane over a real gRPC server, backed by real maps and a real program."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest
import pytest_asyncio

from gossip_agent.api import dataplane as dataplane_api
from gossip_agent.dataplane import bpfmap, enforcer, events, layout, liveness, memory, xdp
from gossip_agent.v1 import dataplane_pb2 as pb
from gossip_agent.v1 import dataplane_pb2_grpc as pb_grpc
from tests.integration import xdp_net

pytestmark = pytest.mark.integration


@pytest.fixture
def rig() -> Iterator[xdp_net.Rig]:
    yield from xdp_net.make_rig()


@pytest.fixture
def enforcing(bpffs_dir: str, rig: xdp_net.Rig) -> Iterator[enforcer.Enforcer]:
    plane = bpfmap.open_pinned(pin_dir=bpffs_dir, max_entries=layout.DEFAULT_MAX_ENTRIES)
    built = enforcer.Enforcer(plane=plane, patterns=("ga4a*n",), mode="auto",
                              fail_open_after=60.0, hub=events.EventHub(),
                              liveness=liveness.Liveness(),
                              program=xdp.Program(pin_dir=bpffs_dir,
                                                  max_entries=plane.max_entries,
                                                  table_map_id=plane.table_map_id))
    built.beat()
    found = {rig.node_if: rig.ifindex()}
    xdp_net.in_netns(rig.node_ns, lambda: built.sync(found))
    yield built
    built.close()
    plane.close()


async def serve(service: dataplane_api.DataPlaneService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_DataPlaneServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def stub(enforcing: enforcer.Enforcer) -> AsyncIterator[pb_grpc.DataPlaneStub]:
    service = dataplane_api.DataPlaneService(node="n1", plane=enforcing.plane,
                                             enforcer=enforcing, hub=enforcing.hub)
    server, address = await serve(service)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.DataPlaneStub(channel)
    await server.stop(None)


async def test_reports_program_interface_mode_and_counters_from_every_cpu(
    rig: xdp_net.Rig, enforcing: enforcer.Enforcer, stub: pb_grpc.DataPlaneStub
) -> None:
    rig.add_service(xdp_net.ZERO)
    xdp_net.put(enforcing.plane, {xdp_net.ZERO: 0})
    assert xdp_net.send_and_count(rig, xdp_net.ZERO, packets=6, settle=0.5) == 0
    assert xdp_net.counted(enforcing.plane, xdp_net.ZERO, (0, 6, 0))

    reply = await stub.GetDataPlane(pb.GetDataPlaneRequest(), timeout=10)

    assert enforcing.program is not None
    assert (reply.dataplane, reply.program_id) == ("bpf", enforcing.program.prog_id)
    assert [(i.name, i.status, i.mode) for i in reply.interfaces] == [
        (rig.node_if, "attached", "native")]
    (service,) = reply.services
    assert (service.ip, service.listed, service.dropped, service.passed) == (
        xdp_net.ZERO, True, 6, 0)
    assert sum(cpu.dropped for cpu in service.per_cpu) == 6
    assert reply.fail_open_after_seconds == 60 and not reply.failed_open
    assert 0 <= reply.heartbeat_age_ms < 60_000


async def test_reports_failed_open_once_the_heartbeat_is_stale(
    enforcing: enforcer.Enforcer, stub: pb_grpc.DataPlaneStub
) -> None:
    enforcing.plane.write_heartbeat(refreshed_ns=time.monotonic_ns() - 120 * 10**9,
                                    fail_open_after_ns=60 * 10**9)
    reply = await stub.GetDataPlane(pb.GetDataPlaneRequest(), timeout=10)
    assert reply.failed_open and reply.heartbeat_age_ms >= 120_000


async def test_memory_data_plane_answers_with_its_kind_only() -> None:
    service = dataplane_api.DataPlaneService(
        node="n1", plane=memory.MemoryDataPlane(max_entries=4), enforcer=None,
        hub=events.EventHub())
    server, address = await serve(service)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await pb_grpc.DataPlaneStub(channel).GetDataPlane(
                pb.GetDataPlaneRequest(), timeout=10)
    finally:
        await server.stop(None)
    assert (reply.node, reply.dataplane, reply.program_id, len(reply.services)) == (
        "n1", "memory", 0, 0)
