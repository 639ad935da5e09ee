"""Operating a live agent, in-process: /metrics scraped over real HTTP and checked by Debian's
promtool, the adoption age carried hop by hop, and the readiness / liveness health services
read over real gRPC.

Agents run as in test_grpc_api (PROFILE=local timers, DATAPLANE=memory, a flock lease in
tmp_path); ports are picked beforehand.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import parser as prom_parser

from gossip_agent import agent as agent_mod
from gossip_agent import config
from gossip_agent.api import probes
from gossip_agent.dataplane import events
from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster
from tests.conftest import require
from tests.integration.test_grpc_api import (
    RPC_DEADLINE,
    address,
    agent_env,
    finish_stop,
    get_state,
    lease_held_by_test,
    poll,
    running_agents,
    set_service,
    settle,
    state_stub,
    wait_for_leader,
)
from tests.unit.test_monitoring_manifests import documented_metrics

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# About 3x the local anti-entropy period (1 s) a follower may need to learn its peers' states.
GOSSIP_DEADLINE = 6.0


@contextlib.asynccontextmanager
async def metered_agents(
    count: int, tmp_path: Path
) -> AsyncIterator[tuple[list[agent_mod.Agent], list[int]]]:
    """Running agents with /metrics on, and each one's metrics port (all ports distinct: one
    batch)."""
    ports = localcluster.free_ports(2 * count)
    env = {i: {"METRICS_PORT": str(port)} for i, port in enumerate(ports[count:])}
    async with running_agents(count, lease_dir=tmp_path, per_agent=env,
                              ports=ports[:count]) as agents:
        yield agents, ports[count:]


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            return str(reply.read().decode())

    return await asyncio.to_thread(get)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels); parsing it also proves
    the text is valid exposition format."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in prom_parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in parsed, f"{name}{labels} not in the scrape"
    return parsed[key]


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus)")
    assert promtool is not None
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30, check=False)
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not report.strip(), f"promtool check metrics:\n{report}"


async def test_metrics_of_a_cluster_pass_promtool_and_match_what_each_agent_holds(
    tmp_path: Path,
) -> None:
    async with metered_agents(3, tmp_path) as (agents, ports):
        leader = await wait_for_leader(agents)
        written = await set_service(address(leader), "10.96.0.10", 3, "default/web")
        followers = [a for a in agents if a is not leader]

        async def leader_sees_followers_alive() -> bool:
            parsed = samples(await scrape(ports[agents.index(leader)]))
            return value(parsed, "gossip_agent_peers", state="alive") == 2

        await poll("the leader's metrics to show 2 alive peers", leader_sees_followers_alive,
                   timeout=GOSSIP_DEADLINE)
        await poll("every agent to hold the write",
                   lambda: _all_hold(agents, written.version.seq), timeout=GOSSIP_DEADLINE)
        for agent, port in zip(agents, ports, strict=True):
            text = await scrape(port)
            promtool_check(text)
            parsed = samples(text)
            state = await get_state(address(agent))
            assert value(parsed, "gossip_agent_adopted_term") == state.version.term
            assert value(parsed, "gossip_agent_adopted_seq") == state.version.seq
            assert value(parsed, "gossip_agent_snapshot_entries") == 1
            is_leader = agent is leader
            assert value(parsed, "gossip_agent_is_leader") == (1 if is_leader else 0)
            assert value(parsed, "gossip_agent_leader_term") == (
                written.version.term if is_leader else 0)
            assert value(parsed, "gossip_agent_lease_acquisitions_total",
                         backend="bpffs") == (1 if is_leader else 0)
            assert value(parsed, "gossip_agent_map_apply_duration_seconds_count") >= 2
            assert value(parsed, "gossip_agent_node_info", node=agent.cfg.node.name,
                         dataplane="memory", lease_backend="bpffs") == 1
            assert value(parsed, "gossip_agent_scale_requests_total", result="received") == 0
            # DATAPLANE=memory: no program counts this node's packets.
            assert value(parsed, "gossip_agent_blind") == 1
            assert state.blind.startswith("no counting program: no BPF data plane")
            assert value(parsed, "gossip_agent_scale_down_blocked", cause="blind") == 0
        for agent in followers:
            parsed = samples(await scrape(ports[agents.index(agent)]))
            assert value(parsed, "gossip_agent_messages_received_total", kind="push",
                         result="adopt") >= 1
            assert value(parsed, "gossip_agent_adoption_latency_seconds_count", via="push") >= 1
            assert value(parsed, "gossip_agent_adoption_latency_seconds_sum", via="push") > 0
            assert value(parsed, "gossip_agent_received_bytes_total", kind="push") > 0
        parsed = samples(await scrape(ports[agents.index(leader)]))
        assert value(parsed, "gossip_agent_messages_sent_total", kind="push", result="ok") >= 2
        assert value(parsed, "gossip_agent_sent_bytes_total", kind="push") > 0
    # Stopped: the leader released its lease on the way out, and counted it.
    assert leader.observer.metrics is not None
    parsed = samples(leader.observer.metrics.render()[0].decode())
    assert value(parsed, "gossip_agent_lease_losses_total", backend="bpffs",
                 reason="released") == 1


async def test_adoption_latency_is_the_time_since_the_leaders_write_but_the_wire(
    tmp_path: Path,
) -> None:
    # In-process agents share this host's CLOCK_MONOTONIC, so the real latency of one write is
    # known: applied_monotonic_ns (GetHistory) - written_monotonic_ns (WriteResponse). The
    # carried age adds only the time each agent held the snapshot, never the time on the wire.
    async with metered_agents(2, tmp_path) as (agents, ports):
        leader = await wait_for_leader(agents)
        (follower,) = [a for a in agents if a is not leader]
        port = ports[agents.index(follower)]
        before = samples(await scrape(port))
        written = await set_service(address(leader), "10.96.0.20", 1)
        await poll("the follower to adopt the write",
                   lambda: _all_hold([follower], written.version.seq), timeout=GOSSIP_DEADLINE)
        after = samples(await scrape(port))
        async with state_stub(address(follower)) as stub:
            history = await stub.GetHistory(pb.GetHistoryRequest(), timeout=RPC_DEADLINE)
    (event,) = [e for e in history.events if e.version.seq == written.version.seq]
    real = (event.applied_monotonic_ns - written.written_monotonic_ns) / 1e9
    name = "gossip_agent_adoption_latency_seconds"
    counted = (value(after, f"{name}_count", via="push")
               - value(before, f"{name}_count", via="push"))
    age = value(after, f"{name}_sum", via="push") - value(before, f"{name}_sum", via="push")
    assert counted == 1
    assert 0 < age <= real + 1e-6, f"carried age {age * 1e3:.3f} ms, real {real * 1e3:.3f} ms"


async def _all_hold(agents: list[agent_mod.Agent], seq: int) -> bool:
    states = await localcluster.states([address(a) for a in agents])
    return all(s is not None and s.version.seq >= seq for s in states)


async def test_every_metric_is_documented_in_the_docs_and_every_documented_one_exists(
    tmp_path: Path,
) -> None:
    async with metered_agents(1, tmp_path) as (agents, ports):
        await wait_for_leader(agents)
        # As the XDP event reader does (dataplane/events.py: tests publish by hand).
        agents[0].scale_events.publish(events.ScaleUpEvent(0x0A60000A, 0x0A000001, 1))
        text = await scrape(ports[0])
    assert value(samples(text), "gossip_agent_scale_events_total") == 1
    # The names as exposed, from the TYPE lines (counters with _total, the info with _info).
    exposed = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    documented = documented_metrics()
    assert documented, "docs/operating.md has no metrics table"
    assert exposed == documented, (
        f"undocumented: {sorted(exposed - documented)}; "
        f"documented but not exposed: {sorted(documented - exposed)}")


@pytest.mark.parametrize("variable", ["METRICS_PORT", "AIOMONITOR_PORT",
                                      "AIOMONITOR_WEBUI_PORT"])
async def test_a_metrics_or_console_port_in_use_stops_the_start_naming_the_variable(
    tmp_path: Path, variable: str,
) -> None:
    ports = localcluster.free_ports(5)
    taken = {"METRICS_PORT": ports[1], "AIOMONITOR_PORT": ports[2],
             "AIOMONITOR_WEBUI_PORT": ports[3]}[variable]
    before = asyncio.all_tasks()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
    agent = agent_mod.Agent(config.from_env(agent_env(
        node="node-0", port=ports[0], peers=[], lease_dir=tmp_path, METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(ports[1]), AIOMONITOR_PORT=str(ports[2]),
        AIOMONITOR_WEBUI_PORT=str(ports[3]), AIOMONITOR_CONSOLE_PORT=str(ports[4]))))
    try:
        with pytest.raises(OSError, match=f"{variable} {taken}"):
            await agent.start()
    finally:
        await agent.stop()
        blocker.close()
        await blocker.wait_closed()
        await settle(before)


# -- health: readiness and liveness -------------------------------------------------------


async def health_of(agent: agent_mod.Agent, service: str) -> int:
    async with grpc.aio.insecure_channel(address(agent)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=RPC_DEADLINE)
    return int(reply.status)


async def _exchanges_failed(agent: agent_mod.Agent) -> bool:
    return agent.engine.stats.exchanges_failed > 0


async def test_a_cold_agent_is_live_but_not_ready_until_it_leads_and_not_ready_at_stop(
    tmp_path: Path,
) -> None:
    before = asyncio.all_tasks()
    dead_peer = localcluster.free_ports(2)
    agent = agent_mod.Agent(config.from_env(agent_env(
        node="node-0", port=dead_peer[0], peers=[dead_peer[1]], lease_dir=tmp_path)))
    stopping: asyncio.Task[None] | None = None
    try:
        with lease_held_by_test(tmp_path):
            await agent.start()
            # Its only peer does not exist and the lease is held elsewhere: no snapshot can
            # come, and liveness must not care (a cold cluster never restart-loops).
            await poll("a failed exchange", lambda: _exchanges_failed(agent),
                       timeout=GOSSIP_DEADLINE)
            assert await health_of(agent, probes.READY) == NOT_SERVING
            assert await health_of(agent, probes.LIVE) == SERVING
            assert await health_of(agent, "") == SERVING
        # The lease is free now: the agent leads, publishes its first snapshot, is ready.
        await poll("Ready SERVING after taking the lease",
                   lambda: _health_is(agent, probes.READY, SERVING), timeout=GOSSIP_DEADLINE)
        assert agent.leadership.leading
        async with grpc.aio.insecure_channel(address(agent)) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=probes.READY), timeout=10 * RPC_DEADLINE)
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(agent.stop(), name="test.agent-stop")
            async with asyncio.timeout(RPC_DEADLINE):
                assert (await watch.read()).status == NOT_SERVING
            watch.cancel()
            await stopping
    finally:
        await finish_stop(agent, stopping, before)


async def _health_is(agent: agent_mod.Agent, service: str, status: int) -> bool:
    return await health_of(agent, service) == status


async def test_a_cold_cluster_with_no_leader_is_ready_once_peers_agree_there_is_nothing(
    tmp_path: Path,
) -> None:
    # Nobody can lead, so no snapshot exists anywhere: an exchange tells each agent that its
    # peer has nothing newer, and that is enough to be ready (a rollout must not hang).
    with lease_held_by_test(tmp_path):
        async with running_agents(2, lease_dir=tmp_path) as agents:
            for agent in agents:
                await poll(f"{agent.cfg.node.name} Ready", lambda a=agent: _health_is(
                    a, probes.READY, SERVING), timeout=GOSSIP_DEADLINE)
                assert agent.engine.held.snapshot is None
                assert await health_of(agent, probes.LIVE) == SERVING
