"""The gRPC API of real agents in this event loop: grpcurl through reflection, State reads and
writes (forwarding, every refusal code), Gossip/Push and PushStream refusals that change
nothing, push ordering (ADOPTED / STALE / DUPLICATE), WatchState, GetLeader / ListPeers, port
and pin-directory exclusivity, and health during shutdown.

Agents run in-process (gossip_agent.agent.Agent) on loopback ports picked beforehand, with
PROFILE=local timers. Most use DATAPLANE=memory and a flock lease in tmp_path; one cluster runs
on real pinned BPF maps under /sys/fs/bpf/gossip-agent-test/<uuid>. Agents that must never lead
(so that pushed snapshots stay as sent) run next to a lease lock this test holds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gossip_agent import agent as agent_mod
from gossip_agent import config, errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import wire
from gossip_agent.leases import base as lease_base
from gossip_agent.leases import bpffs
from gossip_agent.scaling import inbox
from gossip_agent.security import setup as security_setup
from gossip_agent.system import bpfsys
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import localcluster
from tests.conftest import require

pytestmark = pytest.mark.integration

BPF_TEST_ROOT = "/sys/fs/bpf/gossip-agent-test"
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
# Liveness bounds, about 3x the PROFILE=local timers they wait on: election (LEASE_RETRY 0.2 s
# plus a digest round bounded by RPC_TIMEOUT 1 s), push delivery, anti-entropy (1 s).
ELECTION_DEADLINE = 6.0
CONVERGE_DEADLINE = 4.0
RPC_DEADLINE = 3.0
# A follower learns another follower's version only from an anti-entropy exchange between the
# two: each second, each of them calls one of its 2 peers at random, so a pair misses each other
# in a given second with probability 1/4 (in 10 s: 1e-6). Pushes give the leader no such delay.
PEER_VIEW_DEADLINE = 12.0


# -- agents -------------------------------------------------------------------------------------


def agent_env(
    *, node: str, port: int, peers: list[int], lease_dir: Path | str, **extra: str
) -> dict[str, str]:
    env = {
        "PROFILE": "local",
        "NODE_NAME": node,
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "ADVERTISE_ADDR": f"127.0.0.1:{port}",
        "PEERS": ",".join(f"127.0.0.1:{p}" for p in peers if p != port),
        "DATAPLANE": "memory",
        "BPF_PIN_DIR": f"{lease_dir}/pin-{node}",
        "BPF_LEASE_DIR": str(lease_dir),
        "LOG_LEVEL": "warning",
    }
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def running_agents(
    count: int, *, lease_dir: Path | str, per_agent: Mapping[int, Mapping[str, str]] | None = None,
    ports: list[int] | None = None, reports: inbox.Delegate | None = None, **extra: str,
) -> AsyncIterator[list[agent_mod.Agent]]:
    """`count` started agents listing each other in PEERS; all stopped on the way out.
    `ports`: their gRPC ports, when the caller picked them with others in one batch;
    `reports`: the inbox delegate of each (agent.Agent)."""
    ports = ports or localcluster.free_ports(count)
    agents: list[agent_mod.Agent] = []
    before = asyncio.all_tasks()
    try:
        for index, port in enumerate(ports):
            env = agent_env(node=f"node-{index}", port=port, peers=ports, lease_dir=lease_dir,
                            **extra, **(per_agent or {}).get(index, {}))
            agents.append(agent_mod.Agent(config.from_env(env), reports=reports))
        for agent in agents:
            await agent.start()
        yield agents
    finally:
        await asyncio.gather(*(agent.stop() for agent in agents))
        await settle(before)


async def settle(before: set[asyncio.Task[Any]]) -> None:
    """Waits (bounded) for tasks started since `before` to finish.

    grpc.aio's server.stop() returns once the C core has shut down; the Python tasks of the
    handlers it cancelled finish a few loop turns later. Waiting for them here keeps the
    leaked-task check about real leaks: a task still running after this bound fails the test.
    """
    pending = asyncio.all_tasks() - before - {asyncio.current_task()}
    if pending:
        await asyncio.wait(pending, timeout=2.0)


async def finish_stop(
    agent: agent_mod.Agent, stopping: asyncio.Task[None] | None, before: set[asyncio.Task[Any]]
) -> None:
    """Teardown of a test that may have begun stopping `agent` itself (`stopping`)."""
    if stopping is None:
        await agent.stop()
    elif not stopping.done():
        await stopping
    await settle(before)


def address(agent: agent_mod.Agent) -> str:
    return f"127.0.0.1:{agent.port}"


@contextlib.contextmanager
def lease_held_by_test(lease_dir: Path, *, term: int | None = None) -> Iterator[None]:
    """Holds the agents' lease lock from this test: nobody can lead. `term`: the record also
    names "test-leader" at that term, so the snapshots the test pushes as that leader are
    proven (gossip/proof.py); without it no record is written."""
    fd = bpfsys.lock_directory(os.path.join(lease_dir, bpffs.LOCK_DIR))
    assert fd is not None, f"lease lock in {lease_dir} is already held"
    if term is not None:
        bpffs.store_record(str(lease_dir), lease_base.LeaseRecord(
            "test-leader#test", term, time.time()))
    try:
        yield
    finally:
        os.close(fd)


@pytest.fixture
def bpf_root(bpffs_dir: str) -> str:
    """A fresh bpffs directory for this test, removed (pins and all) afterwards."""
    return bpffs_dir


# -- calls and polling --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def state_stub(target: str) -> AsyncIterator[pb_grpc.StateStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield pb_grpc.StateStub(channel)


async def get_state(target: str) -> pb.GetStateResponse:
    async with state_stub(target) as stub:
        reply: pb.GetStateResponse = await stub.GetState(pb.GetStateRequest(),
                                                         timeout=RPC_DEADLINE)
        return reply


async def set_service(target: str, ip: str, replicas: int, name: str = "") -> pb.WriteResponse:
    async with state_stub(target) as stub:
        reply: pb.WriteResponse = await stub.SetService(
            pb.SetServiceRequest(ip=ip, replicas=replicas, name=name), timeout=RPC_DEADLINE)
        return reply


async def expect_code(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value


async def poll(what: str, check: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_leader(agents: list[agent_mod.Agent]) -> agent_mod.Agent:
    """The agent in office once every agent holds its first snapshot (so knows its address)."""
    leader_address, _ = await localcluster.find_leader(
        [address(a) for a in agents], timeout=ELECTION_DEADLINE)
    leader = next(a for a in agents if address(a) == leader_address)
    await localcluster.wait_all(
        [address(a) for a in agents], what="the leader's first snapshot everywhere",
        timeout=CONVERGE_DEADLINE, check=lambda s: s.leader == leader.cfg.node.name)
    return leader


def entries(state: pb.GetStateResponse) -> dict[str, tuple[int, str]]:
    return {e.ip: (e.replicas, e.name) for e in state.entries}


def fingerprint(state: pb.GetStateResponse) -> tuple[Any, ...]:
    """What must not move when a message is refused: version, content and its hash."""
    return (state.version.term, state.version.seq, state.content_hash, state.leader,
            tuple((e.ip, e.replicas, e.name) for e in state.entries))


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Runs grpcurl without blocking the loop the agents live in."""
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -- raw Gossip calls ---------------------------------------------------------------------------


