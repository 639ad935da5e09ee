"""End to end in network namespaces: a small cluster of real agent processes, one per node
namespace, gossiping over a bridge, each enforcing with the real XDP program on the node end of
its pod's veth, against real UDP packets sent from the pods (lab.netns).

What is checked, on every node:
- a service the leader sets to 0 is dropped, and the scale-up requests reach the leader; set to
  2 it passes;
- an agent SIGKILLed keeps enforcing while down (the program and pinned maps outlive it), and
  on restart its map never blanks nor goes back to an older version;
- a node cut off from the others keeps enforcing its last state, and catches up (and delivers
  its scale-up requests) when the link returns;
- a 1024-entry table is exactly what the kernel holds in every node's map.

Whether a dropped packet was really processed (and not still in flight) is decided with a
control service that is not in the table: packets to it are sent after the probes on the same
path, so once the controls have all arrived, every probe before them has met the program.

Deadlines are liveness bounds with a generous margin for agents that each compile the XDP
program (about 3 s of CPU) on a shared 2-core machine; what must never happen (a blank map, a
version going back, a packet to a service at 0 arriving) is asserted on every sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gossip_agent.core import snapshots
from gossip_agent.dataplane import layout
from gossip_agent.v1 import dataplane_pb2, dataplane_pb2_grpc
from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster, netns
from tests.conftest import require, require_bpf
from tests.integration import test_scale_requests as scale_tests

pytestmark = pytest.mark.e2e

PREFIX = "ga4b"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-netns"
ZERO = "10.96.0.10"  # the service the tests scale to 0 and back
CONTROL = "10.96.0.99"  # never in the table: always passes, orders the probes
PORT = 7777
PROBES = 20
NODES = 3
# Three agents compile the XDP program at once (~3 s of CPU each, 2 shared cores), then elect.
START_DEADLINE = 60.0
CONVERGE_DEADLINE = 15.0  # push, or anti-entropy (1 s rounds) after a miss: x3 and more
# After a "drop" cut heals, connections opened before it may sit behind TCP's retransmission
# backoff until grpc's keepalive gives up on them (10 s + 5 s timeout, gossip/transport.py),
# then anti-entropy (1 s) and the peer backoff cap (2 s): 18 s, and margin for a loaded box.
HEAL_DEADLINE = 45.0
POLL = 0.1


# -- the cluster --------------------------------------------------------------------------------


def require_netns_cluster() -> None:
    gaps = netns.missing()
    require(not gaps, "a namespaced cluster: " + ", ".join(gaps))
    require_bpf()
    require(importlib.util.find_spec("bcc") is not None,
            "bcc importable (python3-bpfcc linked into the virtualenv, see DESIGN.md)")
    require(Path("/lib/modules", os.uname().release, "build").exists(),
            "kernel headers linked for bcc (tools/setup_system.sh)")


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., netns.Cluster]]:
    require_netns_cluster()
    netns.sweep_stale(PREFIX)
    built: list[netns.Cluster] = []

    def make(nodes: int = NODES, **env: str) -> netns.Cluster:
        cluster = netns.Cluster(
            nodes, prefix=PREFIX, bpffs_root=os.path.join(BPFFS_ROOT, uuid.uuid4().hex),
            log_dir=str(tmp_path / f"logs{len(built)}"), env=env, services=(ZERO, CONTROL),
        )
        built.append(cluster)
        cluster.__enter__()
        return cluster

    try:
        yield make
    finally:
        for cluster in built:
            for node in cluster.nodes:
                print(f"--- {node.name} ({node.netns}) log tail:")
                print(_tail(node.log_path))
            cluster.close()
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)  # only once no other run uses it


def _tail(path: str, lines: int = 20) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return b"".join(handle.readlines()[-lines:]).decode(errors="replace")
    return "(no log)"


async def until(what: str, check: Callable[[], object], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(POLL)


async def enforcing(cluster: netns.Cluster) -> tuple[netns.Node, str]:
    """Waits for a leader whose first snapshot every node holds and for the program on every
    node's pod veth; returns the leader node and its api address."""
    api = [n.api_address for n in cluster.nodes]
    address, reply = await localcluster.find_leader(api, timeout=START_DEADLINE)
    leader = cluster.node(reply.leader_node)
    await localcluster.wait_all(api, what="the leader's first snapshot on every node",
                                timeout=CONVERGE_DEADLINE,
                                check=lambda s: s.leader == leader.name)
    for node in cluster.nodes:
        await until(f"the XDP program on {node.name}'s {node.veth}",
                    lambda node=node: _attached(node), timeout=START_DEADLINE)
    return leader, address


async def get_dataplane(node: netns.Node) -> dataplane_pb2.GetDataPlaneResponse:
    async with grpc.aio.insecure_channel(node.api_address) as channel:
        stub = dataplane_pb2_grpc.DataPlaneStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.GetDataPlane(dataplane_pb2.GetDataPlaneRequest(), timeout=2)
    assert isinstance(reply, dataplane_pb2.GetDataPlaneResponse)
    return reply


