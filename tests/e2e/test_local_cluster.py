"""End to end: real agent processes on loopback, real pinned BPF maps, the real bpffs lease.

Every test runs lab.localcluster agents (PROFILE=local, DATAPLANE=bpf: no silent fallback
to memory maps) with their pins and their lease under /sys/fs/bpf/gossip-agent-e2e/<uuid>/,
removed in teardown. Every process is stopped in teardown whatever happened (SIGTERM, SIGKILL
after a grace period, and a last sweep for any process that still names this test's directory
in its environment, e.g. agents orphaned by a killed tools/local_cluster.py).

The maps are read independently of the agents: straight from the pins with bpf() (through
gossip_agent.system.bpfsys: lookups only, never a write) or with bpftool.

Deadlines are liveness bounds with a generous margin for a 2-core machine running several Python
processes; safety (versions never go backwards, a broken source changes nothing, a map never goes
blank) is asserted strictly on every sample. The one timing assertion that is a requirement, not
a liveness bound, is the leader failover (< 2 s with PROFILE=local's LEASE_RETRY_INTERVAL=0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from gossip_agent import agent as agent_mod
from gossip_agent.dataplane import bpfmap, layout
from gossip_agent.leases import bpffs
from gossip_agent.system import bpfsys
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import localcluster, netns
from tests.conftest import require

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
E2E_ROOT = "/sys/fs/bpf/gossip-agent-e2e"
TABLE_SPEC = layout.service_list_spec(layout.DEFAULT_MAX_ENTRIES)  # MAP_MAX_ENTRIES default
META_KEY = struct.pack("=I", layout.META_KEY)
LEASE_KEY = struct.pack("=I", 0)
POLL = 0.05  # seconds between polls: cheap for the agents, far below every bound
FAILOVER_BOUND = 2.0  # seconds from SIGKILL of the leader to a new holder at a higher term
# A clean stop may use the whole server grace period (a peer's push stream stays open until
# then); the rest is margin for a loaded 2-core machine.
STOP_BOUND = agent_mod.SHUTDOWN_GRACE_SECONDS + 5.0
# The persistent test channels retry quickly after an agent restarts (gRPC's default reconnect
# backoff starts at 1 s and grows, which would hide a restarted agent for seconds).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]

Version = tuple[int, int]  # (term, seq), ordered as the agents order versions
Agent = localcluster.AgentProcess


# --- requirements and teardown ----------------------------------------------------------------


def require_bpf() -> None:
    require(localcluster.bpffs_mounted(), "bpffs mounted at /sys/fs/bpf (mount -t bpf bpf ...)")
    require(importlib.util.find_spec("bcc") is not None,
            "bcc importable (python3-bpfcc linked into the virtualenv, see DESIGN.md)")
    ok, why = bpfmap.bpf_available()
    require(ok, f"bpf() map creation on bpffs: {why}")


def kill_stragglers(root: str) -> None:
    """SIGKILLs every process whose environment names this test's unique lease directory: only
    agents this test started (directly or through tools/local_cluster.py) can match."""
    for pid in agent_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def log_tail(path: str, lines: int = 25) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return b"".join(handle.readlines()[-lines:]).decode(errors="replace")
    return "(no log)"


def stop_cluster(cluster: localcluster.LocalCluster) -> None:
    """SIGTERM every agent, SIGKILL what has not exited 5 s later; print logs (shown on failure)."""
    for agent in cluster.agents:
        agent.signal(signal.SIGTERM)
    for agent in cluster.agents:
        agent.wait(5.0)  # kills (SIGKILL) and reaps after the timeout
    for agent in cluster.agents:
        code = agent.process.returncode if agent.process is not None else None
        print(f"--- {agent.node} {agent.address} exit {code}, {agent.log_path}:")
        print(log_tail(agent.log_path))


@pytest.fixture
def e2e_root() -> Iterator[str]:
    require_bpf()
    root = os.path.join(E2E_ROOT, uuid.uuid4().hex)
    os.makedirs(root)
    try:
        yield root
    finally:
        kill_stragglers(root)
        shutil.rmtree(root, ignore_errors=True)  # pins unlink like files
        with contextlib.suppress(OSError):
            os.rmdir(E2E_ROOT)  # only once no other run uses it


@pytest.fixture
def start_cluster(
    e2e_root: str, tmp_path: Path
) -> Iterator[Callable[..., localcluster.LocalCluster]]:
    clusters: list[localcluster.LocalCluster] = []

    def start(nodes: int, extra_env: Mapping[str, str] | None = None) -> localcluster.LocalCluster:
        cluster = localcluster.LocalCluster(
            nodes, root=e2e_root, log_dir=str(tmp_path / "logs"),
            extra_env={"DATAPLANE": "bpf", **(extra_env or {})},
        )
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            stop_cluster(cluster)


# --- talking to agents ------------------------------------------------------------------------


class Clients:
    """One long-lived channel per agent address, so polling costs the agents little."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> pb_grpc.StateStub:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return pb_grpc.StateStub(self._channels[address])  # type: ignore[no-untyped-call]

    async def get_state(self, address: str, timeout: float = 1.0) -> pb.GetStateResponse | None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await self.stub(address).GetState(pb.GetStateRequest(), timeout=timeout)
            assert isinstance(reply, pb.GetStateResponse)
            return reply
        return None

    async def get_leader(self, address: str, timeout: float = 1.0) -> pb.GetLeaderResponse | None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await self.stub(address).GetLeader(pb.GetLeaderRequest(), timeout=timeout)
            assert isinstance(reply, pb.GetLeaderResponse)
            return reply
        return None

    async def set_service(self, address: str, ip: str, replicas: int) -> pb.WriteResponse:
        """SetService, retried while the agent answers UNAVAILABLE (a leader taking office)."""
        deadline = time.monotonic() + 15.0
        request = pb.SetServiceRequest(ip=ip, replicas=replicas, name=f"e2e/{ip}")
        while True:
            try:
                reply = await self.stub(address).SetService(request, timeout=5.0)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL)
                continue
            assert isinstance(reply, pb.WriteResponse)
            return reply

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[Clients]:
    channels = Clients()
    try:
        yield channels
    finally:
        await channels.close()