def snapshot_bytes(
    term: int, seq: int, table: Mapping[int, int], *, leader: str = "test-leader",
    names: Mapping[int, str] | None = None,
) -> bytes:
    snapshot = snapshots.build(
        version=versions.Version(term, seq), leader=leader, leader_address="127.0.0.1:1",
        entries=table, names=names or {})
    return wire.snapshot_to_pb(snapshot).SerializeToString()


def ip(text: str) -> int:
    return snapshots.parse_ip(text)


async def push_raw(target: str, payload: bytes) -> pb.PushAck:
    async with grpc.aio.insecure_channel(target) as channel:
        push = channel.unary_unary("/gossip_agent.v1.Gossip/Push", request_serializer=None,
                                   response_deserializer=pb.PushAck.FromString)
        ack: pb.PushAck = await push(payload, timeout=RPC_DEADLINE)
        return ack


# -- 1. grpcurl ---------------------------------------------------------------------------------


@pytest.fixture
def _grpcurl_installed() -> None:
    require(os.access(GRPCURL, os.X_OK), f"grpcurl (looked on PATH and at {GRPCURL})")


@pytest.mark.usefixtures("_grpcurl_installed")
async def test_grpcurl_lists_describes_and_calls_every_service_through_reflection(
    tmp_path: Path,
) -> None:
    async with running_agents(1, lease_dir=tmp_path) as (agent,):
        await wait_for_leader([agent])
        target = address(agent)

        code, out, err = await grpcurl("-plaintext", target, "list")
        assert code == 0, err
        assert set(out.split()) >= {
            "gossip_agent.v1.Gossip", "gossip_agent.v1.State", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }

        code, out, err = await grpcurl("-plaintext", target, "describe", "gossip_agent.v1.State")
        assert code == 0, err
        for rpc in ("GetState", "ListPeers", "GetLeader", "WatchState", "SetService",
                    "DeleteService"):
            assert f"rpc {rpc}" in out, out

        code, out, err = await grpcurl("-plaintext", target, "grpc.health.v1.Health/Check")
        assert code == 0, err
        assert json.loads(out) == {"status": "SERVING"}

        code, out, err = await grpcurl(
            "-plaintext", "-d", '{"ip":"10.96.0.10","replicas":0}', target,
            "gossip_agent.v1.State/SetService")
        assert code == 0, err
        written = json.loads(out)
        assert written["leader"] == "node-0"

        code, out, err = await grpcurl("-plaintext", target, "gossip_agent.v1.State/GetState")
        assert code == 0, err
        state = json.loads(out)
        assert state["node"] == "node-0"
        assert state["version"] == written["version"]
        # proto3 JSON leaves out zero values: replicas 0 is an absent field.
        assert state["entries"] == [{"ip": "10.96.0.10"}]


