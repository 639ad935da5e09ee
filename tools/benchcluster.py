"""The agent cluster a benchmark drives, in either harness, brought to the same state.

start(harness, N) runs N agent processes; prepare() waits until every agent serves, fills the
leader's table to TABLE_ENTRIES services through its SetService, waits until every agent holds
all of them (and, in the netns harness, until every XDP program is attached), then lets the
cluster settle with nothing to do. What is measured after that starts from a cluster at rest.

Harnesses:
- local (lab.localcluster): agents on loopback, pinned maps under bpffs (memory maps
  without it), /metrics and the aiomonitor console on, no XDP program: nothing counts packets,
  every agent is a blind node (maps only).
- netns (lab.netns): one network namespace per node, XDP_INTERFACES=veth*, so
  every node's program is attached to its pod's veth and counts. Needs root, iproute2, a
  mounted bpffs and bcc; metrics and console are off (the harness's default).

A Cluster knows each agent's process id by the address the benchmark calls it at (what /proc
is read for) and the environment an agent runs with (timers() shows the timers in force).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping

import proccpu  # tools/proccpu.py, next to this module
from gossip_agent import config
from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import localcluster

HARNESSES = ("local", "netns")
TABLE_ENTRIES = 1024  # the map's default capacity (MAP_MAX_ENTRIES): a full table
FIRST_IP = 0x0A600000  # 10.96.0.0
AGENT_ENV = {"LOG_LEVEL": "warning"}  # no per-change log lines in the CPU being measured
# Starting N agents on 2 cores: in the netns harness each compiles the XDP program (~3 s of
# CPU), so 32 take about a minute before the last one serves and attaches.
START_TIMEOUT = 300.0
NETNS_PREFIX = "ga15b"
NETNS_BPFFS = "/sys/fs/bpf/gossip-agent-bench-netns"
# The timers and switches that decide what an agent does at rest, printed with rest figures:
# every periodic task's interval, then what runs at all (program, metrics, console).
SHOWN_VARIABLES = (
    "PROFILE", "GOSSIP_INTERVAL", "TRAFFIC_REPORT_INTERVAL", "SCALE_REPORT_WINDOW",
    "LEASE_RENEW_INTERVAL", "LEASE_RETRY_INTERVAL", "DISCOVERY_INTERVAL", "COORDINATION_BACKEND",
    "SOURCE", "DATAPLANE", "XDP_INTERFACES", "FAIL_OPEN_AFTER", "METRICS_PORT", "AIOMONITOR_PORT",
    "LOG_LEVEL",
)
PORT_VARIABLES = ("METRICS_PORT", "AIOMONITOR_PORT")  # shown as on / off: each agent has its own
UNITS = {"seconds": "s", "minutes": "min"}


@dataclasses.dataclass(frozen=True)
class Cluster:
    harness: str
    addresses: list[str]  # where the benchmark calls each agent (netns: a forwarder)
    pids: Mapping[str, int]  # address -> the agent's process id
    env: Mapping[str, str]  # the first agent's environment (every agent has the same timers)
    channels: tls.ChannelFactory
    ready: Callable[[], bool] = lambda: True  # netns: every XDP program is attached


def ip_of(index: int) -> str:
    value = FIRST_IP + index
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def missing(harness: str) -> list[str]:
    """What this machine lacks for `harness` (the local one runs anywhere)."""
    if harness == "local":
        return []
    from lab import netns

    return netns.missing()


def timer_env(timers: str) -> dict[str, str]:
    """The agents' timers: "profile" keeps the harness's own (PROFILE=local: fast timers for
    tests and demos); "cluster" sets every timer to the DaemonSet's default (PROFILE=cluster),
    which is what a node pays in production. Addresses and ports stay the harness's."""
    if timers == "profile":
        return {}
    return {v.name: v.defaults["cluster"] for v in config.VARIABLES
            if v.unit in UNITS and v.defaults["cluster"] != v.defaults["local"]}


@contextlib.contextmanager
def start(harness: str, nodes: int, *, mtls: bool = False,
          timers: str = "profile") -> Iterator[Cluster]:
    """N running agents; stopped (and their maps removed) on leaving. The agents' logs are
    removed after a clean run and kept, with their path printed, after a failure."""
    log_dir = tempfile.mkdtemp(prefix=f"gossip-bench-{harness}-{nodes}-")
    env = {**AGENT_ENV, **timer_env(timers)}
    if harness == "local":
        cluster = _local(nodes, log_dir=log_dir, mtls=mtls, env=env)
    elif mtls:
        raise ValueError("mutual TLS is measured in the local harness only")
    else:
        cluster = _namespaced(nodes, log_dir=log_dir, env=env)
    try:
        with cluster as running:
            yield running
    except BaseException:
        print(f"{harness} cluster of {nodes} failed: agent logs kept in {log_dir}",
              file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)