def version(message: pb.Version) -> Version:
    return (message.term, message.seq)


def key(ip: str) -> int:
    """The map key, computed independently of the agent: the IPv4 as a host-order integer."""
    return int(ipaddress.IPv4Address(ip))


def show(table: Mapping[int, int]) -> dict[str, int]:
    return {str(ipaddress.IPv4Address(k)): v for k, v in sorted(table.items())}


def agent_at(cluster: localcluster.LocalCluster, address: str) -> Agent:
    return next(a for a in cluster.agents if a.address == address)


# --- reading the pins, independently of the agents --------------------------------------------


def pin_table(pin_dir: str) -> dict[int, int]:
    """<pin_dir>/SERVICE_LIST as the XDP program sees it."""
    path = os.path.join(pin_dir, layout.SERVICE_LIST)
    pinned = bpfsys.PinnedMap.open_existing(path, TABLE_SPEC)
    assert pinned is not None, f"nothing is pinned at {path}: the data plane went blank"
    try:
        return pinned.items_u32()
    finally:
        pinned.close()


def pin_version(pin_dir: str) -> Version:
    """The version in <pin_dir>/SERVICE_LIST_META.

    An array map's value is copied without a lock, so a read racing the agent's write could mix
    two records: read until two reads agree.
    """
    path = os.path.join(pin_dir, layout.SERVICE_LIST_META)
    pinned = bpfsys.PinnedMap.open_existing(path, layout.META_SPEC)
    assert pinned is not None, f"nothing is pinned at {path}"
    try:
        raw = pinned.lookup(META_KEY)
        for _ in range(10):
            again = pinned.lookup(META_KEY)
            if again == raw:
                break
            raw = again
    finally:
        pinned.close()
    assert raw is not None, f"{path} has no record at key {layout.META_KEY}"
    held, _hash = bpfmap.decode_meta(raw, path=path)
    return (held.term, held.seq)


def pinned_lease(root: str) -> tuple[str, int]:
    """(holder's node, term) from the lease record pinned at <root>/LEADER."""
    path = os.path.join(root, bpffs.RECORD_MAP)
    pinned = bpfsys.PinnedMap.open_existing(path, bpffs.RECORD_SPEC)
    assert pinned is not None, f"no lease record is pinned at {path}"
    try:
        raw = pinned.lookup(LEASE_KEY)
    finally:
        pinned.close()
    record = bpffs.decode_record(raw) if raw is not None else None
    return ("", 0) if record is None else (record.node, record.term)