# -- 2. State writes ----------------------------------------------------------------------------


async def test_writes_on_followers_are_forwarded_to_the_leader_and_converge_everywhere(
    tmp_path: Path,
) -> None:
    async with running_agents(3, lease_dir=tmp_path) as agents:
        leader = await wait_for_leader(agents)
        follower = next(a for a in agents if a is not leader)
        targets = [address(a) for a in agents]

        written = await set_service(address(follower), "10.96.0.20", 3, "ns/web")
        assert written.leader == leader.cfg.node.name
        assert written.acked_peers >= 1
        await localcluster.wait_all(
            targets, what="10.96.0.20 on every agent", timeout=CONVERGE_DEADLINE,
            check=lambda s: entries(s) == {"10.96.0.20": (3, "ns/web")}
            and (s.version.term, s.version.seq) == (written.version.term, written.version.seq))

        async with state_stub(address(follower)) as stub:
            deleted = await stub.DeleteService(pb.DeleteServiceRequest(ip="10.96.0.20"),
                                               timeout=RPC_DEADLINE)
        assert (deleted.version.term, deleted.version.seq) > (
            written.version.term, written.version.seq)
        await localcluster.wait_all(
            targets, what="10.96.0.20 gone from every agent", timeout=CONVERGE_DEADLINE,
            check=lambda s: not s.entries and s.version.seq == deleted.version.seq)


async def test_write_with_the_lease_lock_held_by_nobody_known_is_unavailable(
    tmp_path: Path,
) -> None:
    with lease_held_by_test(tmp_path):
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            error = await expect_code(set_service(address(agent), "10.96.0.10", 1),
                                      grpc.StatusCode.UNAVAILABLE)
            assert "no leader is elected yet" in (error.details() or "")
            assert not (await get_state(address(agent))).entries