async def _attached(node: netns.Node) -> bool:
    with contextlib.suppress(grpc.aio.AioRpcError):
        reply = await get_dataplane(node)
        return any(i.name == node.veth and i.status in ("attached", "replaced")
                   for i in reply.interfaces)
    return False


async def dropped(node: netns.Node, service: str) -> int:
    """The program's dropped-packet count for `service` on `node`, summed over CPUs."""
    reply = await get_dataplane(node)
    return sum(c.dropped for c in reply.services if c.ip == service)


async def set_service(address: str, ip: str, replicas: int) -> pb.WriteResponse:
    request = pb.SetServiceRequest(ip=ip, replicas=replicas, name=f"e2e/{ip}")
    reply = await localcluster.call(address, "SetService", request, timeout=10)
    assert isinstance(reply, pb.WriteResponse)
    return reply


def key(ip: str) -> int:
    return snapshots.parse_ip(ip)


async def tables_are(cluster: netns.Cluster, expected: dict[int, int], *, what: str,
                     nodes: Sequence[netns.Node] | None = None,
                     timeout: float = CONVERGE_DEADLINE) -> None:
    """Waits until the kernel's map on each node holds exactly `expected`."""
    targets = list(nodes) if nodes is not None else cluster.nodes
    await until(what, lambda: all(cluster.pinned_table(n) == expected for n in targets),
                timeout=timeout)


def probe(cluster: netns.Cluster, node: netns.Node, *, count: int = PROBES) -> int:
    """Sends `count` datagrams from node's pod to ZERO, then `count` to CONTROL; once every
    control arrived, returns how many probes got through the node's XDP program."""
    listener = cluster.listener(node, port=PORT)
    try:
        cluster.send_from_pod(node, ZERO, port=PORT, count=count)
        cluster.send_from_pod(node, CONTROL, port=PORT, count=count)
        deadline = time.monotonic() + 10
        while listener.drain()[CONTROL] < count:
            if time.monotonic() > deadline:
                pytest.fail(f"control packets from {node.name}'s pod did not all arrive: "
                            f"{listener.counts}")
            time.sleep(0.02)
        return listener.drain()[ZERO]
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def watching(address: str) -> AsyncIterator[scale_tests.Watch]:
    watch = scale_tests.Watch(address)
    try:
        await watch.registered()
        yield watch
    finally:
        await watch.close()


async def zero_everywhere(
    make_cluster: Callable[..., netns.Cluster],
) -> tuple[netns.Cluster, str, netns.Node]:
    """A started cluster enforcing ZERO=0 on every node; returns it, the leader's api address
    and a follower (the node the test will hurt; the leader is the only other node named
    by GetState's leader)."""
    cluster = make_cluster()
    cluster.start()
    leader, leader_api = await enforcing(cluster)
    await set_service(leader_api, ZERO, 0)
    await tables_are(cluster, {key(ZERO): 0}, what=f"{ZERO}=0 everywhere")
    return cluster, leader_api, next(n for n in cluster.nodes if n is not leader)


# -- the tests ----------------------------------------------------------------------------------