def bpftool_table(path: str) -> dict[int, int]:
    """SERVICE_LIST as a third party (bpftool) reads it."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, f"bpftool map dump pinned {path} failed: {out.stderr}"

    def u32(hex_bytes: list[str]) -> int:
        return int.from_bytes(bytes(int(b, 16) for b in hex_bytes), sys.byteorder)

    return {u32(item["key"]): u32(item["value"]) for item in json.loads(out.stdout)}


# --- polling ----------------------------------------------------------------------------------


async def until(
    what: str,
    probe: Callable[[], Any],
    *,
    timeout: float,
    interval: float = POLL,
    running: Sequence[Agent] = (),
) -> Any:
    """Polls probe() -> (done, seen) until done; fails naming `what` and the last thing seen.
    An agent of `running` that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        done, seen = await result if inspect.isawaitable(result) else result
        if done:
            return seen
        for agent in running:
            if not agent.running:
                code = agent.process.returncode if agent.process else None
                pytest.fail(f"{agent.node} exited ({code}) while waiting for {what}:\n"
                            f"{log_tail(agent.log_path)}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last seen: {seen!r}")
        await asyncio.sleep(interval)


async def wait_exit(agent: Agent, timeout: float) -> int:
    """The agent's exit code, polled without blocking the event loop."""
    assert agent.process is not None
    process = agent.process

    def exited() -> tuple[bool, int | None]:
        return process.poll() is not None, process.returncode

    code = await until(f"{agent.node} to exit", exited, timeout=timeout, interval=0.01)
    assert isinstance(code, int)
    return code


async def wait_serving(clients: Clients, agents: Sequence[Agent], timeout: float = 30.0) -> None:
    """Every agent answers GetState and enforces through its own pinned map."""

    async def probe() -> tuple[bool, dict[str, object]]:
        replies = await asyncio.gather(*(clients.get_state(a.address) for a in agents))
        wrong: dict[str, object] = {}
        for agent, reply in zip(agents, replies, strict=True):
            wanted = ("bpf", os.path.join(agent.pin_dir, layout.SERVICE_LIST))
            got = None if reply is None else (reply.dataplane, reply.map_path)
            if got != wanted:
                wrong[agent.node] = got
        return not wrong, wrong

    await until("every agent to serve with its own pinned BPF map", probe, timeout=timeout,
                running=agents)


def pins_hold(
    agents: Sequence[Agent], expected: Mapping[int, int], at_least: Version
) -> Callable[[], tuple[bool, dict[str, object]]]:
    """Probe: every agent's pinned map is exactly `expected`, its meta version >= at_least."""

    def probe() -> tuple[bool, dict[str, object]]:
        seen = {a.node: (pin_version(a.pin_dir), pin_table(a.pin_dir)) for a in agents}
        done = all(v >= at_least and t == dict(expected) for v, t in seen.values())
        return done, {node: (v, show(t)) for node, (v, t) in seen.items()}

    return probe


class Sampler:
    """Calls probe() every `interval` in a named background task until the `async with` ends;
    keeps (monotonic time, value). A probe that raises fails the test at exit."""

    def __init__(self, name: str, probe: Callable[[], Awaitable[Any]], interval: float) -> None:
        self.name = name
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sampler:
        await self._sample()  # one sample before the test acts
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # the probe failed: raise its error
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._sample()  # one sample after the test acted

    async def _sample(self) -> None:
        value = await self.probe()
        self.samples.append((time.monotonic(), value))

    async def _run(self) -> None:
        while True:
            await self._sample()
            await asyncio.sleep(self.interval)


def version_recorder(clients: Clients, agents: Sequence[Agent]) -> Sampler:
    """Samples every agent's GetState version (when it answers) and its pinned meta version."""

    async def probe() -> dict[tuple[str, str], Version]:
        replies = await asyncio.gather(*(clients.get_state(a.address, 0.5) for a in agents))
        seen: dict[tuple[str, str], Version] = {}
        for agent, reply in zip(agents, replies, strict=True):
            seen[(agent.node, "pinned meta")] = pin_version(agent.pin_dir)
            if reply is not None:
                seen[(agent.node, "GetState")] = version(reply.version)
        return seen

    return Sampler("e2e.version-recorder", probe, interval=0.02)