async def test_write_while_a_holder_without_an_address_leads_is_unavailable_naming_it(
    tmp_path: Path,
) -> None:
    outsider = bpffs.BpffsLease(lease_dir=str(tmp_path), node="outsider")
    assert await outsider.try_acquire(min_term=1) is not None
    try:
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            error = await expect_code(set_service(address(agent), "10.96.0.10", 1),
                                      grpc.StatusCode.UNAVAILABLE)
            assert "leader is outsider" in (error.details() or ""), error.details()
    finally:
        await outsider.close()


async def test_write_to_a_leader_whose_source_is_a_file_fails_precondition(
    tmp_path: Path,
) -> None:
    services = tmp_path / "services.yaml"
    services.write_text("10.96.0.30: 2\n")
    async with running_agents(1, lease_dir=tmp_path, SOURCE="file",
                              SOURCE_FILE=str(services)) as (agent,):
        await wait_for_leader([agent])
        await poll("the file's service published",
                   lambda: _has_entry(address(agent), "10.96.0.30"), timeout=CONVERGE_DEADLINE)
        error = await expect_code(set_service(address(agent), "10.96.0.10", 1),
                                  grpc.StatusCode.FAILED_PRECONDITION)
        assert "file" in (error.details() or "")
        assert entries(await get_state(address(agent))) == {"10.96.0.30": (2, "")}


async def _has_entry(target: str, ip_text: str) -> bool:
    return ip_text in entries(await get_state(target))


@pytest.mark.parametrize("bad_ip", ["10.96.0", "not-an-ip", "::1", ""])
async def test_write_with_a_bad_ip_is_invalid_argument(tmp_path: Path, bad_ip: str) -> None:
    async with running_agents(1, lease_dir=tmp_path) as (agent,):
        await wait_for_leader([agent])
        before = await get_state(address(agent))
        error = await expect_code(set_service(address(agent), bad_ip, 1),
                                  grpc.StatusCode.INVALID_ARGUMENT)
        assert "IPv4" in (error.details() or "")
        async with state_stub(address(agent)) as stub:
            await expect_code(stub.DeleteService(pb.DeleteServiceRequest(ip=bad_ip),
                                                 timeout=RPC_DEADLINE),
                              grpc.StatusCode.INVALID_ARGUMENT)
        assert fingerprint(await get_state(address(agent))) == fingerprint(before)