async def test_a_service_at_zero_is_dropped_on_every_node_and_requests_reach_the_leader_then_two_passes(  # noqa: E501
    make_cluster: Callable[..., netns.Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start()
    leader, leader_api = await enforcing(cluster)
    for node in cluster.nodes:  # not in the table yet: the program passes it
        assert probe(cluster, node) == PROBES, f"{node.name} dropped an unlisted service"

    await set_service(leader_api, ZERO, 0)
    await tables_are(cluster, {key(ZERO): 0}, what=f"{ZERO}=0 in every node's map")
    async with watching(leader_api) as watch:
        for node in cluster.nodes:
            assert probe(cluster, node) == 0, f"{node.name} let a packet to a service at 0 pass"
            assert await dropped(node, ZERO) == PROBES  # the program's own count agrees
        everyone = {n.name for n in cluster.nodes}
        await until("a scale-up request from every node at the leader",
                    lambda: watch.nodes(ZERO) == everyone, timeout=CONVERGE_DEADLINE)
    via = {r.node: r.via for r in watch.received}
    assert via[leader.name] == "local"
    assert all(via[n] == "report" for n in everyone - {leader.name})
    assert {r.source_ip for r in watch.received if r.node != leader.name} <= {
        n.pod_ip for n in cluster.nodes}

    await set_service(leader_api, ZERO, 2)
    await tables_are(cluster, {key(ZERO): 2}, what=f"{ZERO}=2 in every node's map")
    for node in cluster.nodes:
        assert probe(cluster, node) == PROBES, f"{node.name} dropped a service at 2 replicas"


async def test_a_sigkilled_agent_keeps_enforcing_and_its_restart_neither_regresses_nor_blanks(
    make_cluster: Callable[..., netns.Cluster],
) -> None:
    cluster, leader_api, victim = await zero_everywhere(make_cluster)
    before = {key(ZERO): 0}

    assert cluster.kill_agent(victim, signal.SIGKILL) == -signal.SIGKILL
    assert probe(cluster, victim) == 0, "the node stopped enforcing when its agent died"
    assert cluster.pinned_table(victim) == before
    await set_service(leader_api, "10.96.0.20", 3)  # a newer version the victim missed
    after = {key(ZERO): 0, key("10.96.0.20"): 3}
    await tables_are(cluster, after, what="the new entry on the live nodes",
                     nodes=[n for n in cluster.nodes if n is not victim])
    assert cluster.pinned_table(victim) == before

    with sampling(lambda: cluster.pinned_table(victim)) as samples:
        cluster.start_agent(victim)
        await tables_are(cluster, after, what="the restarted node catching up", nodes=[victim])
    assert samples, "the map was never sampled during the restart"
    seen = list(samples)
    assert all(s in (before, after) for s in seen), f"unexpected map contents: {seen}"
    first_after = next(i for i, s in enumerate(seen) if s == after) if after in seen else None
    assert first_after is not None
    assert all(s == after for s in seen[first_after:]), "the map went back to the old version"
    assert probe(cluster, victim) == 0


@contextlib.contextmanager
def sampling(read: Callable[[], dict[int, int] | None]) -> Iterator[list[dict[int, int] | None]]:
    """Reads `read()` in a thread as fast as it can while the block runs, and once more after
    it: the block may see the change (its own read) between two of the thread's reads, and the
    samples must end with the state the block ended on."""
    samples: list[dict[int, int] | None] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            samples.append(read())

    thread = threading.Thread(target=loop, name="test.sample-map")
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(read())


@pytest.mark.parametrize("how", ["drop", "down"])
async def test_a_node_cut_off_keeps_enforcing_and_catches_up_when_the_link_returns(
    make_cluster: Callable[..., netns.Cluster], how: str,
) -> None:
    cluster, leader_api, island = await zero_everywhere(make_cluster)
    before = {key(ZERO): 0}

    cluster.cut(island, how=how)
    await set_service(leader_api, "10.96.0.30", 1)
    after = {key(ZERO): 0, key("10.96.0.30"): 1}
    await tables_are(cluster, after, what="the change on the connected nodes",
                     nodes=[n for n in cluster.nodes if n is not island])
    async with watching(leader_api) as watch:
        assert probe(cluster, island) == 0, "the cut-off node stopped enforcing"
        assert cluster.pinned_table(island) == before
        cluster.heal(island)
        await tables_are(cluster, after, what="the healed node catching up", nodes=[island],
                         timeout=HEAL_DEADLINE)
        await until("the healed node's scale-up request at the leader",
                    lambda: island.name in watch.nodes(ZERO), timeout=HEAL_DEADLINE)
    assert probe(cluster, island) == 0


async def test_a_1024_entry_table_is_exactly_every_nodes_map_in_the_kernel(
    make_cluster: Callable[..., netns.Cluster], tmp_path: Path,
) -> None:
    table = {f"10.97.{i // 256}.{i % 256}": i % 5 for i in range(layout.DEFAULT_MAX_ENTRIES)}
    source = tmp_path / "services.json"
    source.write_text(json.dumps(table))
    cluster = make_cluster(SOURCE="file", SOURCE_FILE=str(source))
    cluster.start()
    await enforcing(cluster)
    expected = {key(ip): replicas for ip, replicas in table.items()}
    await tables_are(cluster, expected, what="1024 entries in every node's map")

    changed = {ip: replicas + 1 for ip, replicas in table.items()}  # every entry changes
    source.write_text(json.dumps(changed))
    expected = {key(ip): replicas for ip, replicas in changed.items()}
    await tables_are(cluster, expected, what="the changed 1024 entries in every node's map")
    for node in cluster.nodes:
        assert cluster.pinned_table(node) == expected  # exactly: nothing extra, nothing missing


async def test_scale_up_requests_reach_the_new_leader_after_the_old_one_is_sigkilled(
    make_cluster: Callable[..., netns.Cluster],
) -> None:
    cluster, old_api, _ = await zero_everywhere(make_cluster)
    old = cluster.node(next(
        n.name for n in cluster.nodes if n.api_address == old_api))
    assert cluster.kill_agent(old, signal.SIGKILL) == -signal.SIGKILL
    survivors = [n for n in cluster.nodes if n is not old]
    new_api, reply = await localcluster.find_leader(
        [n.api_address for n in survivors], timeout=START_DEADLINE)
    new = cluster.node(reply.leader_node)
    assert new is not old
    await localcluster.wait_all(
        [n.api_address for n in survivors], what="the new leader's snapshot on the survivors",
        timeout=CONVERGE_DEADLINE, check=lambda s: s.leader == new.name)
    reporter = next(n for n in survivors if n is not new)
    async with watching(new_api) as watch:
        assert probe(cluster, old) == 0, "the old leader's node stopped enforcing"
        assert probe(cluster, reporter) == 0
        await until(f"{reporter.name}'s request at the new leader {new.name}",
                    lambda: reporter.name in watch.nodes(ZERO), timeout=CONVERGE_DEADLINE)
    assert old.name not in watch.nodes(ZERO)  # its agent is dead: nobody reads its events