def assert_never_backwards(recorder: Sampler) -> dict[tuple[str, str], int]:
    """Every (agent, source) version sequence is monotonic; returns the sample counts."""
    last: dict[tuple[str, str], tuple[float, Version]] = {}
    counts: dict[tuple[str, str], int] = {}
    start = recorder.samples[0][0]
    for at, seen in recorder.samples:
        for source, held in seen.items():
            if source in last:
                then, before = last[source]
                assert held >= before, (
                    f"{source[0]}'s {source[1]} version went backwards: {before} at "
                    f"+{then - start:.3f}s, then {held} at +{at - start:.3f}s"
                )
            last[source] = (at, held)
            counts[source] = counts.get(source, 0) + 1
    return counts


def write_atomically(path: Path, text: str) -> None:
    """Temp file + rename: the agents see the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def log_size(agent: Agent) -> int:
    return os.path.getsize(agent.log_path)


def log_since(agent: Agent, offset: int) -> str:
    with open(agent.log_path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


# --- tests ------------------------------------------------------------------------------------


async def leader_after_a_first_change(
    cluster: localcluster.LocalCluster, clients: Clients
) -> tuple[str, Any, Any]:
    """Waits for the cluster and its leader, then makes 10.96.0.1=1 land in every pinned map.

    Returns the leader's address, its GetLeader reply and the write's reply.
    """
    await wait_serving(clients, cluster.agents)
    leader_address, before = await localcluster.find_leader(cluster.addresses, timeout=20)
    first = await clients.set_service(leader_address, "10.96.0.1", 1)
    await until("every map to hold the first change",
                pins_hold(cluster.agents, {key("10.96.0.1"): 1}, version(first.version)),
                timeout=15)
    return leader_address, before, first


async def test_sigkill_of_the_leader_moves_the_lease_to_a_survivor_at_a_higher_term_within_2s(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients, e2e_root: str
) -> None:
    cluster = start_cluster(5)
    leader_address, before, first = await leader_after_a_first_change(cluster, clients)
    old = agent_at(cluster, leader_address)
    survivors = [a for a in cluster.agents if a is not old]
    expected = {key("10.96.0.1"): 1}

    old.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    async def new_holder() -> tuple[bool, object]:
        replies = await asyncio.gather(*(clients.get_leader(a.address, 0.5) for a in survivors))
        now = time.monotonic()
        for reply in replies:
            if (reply is not None and reply.holder and reply.holder != before.holder
                    and reply.term > before.term):
                return True, (now, reply)
        return False, [(r.leader_node, r.term) if r else None for r in replies]

    seen_at, holder = await until("a survivor to report a new lease holder at a higher term",
                                  new_holder, timeout=10, interval=0.01)
    failover = seen_at - killed_at
    print(f"failover: SIGKILL -> {holder.leader_node} at term {holder.term} in {failover:.3f}s")
    assert holder.leader_node in {a.node for a in survivors}
    assert failover < FAILOVER_BOUND, (
        f"the lease moved to {holder.leader_node} {failover:.3f}s after the leader was killed")
    assert await wait_exit(old, timeout=5) == -signal.SIGKILL

    # The pinned lease record, read without any agent, says the same.
    lease_node, lease_term = pinned_lease(e2e_root)
    assert lease_node == holder.leader_node and lease_term >= holder.term > before.term
    # The dead leader's map still enforces the last state.
    assert pin_table(old.pin_dir) == expected

    new_address, after = await localcluster.find_leader([a.address for a in survivors], 10)
    assert agent_at(cluster, new_address).node == holder.leader_node
    assert after.term > before.term
    second = await clients.set_service(new_address, "10.96.0.2", 2)
    assert second.version.term > before.term
    expected[key("10.96.0.2")] = 2
    await until("every surviving map to hold the change made through the new leader",
                pins_hold(survivors, expected, version(second.version)), timeout=15,
                running=survivors)


async def test_a_sigkilled_follower_keeps_its_map_and_catches_up_after_restart_never_going_back(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients
) -> None:
    cluster = start_cluster(3)
    await wait_serving(clients, cluster.agents)
    leader_address, _ = await localcluster.find_leader(cluster.addresses, timeout=20)
    follower = next(a for a in cluster.agents if a.address != leader_address)
    others = [a for a in cluster.agents if a is not follower]
    expected = {key("10.96.0.1"): 1}
    first = await clients.set_service(leader_address, "10.96.0.1", 1)
    await until("every map to hold the first change",
                pins_hold(cluster.agents, expected, version(first.version)), timeout=15)

    async with version_recorder(clients, cluster.agents) as recorder:
        follower.signal(signal.SIGKILL)
        assert await wait_exit(follower, timeout=5) == -signal.SIGKILL
        down_version = pin_version(follower.pin_dir)
        assert down_version >= version(first.version)
        assert pin_table(follower.pin_dir) == expected, "a killed agent's map must keep its state"

        second = await clients.set_service(leader_address, "10.96.0.2", 2)
        newer = {**expected, key("10.96.0.2"): 2}
        await until("the live agents' maps to hold the change made while the follower is down",
                    pins_hold(others, newer, version(second.version)), timeout=15)
        # Nobody writes a dead agent's map: it still holds exactly the last state it applied.
        assert pin_table(follower.pin_dir) == expected
        assert pin_version(follower.pin_dir) == down_version
        assert not follower.running

        follower.start()
        await until("the restarted follower's pinned map to catch up",
                    pins_hold([follower], newer, version(second.version)), timeout=20,
                    running=[follower])

        async def reports_new_version() -> tuple[bool, object]:
            reply = await clients.get_state(follower.address)
            held = None if reply is None else version(reply.version)
            return held is not None and held >= version(second.version), held

        await until("the restarted follower's GetState to report the new version",
                    reports_new_version, timeout=10, running=[follower])

    counts = assert_never_backwards(recorder)
    print(f"version samples: {counts}")
    assert counts[(follower.node, "pinned meta")] >= 3
    assert counts.get((follower.node, "GetState"), 0) >= 2  # before the kill and after restart


async def test_sigterm_of_a_follower_exits_0_promptly_and_leaves_its_maps_pinned(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients
) -> None:
    require(shutil.which("bpftool") is not None, "bpftool")
    cluster = start_cluster(3)
    await wait_serving(clients, cluster.agents)
    leader_address, _ = await localcluster.find_leader(cluster.addresses, timeout=20)
    follower = next(a for a in cluster.agents if a.address != leader_address)
    await clients.set_service(leader_address, "10.96.0.1", 3)
    last = await clients.set_service(leader_address, "10.96.0.2", 0)  # scaled to zero
    expected = {key("10.96.0.1"): 3, key("10.96.0.2"): 0}
    await until("every map to hold both changes",
                pins_hold(cluster.agents, expected, version(last.version)), timeout=15)
    held = pin_version(follower.pin_dir)

    async def pinned_state() -> tuple[Version, dict[int, int]]:
        return pin_version(follower.pin_dir), pin_table(follower.pin_dir)

    # Sample the pins all through the shutdown: they must never change, let alone go blank.
    async with Sampler("e2e.pin-watch", pinned_state, interval=0.005) as watch:
        follower.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code = await wait_exit(follower, timeout=10)
        took = time.monotonic() - stopped_at
    print(f"SIGTERM -> exit {code} in {took:.3f}s; {len(watch.samples)} pin samples")
    assert code == 0, log_tail(follower.log_path)
    assert took < STOP_BOUND, f"{follower.node} took {took:.3f}s to stop after SIGTERM"
    changed = [(at, v, show(t)) for at, (v, t) in watch.samples if (v, t) != (held, expected)]
    assert not changed, f"the pinned map changed during shutdown: {changed[:3]}"

    table_path = os.path.join(follower.pin_dir, layout.SERVICE_LIST)
    assert pin_table(follower.pin_dir) == expected
    assert pin_version(follower.pin_dir) == held
    assert bpftool_table(table_path) == expected


@pytest.mark.parametrize("mtls", [False, True], ids=["plaintext", "mtls"])
def test_local_cluster_check_prints_a_converged_json_summary_last(
    e2e_root: str, tmp_path: Path, mtls: bool
) -> None:
    command = [sys.executable, str(REPO / "tools" / "local_cluster.py"), "--nodes", "3",
               "--check", "--root", e2e_root, "--log-dir", str(tmp_path / "tool-logs"),
               "--timeout", "40", *(["--mtls"] if mtls else [])]
    tool = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = tool.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        tool.send_signal(signal.SIGINT)  # KeyboardInterrupt: its finally stops the agents
        try:
            out, err = tool.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            tool.kill()  # its agents are swept by e2e_root's teardown
            out, err = tool.communicate()
        pytest.fail(f"local_cluster.py --check ran over 60s\nstdout: {out}\nstderr: {err}")
    assert tool.returncode == 0, f"exit {tool.returncode}\nstdout: {out}\nstderr: {err}"
    lines = out.strip().splitlines()
    assert lines, f"no stdout; stderr: {err}"
    summary = json.loads(lines[-1])

    assert {"nodes", "converged", "convergence_ms", "leader", "term", "agents"} <= summary.keys()
    assert summary["nodes"] == 3
    assert summary["converged"] is True
    assert summary["mtls"] is mtls
    ms = summary["convergence_ms"]
    assert isinstance(ms, int | float) and not isinstance(ms, bool)
    assert math.isfinite(ms) and ms >= 0
    assert summary["leader"] in {"node-0", "node-1", "node-2"}
    assert isinstance(summary["term"], int) and summary["term"] >= 1
    agents = summary["agents"]
    assert isinstance(agents, list) and len(set(agents)) == 3
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", a) for a in agents), agents

    # The agents are gone; their pins still hold the checked change, the same on every node.
    check_key = key("10.96.0.10")
    values = {pin_table(os.path.join(e2e_root, f"node-{i}")).get(check_key) for i in range(3)}
    assert len(values) == 1 and None not in values, values
    for i in range(3):
        assert pin_version(os.path.join(e2e_root, f"node-{i}"))[0] >= summary["term"]


@pytest.mark.parametrize(("sig", "when"), [(signal.SIGTERM, "live view"),
                                           (signal.SIGHUP, "start-up")],
                         ids=["sigterm-in-live-view", "sighup-at-start-up"])
def test_local_cluster_stops_its_agents_when_terminated(
    e2e_root: str, tmp_path: Path, sig: signal.Signals, when: str,
) -> None:
    """`make demo` stopped by `timeout`, `kill` or a closed terminal takes its agents with it
    (they run in sessions of their own, so nothing else would stop them): while it shows the
    live view, and as soon as its agents exist (before its event loop runs)."""
    command = [sys.executable, str(REPO / "tools" / "local_cluster.py"), "--nodes", "2",
               "--root", e2e_root, "--log-dir", str(tmp_path / "tool-logs")]
    tool = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while len(agent_pids(e2e_root)) < 2:
            assert tool.poll() is None, f"local_cluster.py exited {tool.returncode}"
            assert time.monotonic() < deadline, "the demo's 2 agents never started"
            time.sleep(0.1)
        if when == "live view":
            assert tool.stdout is not None
            first = tool.stdout.readline()  # the view's header: its loop is running
            assert first.startswith("NODE"), first
        tool.send_signal(sig)
        out, err = tool.communicate(timeout=30)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert tool.returncode == 0, f"exit {tool.returncode}\nstdout: {out[-2000:]}\nstderr: {err}"
    assert agent_pids(e2e_root) == [], "agents outlived the demo that started them"


def agent_pids(root: str) -> list[int]:
    """Running processes whose environment names this test's lease directory (its agents; an
    exited one, even unreaped, has no environment left to match)."""
    return netns.marked_processes(f"BPF_LEASE_DIR={root}")


async def test_file_source_edits_reach_every_map_and_a_broken_file_changes_nothing(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients, tmp_path: Path
) -> None:
    path = tmp_path / "services.yaml"
    write_atomically(path, "services:\n"
                           "  - {ip: 10.96.1.1, replicas: 1, name: default/a}\n"
                           "  - {ip: 10.96.1.2, replicas: 0, name: default/b}\n")
    cluster = start_cluster(3, {"SOURCE": "file", "SOURCE_FILE": str(path)})
    agents = cluster.agents
    await wait_serving(clients, agents)
    expected = {key("10.96.1.1"): 1, key("10.96.1.2"): 0}
    await until("every map to hold the file's services", pins_hold(agents, expected, (1, 1)),
                timeout=20, running=agents)

    # An edit (another accepted shape: a mapping ip -> replicas or {replicas, name}).
    write_atomically(path, "10.96.1.1: 3\n10.96.1.3: {replicas: 2, name: default/c}\n")
    expected = {key("10.96.1.1"): 3, key("10.96.1.3"): 2}
    await until("every map to follow the edited file", pins_hold(agents, expected, (1, 2)),
                timeout=15, running=agents)
    pinned_before = {a.node: pin_version(a.pin_dir) for a in agents}
    states_before = await asyncio.gather(*(clients.get_state(a.address) for a in agents))
    assert all(s is not None for s in states_before)
    offsets = {a.node: log_size(a) for a in agents}

    # A broken file: every agent reports it (so the leader did read it) and nothing changes.
    write_atomically(path, "services:\n  - {ip: 10.96.1.9, replicas: 5\n")

    def all_reported() -> tuple[bool, object]:
        reported = {a.node: "keeping the last good state" in log_since(a, offsets[a.node])
                    for a in agents}
        return all(reported.values()), reported

    await until("every agent to report the broken file", all_reported, timeout=15,
                running=agents)
    assert {a.node: pin_version(a.pin_dir) for a in agents} == pinned_before
    assert all(pin_table(a.pin_dir) == expected for a in agents)
    states_after = await asyncio.gather(*(clients.get_state(a.address) for a in agents))
    assert [version(s.version) if s else None for s in states_after] == [
        version(s.version) if s else None for s in states_before]

    # Fixing it resumes: a newer version with the fixed content everywhere.
    write_atomically(path, "services:\n"
                           "  - {ip: 10.96.1.1, replicas: 4, name: default/a}\n"
                           "  - {ip: 10.96.1.4, replicas: 1, name: default/d}\n")
    newest = max(pinned_before.values())
    expected = {key("10.96.1.1"): 4, key("10.96.1.4"): 1}
    await until("every map to follow the fixed file",
                pins_hold(agents, expected, (newest[0], newest[1] + 1)), timeout=15,
                running=agents)


async def test_a_restarted_leader_rejoins_as_follower_and_no_version_ever_goes_backwards(
    start_cluster: Callable[..., localcluster.LocalCluster], clients: Clients, e2e_root: str
) -> None:
    cluster = start_cluster(3)
    leader_address, before, first = await leader_after_a_first_change(cluster, clients)
    old = agent_at(cluster, leader_address)
    survivors = [a for a in cluster.agents if a is not old]
    expected = {key("10.96.0.1"): 1}

    async with version_recorder(clients, cluster.agents) as recorder:
        old.signal(signal.SIGTERM)  # a clean shutdown releases the lease
        stopped_at = time.monotonic()
        assert await wait_exit(old, timeout=10) == 0, log_tail(old.log_path)
        print(f"leader SIGTERM -> exit 0 in {time.monotonic() - stopped_at:.3f}s")

        new_address, after = await localcluster.find_leader([a.address for a in survivors], 10)
        new = agent_at(cluster, new_address)
        assert after.term > before.term
        assert pinned_lease(e2e_root) == (new.node, after.term)
        second = await clients.set_service(new_address, "10.96.0.2", 2)
        assert second.version.term > before.term
        expected[key("10.96.0.2")] = 2
        await until("the survivors' maps to hold the new leader's change",
                    pins_hold(survivors, expected, version(second.version)), timeout=15)

        old.start()
        await until("the restarted old leader's map to converge",
                    pins_hold([old], expected, version(second.version)), timeout=20,
                    running=[old])

        async def follows() -> tuple[bool, object]:
            leader = await clients.get_leader(old.address)
            state = await clients.get_state(old.address)
            seen = (None if leader is None else (leader.is_self, leader.leader_node, leader.term),
                    None if state is None else version(state.version))
            done = (leader is not None and state is not None and not leader.is_self
                    and leader.leader_node == new.node
                    and version(state.version) >= version(second.version))
            return done, seen

        await until("the restarted old leader to follow the new leader", follows, timeout=10,
                    running=[old])
        still = await clients.get_leader(new_address)
        assert still is not None and still.is_self and still.term == after.term

    counts = assert_never_backwards(recorder)
    print(f"version samples: {counts}")
    assert counts.get((old.node, "GetState"), 0) >= 2  # before the stop and after the restart