async def test_write_beyond_map_capacity_is_resource_exhausted_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with running_agents(1, lease_dir=tmp_path, MAP_MAX_ENTRIES="2") as (agent,):
        await wait_for_leader([agent])
        await set_service(address(agent), "10.96.0.1", 1)
        await set_service(address(agent), "10.96.0.2", 2)
        full = await get_state(address(agent))
        assert full.map_max_entries == 2 and len(full.entries) == 2

        error = await expect_code(set_service(address(agent), "10.96.0.3", 3),
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "full" in (error.details() or "")
        assert fingerprint(await get_state(address(agent))) == fingerprint(full)
        # Updating a service already in the full map still works.
        await set_service(address(agent), "10.96.0.2", 5)
        assert entries(await get_state(address(agent)))["10.96.0.2"] == (5, "")


# -- 3. Gossip refusals -------------------------------------------------------------------------


async def test_pushes_that_break_the_contract_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    with lease_held_by_test(tmp_path, term=5):
        async with running_agents(1, lease_dir=tmp_path, MAP_MAX_ENTRIES="2",
                                  MAX_MESSAGE_BYTES="4096") as (agent,):
            target = address(agent)
            base = {ip("10.96.0.1"): 1}
            ack = await push_raw(target, snapshot_bytes(5, 1, base))
            assert ack.result == pb.PushAck.ADOPTED
            before = await get_state(target)
            assert entries(before) == {"10.96.0.1": (1, "")}

            too_many = {ip(f"10.96.0.{n}"): n for n in range(1, 4)}
            good = wire.snapshot_to_pb(snapshots.build(
                version=versions.Version(5, 2), leader="test-leader", leader_address="",
                entries={ip("10.96.0.1"): 1, ip("10.96.0.2"): 2}, names={}))
            bad_hash = pb.Snapshot()
            bad_hash.CopyFrom(good)
            bad_hash.content_hash = bytes(32)
            unsorted = pb.Snapshot()
            unsorted.CopyFrom(good)
            unsorted.table = good.table[8:] + good.table[:8]
            unsorted.content_hash = snapshots.content_hash(unsorted.table)
            ragged = pb.Snapshot()
            ragged.CopyFrom(good)
            ragged.table = good.table[:-1]
            ragged.content_hash = snapshots.content_hash(ragged.table)

            refusals: list[tuple[str, bytes, grpc.StatusCode]] = [
                ("garbage", b"\xff\x00garbage\x13\x37", grpc.StatusCode.INVALID_ARGUMENT),
                ("more entries than the map holds", snapshot_bytes(5, 2, too_many),
                 grpc.StatusCode.RESOURCE_EXHAUSTED),
                ("over MAX_MESSAGE_BYTES", _padded(good, 10_000),
                 grpc.StatusCode.RESOURCE_EXHAUSTED),
                ("bad content hash", bad_hash.SerializeToString(),
                 grpc.StatusCode.INVALID_ARGUMENT),
                ("unsorted table", unsorted.SerializeToString(),
                 grpc.StatusCode.INVALID_ARGUMENT),
                ("table not a multiple of 8 bytes", ragged.SerializeToString(),
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]
            for what, payload, code in refusals:
                error = await expect_code(push_raw(target, payload), code)
                assert error.details(), f"{what}: refusal without a message"
                after = await get_state(target)
                assert fingerprint(after) == fingerprint(before), f"{what} changed the state"

            # The same snapshot, intact, is adopted: the refusals were about the defects.
            assert (await push_raw(target, good.SerializeToString())).result == \
                pb.PushAck.ADOPTED


def _padded(snapshot: pb.Snapshot, size: int) -> bytes:
    """The snapshot grown to about `size` bytes with long names (valid apart from its size)."""
    padded = pb.Snapshot()
    padded.CopyFrom(snapshot)
    padded.names[:] = ["n" * 250] * 2
    padded.leader = "l" * (size - padded.ByteSize())
    payload = padded.SerializeToString()
    assert len(payload) >= size - 16
    return payload


async def test_push_stream_refuses_a_malformed_message_with_invalid_argument(
    tmp_path: Path,
) -> None:
    with lease_held_by_test(tmp_path, term=3):
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            target = address(agent)
            before = await get_state(target)
            async with grpc.aio.insecure_channel(target) as channel:
                stream = channel.stream_stream(
                    "/gossip_agent.v1.Gossip/PushStream", request_serializer=None,
                    response_deserializer=pb.PushAck.FromString)
                call = stream(timeout=RPC_DEADLINE)
                # A good snapshot first, so the refusal is about the message, not the stream.
                await call.write(snapshot_bytes(3, 1, {ip("10.96.0.7"): 7}))
                await poll("the streamed snapshot adopted",
                           lambda: _has_entry(target, "10.96.0.7"), timeout=RPC_DEADLINE)
                adopted = await get_state(target)
                await call.write(b"\xff\xfe not a snapshot")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    while True:  # acks the good snapshot may have asked for, then the refusal
                        reply = await call.read()
                        assert isinstance(reply, pb.PushAck), "stream ended without a status"
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "does not parse" in (info.value.details() or "")
            assert fingerprint(await get_state(target)) == fingerprint(adopted)
            assert fingerprint(adopted) != fingerprint(before)


# -- 4. push ordering ---------------------------------------------------------------------------


async def test_push_adopts_newer_refuses_older_as_stale_and_acks_repeats_as_duplicate(
    tmp_path: Path,
) -> None:
    with lease_held_by_test(tmp_path, term=4):
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            target = address(agent)
            newer = snapshot_bytes(4, 2, {ip("10.96.0.5"): 5}, names={ip("10.96.0.5"): "a/b"})

            ack = await push_raw(target, newer)
            assert ack.result == pb.PushAck.ADOPTED
            assert (ack.held.term, ack.held.seq) == (4, 2)
            assert ack.node == "node-0"
            state = await get_state(target)
            assert (state.version.term, state.version.seq) == (4, 2)
            assert state.leader == "test-leader"
            assert entries(state) == {"10.96.0.5": (5, "a/b")}

            older = await push_raw(target, snapshot_bytes(4, 1, {ip("10.96.0.6"): 6}))
            assert older.result == pb.PushAck.STALE
            assert (older.held.term, older.held.seq) == (4, 2)
            assert older.held_hash == bytes.fromhex(state.content_hash)

            again = await push_raw(target, newer)
            assert again.result == pb.PushAck.DUPLICATE
            assert (again.held.term, again.held.seq) == (4, 2)
            assert fingerprint(await get_state(target)) == fingerprint(state)


# -- 5. WatchState ------------------------------------------------------------------------------


async def test_watch_state_streams_the_current_version_then_each_adopted_one(
    tmp_path: Path,
) -> None:
    with lease_held_by_test(tmp_path, term=2):
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            target = address(agent)
            await push_raw(target, snapshot_bytes(2, 1, {ip("10.96.0.1"): 1}))
            async with state_stub(target) as stub:
                watch = stub.WatchState(pb.WatchStateRequest(), timeout=10 * RPC_DEADLINE)
                seen: list[tuple[int, int]] = []

                async def next_event() -> pb.StateEvent:
                    async with asyncio.timeout(RPC_DEADLINE):
                        event: pb.StateEvent = await watch.read()
                    seen.append((event.version.term, event.version.seq))
                    return event

                current = await next_event()
                assert seen == [(2, 1)]
                assert current.node == "node-0" and current.entry_count == 1

                for seq in (2, 3):
                    table = {ip(f"10.96.0.{n}"): n for n in range(1, seq + 1)}
                    await push_raw(target, snapshot_bytes(2, seq, table))
                    event = await next_event()
                    assert event.entry_count == seq
                assert seen == [(2, 1), (2, 2), (2, 3)]

                # Two adoptions in a row: a reader may skip the first but must get the newest.
                await push_raw(target, snapshot_bytes(2, 4, {ip("10.96.0.4"): 4}))
                await push_raw(target, snapshot_bytes(2, 5, {ip("10.96.0.5"): 5}))
                while seen[-1] != (2, 5):
                    await next_event()
                watch.cancel()


async def test_watch_state_never_misses_an_adoption_made_while_it_sends(tmp_path: Path) -> None:
    """Adoptions land at every point of the stream's send cycle (0..6 loop turns after the
    previous one); each time the newest version must arrive. A wake-up lost while the handler
    was suspended at `yield` would leave the watcher one version behind until the next one."""
    with lease_held_by_test(tmp_path):
        async with running_agents(1, lease_dir=tmp_path) as (agent,):
            async with state_stub(address(agent)) as stub:
                watch = stub.WatchState(pb.WatchStateRequest(), timeout=30 * RPC_DEADLINE)
                for seq in range(1, 151):
                    # Adopted in this loop, not over the network, to hit the send window.
                    agent.engine.receive(wire.snapshot_from_pb(pb.Snapshot.FromString(
                        snapshot_bytes(1, seq, {ip("10.96.1.1"): seq}))), via="test")
                    for _ in range(seq % 7):
                        await asyncio.sleep(0)
                    try:
                        async with asyncio.timeout(RPC_DEADLINE):
                            while (await watch.read()).version.seq != seq:
                                pass
                    except TimeoutError:
                        pytest.fail(f"WatchState did not deliver version 1.{seq}")
                watch.cancel()


# -- 6. GetLeader and ListPeers -----------------------------------------------------------------


async def test_get_leader_and_list_peers_agree_on_leader_and_followers(tmp_path: Path) -> None:
    async with running_agents(3, lease_dir=tmp_path) as agents:
        leader = await wait_for_leader(agents)
        answers = {}
        for agent in agents:
            async with state_stub(address(agent)) as stub:
                answers[agent.cfg.node.name] = await stub.GetLeader(
                    pb.GetLeaderRequest(), timeout=RPC_DEADLINE)
        for name, answer in answers.items():
            assert answer.backend == "bpffs"
            assert answer.holder.startswith(f"{leader.cfg.node.name}#"), answer
            assert answer.leader_node == leader.cfg.node.name
            assert answer.leader_address == address(leader)
            assert answer.is_self == (name == leader.cfg.node.name)
            assert "ordinary directory" in answer.note
        assert len({a.term for a in answers.values()}) == 1
        assert answers[leader.cfg.node.name].term >= 1

        version = (await get_state(address(leader))).version
        for agent in agents:
            others = {address(a): a.cfg.node.name for a in agents if a is not agent}

            async def all_alive(agent: agent_mod.Agent = agent,
                                others: dict[str, str] = others) -> bool:
                async with state_stub(address(agent)) as stub:
                    reply = await stub.ListPeers(pb.ListPeersRequest(), timeout=RPC_DEADLINE)
                peers = {p.address: p for p in reply.peers}
                return set(peers) == set(others) and all(
                    p.state == "alive" and p.node == others[a] and p.origin == "static"
                    and p.last_contact_ms_ago >= 0 and p.consecutive_failures == 0
                    and (p.version_known.term, p.version_known.seq) >= (version.term, version.seq)
                    for a, p in peers.items())

            await poll(f"{agent.cfg.node.name} to see its peers alive at {version}", all_alive,
                       timeout=PEER_VIEW_DEADLINE)


# -- BPF data plane -----------------------------------------------------------------------------


async def test_cluster_on_pinned_bpf_maps_serves_writes_from_its_maps(bpf_root: str) -> None:
    lease_dir = f"{bpf_root}/lease"
    per_agent = {i: {"BPF_PIN_DIR": f"{bpf_root}/node-{i}"} for i in range(2)}
    async with running_agents(2, lease_dir=lease_dir, per_agent=per_agent,
                              DATAPLANE="bpf") as agents:
        leader = await wait_for_leader(agents)
        follower = next(a for a in agents if a is not leader)
        written = await set_service(address(follower), "10.96.0.40", 4, "ns/bpf")
        await localcluster.wait_all(
            [address(a) for a in agents], what="10.96.0.40 in every pinned map",
            timeout=CONVERGE_DEADLINE,
            check=lambda s: entries(s) == {"10.96.0.40": (4, "ns/bpf")})
        for index, agent in enumerate(agents):
            state = await get_state(address(agent))
            assert state.dataplane == "bpf"
            assert state.map_path == f"{bpf_root}/node-{index}/SERVICE_LIST"
            assert agent.dataplane.read() == {ip("10.96.0.40"): 4}
            assert (state.version.term, state.version.seq) == (
                written.version.term, written.version.seq)
        async with state_stub(address(leader)) as stub:
            lease = await stub.GetLeader(pb.GetLeaderRequest(), timeout=RPC_DEADLINE)
        # No lease warning on real bpffs; only the plaintext announcement (no TLS here).
        assert lease.backend == "bpffs" and lease.is_self
        assert lease.note == security_setup.PLAINTEXT_NOTE


# -- 7. exclusivity -----------------------------------------------------------------------------


async def test_second_agent_on_the_same_listen_addr_fails_naming_it(tmp_path: Path) -> None:
    async with running_agents(1, lease_dir=tmp_path) as (first,):
        env = agent_env(node="node-1", port=first.port, peers=[], lease_dir=tmp_path)
        with pytest.raises(OSError, match=f"LISTEN_ADDR 127.0.0.1:{first.port}"):
            agent_mod.Agent(config.from_env(env))
        # The first agent still answers.
        assert (await get_state(address(first))).node == "node-0"


async def test_second_agent_on_the_same_pin_dir_fails_with_pin_dir_in_use(bpf_root: str) -> None:
    pin_dir = f"{bpf_root}/shared"
    per_agent = {0: {"BPF_PIN_DIR": pin_dir}}
    async with running_agents(1, lease_dir=f"{bpf_root}/lease", per_agent=per_agent,
                              DATAPLANE="bpf") as (first,):
        port, = localcluster.free_ports(1)
        env = agent_env(node="node-1", port=port, peers=[], lease_dir=f"{bpf_root}/lease",
                        DATAPLANE="bpf", BPF_PIN_DIR=pin_dir)
        with pytest.raises(errors.PinDirInUse, match=pin_dir):
            agent_mod.Agent(config.from_env(env))
        assert (await get_state(address(first))).dataplane == "bpf"


# -- 8. health during shutdown ------------------------------------------------------------------


async def test_health_turns_not_serving_when_stop_begins_then_the_server_goes(
    tmp_path: Path,
) -> None:
    before = asyncio.all_tasks()
    ports = localcluster.free_ports(1)
    agent = agent_mod.Agent(config.from_env(
        agent_env(node="node-0", port=ports[0], peers=[], lease_dir=tmp_path)))
    stopping: asyncio.Task[None] | None = None
    try:
        await agent.start()
        async with grpc.aio.insecure_channel(address(agent)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_DEADLINE)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10 * RPC_DEADLINE)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            stopping = asyncio.create_task(agent.stop(), name="test.agent-stop")
            async with asyncio.timeout(RPC_DEADLINE):
                update = await watch.read()
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # else the server waits out its grace period for this stream
            await stopping

            await expect_code(
                health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_DEADLINE),
                grpc.StatusCode.UNAVAILABLE)
    finally:
        await finish_stop(agent, stopping, before)