@contextlib.contextmanager
def _local(nodes: int, *, log_dir: str, mtls: bool, env: dict[str, str]) -> Iterator[Cluster]:
    # A root of this process's own: two benchmarks at once must not wipe each other's maps.
    root = (localcluster.BPFFS_ROOT + f"-bench-{os.getpid()}" if localcluster.bpffs_mounted()
            and os.geteuid() == 0 else tempfile.mkdtemp(prefix="gossip-bench-"))
    shutil.rmtree(root, ignore_errors=True)  # fresh maps: every run starts from the same state
    agents = localcluster.LocalCluster(nodes, root=root, log_dir=log_dir, extra_env=env,
                                       mtls=mtls)
    agents.start()
    try:
        yield Cluster(harness="local", addresses=agents.addresses,
                      pids={a.address: _pid(a.process) for a in agents.agents},
                      env=agents.agents[0].env, channels=agents.client)
    finally:
        agents.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _namespaced(nodes: int, *, log_dir: str, env: dict[str, str]) -> Iterator[Cluster]:
    from lab import netns  # root-only harness: imported when asked for

    netns.sweep_stale(NETNS_PREFIX)
    root = os.path.join(NETNS_BPFFS, uuid.uuid4().hex[:12])
    with netns.Cluster(nodes, prefix=NETNS_PREFIX, bpffs_root=root, log_dir=log_dir,
                       env=env) as agents:
        agents.start()

        def attached() -> bool:
            return all("xdp" in netns.ip(n.netns, "link", "show", n.veth, check=False).stdout
                       for n in agents.nodes)

        # nsenter execs the agent (no --fork): the pid of the Popen is the agent's own.
        yield Cluster(harness="netns", addresses=[n.api_address for n in agents.nodes],
                      pids={n.api_address: _pid(n.process) for n in agents.nodes},
                      env=agents.agent_env(agents.nodes[0]),
                      channels=tls.ChannelFactory(None), ready=attached)
    with contextlib.suppress(OSError):
        os.rmdir(NETNS_BPFFS)  # another run may still use it


def _pid(process: object) -> int:
    pid = getattr(process, "pid", None)
    if not isinstance(pid, int):
        raise RuntimeError("an agent was not started")
    return pid


async def fill_table(stub: pb_grpc.StateStub) -> None:
    """TABLE_ENTRIES services at 1 replica, 64 writes in flight."""
    semaphore = asyncio.Semaphore(64)

    async def one(index: int) -> None:
        async with semaphore:
            await stub.SetService(pb.SetServiceRequest(
                ip=ip_of(index), replicas=1, name=f"bench/svc-{index}"), timeout=30)

    await asyncio.gather(*(one(i) for i in range(TABLE_ENTRIES)))


async def prepare(cluster: Cluster, *, settle: float) -> str:
    """Every agent holding the full table, then `settle` seconds; returns the leader's address."""
    addresses, channels = cluster.addresses, cluster.channels
    await localcluster.wait_all(addresses, what="every agent to serve", timeout=START_TIMEOUT,
                                check=lambda s: True, channels=channels)
    leader, _ = await localcluster.find_leader(addresses, timeout=60, channels=channels)
    async with channels.open(leader, []) as channel:
        await fill_table(pb_grpc.StateStub(channel))
    await localcluster.wait_all(addresses, what="the full table everywhere", timeout=120,
                                check=lambda s: len(s.entries) == TABLE_ENTRIES,
                                channels=channels)
    await _until(cluster.ready, what="every XDP program attached", timeout=START_TIMEOUT)
    await asyncio.sleep(settle)
    return leader


async def _until(check: Callable[[], bool], *, what: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.5)


def sample(cluster: Cluster) -> proccpu.Sample:
    """Every agent's CPU so far, and the machine's steal."""
    return proccpu.sample(cluster.pids.values())


@dataclasses.dataclass(frozen=True)
class PerAgent:
    """One figure per agent: the leader's, and the followers' as a list."""

    leader: float
    followers: list[float]

    def summary(self, name: str, *, digits: int = 2) -> dict[str, float]:
        """{leader_<name>, follower_<name>} (the followers' median), for JSON and tables."""
        return {f"leader_{name}": round(self.leader, digits),
                f"follower_{name}": round(statistics.median(self.followers), digits)}


def per_agent(cluster: Cluster, leader: str, figure: Callable[[int], float]) -> PerAgent:
    """figure(pid) for every agent, split by role. A one-agent cluster has no follower: its
    followers' figures are the leader's own, so medians stay defined."""
    followers = [figure(pid) for address, pid in cluster.pids.items() if address != leader]
    own = figure(cluster.pids[leader])
    return PerAgent(leader=own, followers=followers or [own])


def timers(env: Mapping[str, str]) -> dict[str, str]:
    """SHOWN_VARIABLES as an agent with `env` runs them: set, or its profile's default."""
    profile = env.get("PROFILE", "").strip().lower() or "cluster"
    variables = {v.name: v for v in config.VARIABLES}
    shown = {}
    for name in SHOWN_VARIABLES:
        value = env.get(name, "").strip() or variables[name].defaults.get(profile, "")
        if name in PORT_VARIABLES:
            value = "off" if value in ("", "0") else "on"
        elif value:
            value += UNITS.get(variables[name].unit, "")
        shown[name] = value or "-"
    return shown