async def test_bpffs_agents_that_see_a_peer_on_another_host_refuse_to_lead(bpf_root: str) -> None:
    ports = localcluster.free_ports(2)
    agents = [agent_mod.Agent(config.from_env(agent_env(
        node=f"node-{i}", port=port, peers=ports, lease_dir=bpf_root))) for i, port in
        enumerate(ports)]
    agents[1].engine.boot_id = "0e6f1d2c-another-host"  # as if it ran on a second machine
    before = asyncio.all_tasks()
    try:
        for agent in agents:
            await agent.start()
        for agent in agents:
            await poll(f"{agent.cfg.node.name} to refuse to lead", lambda a=agent: _refuses(a),
                       timeout=10)
        for agent in agents:
            async with state_stub(address(agent)) as stub:
                leader = await stub.GetLeader(pb.GetLeaderRequest(), timeout=5)
            assert not leader.is_self and "another host" in leader.refusal
            await poll("health gossip_agent.v1.Lease NOT_SERVING",
                       lambda a=agent: _lease_health_is(a, NOT_SERVING), timeout=5)
        assert not any(agent.leadership.holds_lease for agent in agents)
    finally:
        await asyncio.gather(*(agent.stop() for agent in agents))
        await settle(before)


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _lease_health_is(agent: agent_mod.Agent, status: int) -> bool:
    async with grpc.aio.insecure_channel(address(agent)) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gossip_agent.v1.Lease"), timeout=5)
    return bool(health.status == status)


async def _refuses(agent: agent_mod.Agent) -> bool:
    return bool(agent.leadership.refusal) and not agent.leadership.holds_lease
