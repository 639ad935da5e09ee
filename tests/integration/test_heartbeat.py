"""The fail-open heartbeat of a real agent (in this event loop, on real pinned maps): it starts
once the agent has been up and alive for its probation, is refreshed while the agent's own loops
live, whatever its dependencies do, and stops when one of the loops it vouches for dies, so
FAIL_OPEN_AFTER takes effect. An agent that dies on probation, restart after restart (a crash
loop), never refreshes it.

The heartbeat is read from <pin_dir>/HEARTBEAT as the XDP program reads it. FAIL_OPEN_AFTER is
in minutes: 0.01 is 0.6 s (probation and refresh interval 0.15 s), 0.05 is 3 s (0.75 s), 0.1 is
6 s (1.5 s: room for an agent to get up, lead and die on probation on a loaded machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gossip_agent import agent as agent_mod
from gossip_agent import config
from lab import localcluster
from tests.integration import xdp_net
from tests.integration.test_grpc_api import agent_env, settle

pytestmark = pytest.mark.integration

CRASH_LOOP_FAIL_OPEN_AFTER = 6.0  # seconds: FAIL_OPEN_AFTER=0.1 minutes
CRASH_LOOP_ENV = {"FAIL_OPEN_AFTER": "0.1"}
PROBATION = 1.5  # seconds: min(FAIL_OPEN_AFTER / 4, 60 s), enforcer.probation


@contextlib.asynccontextmanager
async def bpf_agent(pin_dir: str, lease_dir: Path, **extra: str
                    ) -> AsyncIterator[agent_mod.Agent]:
    """One started agent on real pinned maps under pin_dir; stopped on the way out."""
    (port,) = localcluster.free_ports(1)
    before = asyncio.all_tasks()
    agent = agent_mod.Agent(config.from_env(agent_env(
        node="node-0", port=port, peers=[], lease_dir=lease_dir, DATAPLANE="bpf",
        BPF_PIN_DIR=pin_dir, **extra)))
    try:
        await agent.start()
        yield agent
    finally:
        await agent.stop()
        await settle(before)


def age_s(pin_dir: str) -> float:
    """How old the pinned heartbeat is on this host's monotonic clock, in seconds."""
    refreshed, _ = xdp_net.pinned_heartbeat(pin_dir)
    assert refreshed, "no heartbeat written"
    return (time.monotonic_ns() - refreshed) / 1e9


async def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


async def test_heartbeat_keeps_enforcing_through_a_lease_backend_outage(
    bpffs_dir: str, tmp_path: Path
) -> None:
    """A Redis that never answers (a closed port) must not fail every node open: lease.elect
    keeps retrying, which is the agent working, so the heartbeat stays fresh."""
    (closed,) = localcluster.free_ports(1)  # nothing listens there
    fail_open_after = 3.0
    async with bpf_agent(bpffs_dir, tmp_path, FAIL_OPEN_AFTER="0.05",
                         COORDINATION_BACKEND="redis",
                         REDIS_URL=f"redis://127.0.0.1:{closed}/0") as agent:
        await until("the first heartbeat", lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != 0)
        assert xdp_net.pinned_heartbeat(bpffs_dir)[1] == int(fail_open_after * 1e9)
        first, _ = xdp_net.pinned_heartbeat(bpffs_dir)
        watched_until = time.monotonic() + 2.5 * fail_open_after
        oldest = 0.0
        while time.monotonic() < watched_until:
            oldest = max(oldest, age_s(bpffs_dir))
            assert not agent.leadership.leading
            await asyncio.sleep(0.1)
        assert oldest < fail_open_after / 2, f"the heartbeat got {oldest:.2f} s old"
        assert xdp_net.pinned_heartbeat(bpffs_dir)[0] > first


@pytest.mark.parametrize(("loop", "extra"), [
    ("lease.elect", {}),
    # A pattern nothing matches: the program is loaded (and its event reader runs) anyway.
    ("xdp.events", {"XDP_INTERFACES": "ga4a-none*"}),
])
async def test_a_watched_loop_that_dies_stops_the_heartbeat(
    bpffs_dir: str, tmp_path: Path, loop: str, extra: dict[str, str]
) -> None:
    fail_open_after = 0.6
    async with bpf_agent(bpffs_dir, tmp_path, FAIL_OPEN_AFTER="0.01", **extra) as agent:
        await until("the first heartbeat", lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != 0)
        first, _ = xdp_net.pinned_heartbeat(bpffs_dir)
        await until("a refresh", lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != first)

        (task,) = [t for t in agent.tasks if t.get_name() == loop]
        task.cancel()  # the loop ends; the rest of the agent runs on
        await asyncio.gather(task, return_exceptions=True)
        last, _ = xdp_net.pinned_heartbeat(bpffs_dir)

        await until(f"FAIL_OPEN_AFTER to pass without a refresh after {loop} ended",
                    lambda: age_s(bpffs_dir) > 2 * fail_open_after, timeout=10)
        assert xdp_net.pinned_heartbeat(bpffs_dir)[0] == last, f"refreshed after {loop} ended"


def fails_open(pin_dir: str) -> bool:
    """The program's verdict on the pinned record (service_list.bpf.c failed_open)."""
    refreshed, after = xdp_net.pinned_heartbeat(pin_dir)
    return after != 0 and time.monotonic_ns() - refreshed > after


def loop_task(agent: agent_mod.Agent, name: str) -> asyncio.Task[object]:
    (task,) = [t for t in agent.tasks if t.get_name() == name]
    return task


# How an attempt of a crash loop dies once it is up and leading: the process goes (in-process,
# a stop; a SIGKILL is the e2e test's), or a watched loop ends and the process lives on past its
# probation without anything else going wrong.
STOPPED, LOOP_ENDED = "stopped", "lease.elect ended, running on"


async def live_briefly(pin_dir: str, lease_dir: Path, death: str) -> None:
    """One attempt of a crash loop: an agent that gets fully up (serving, its loops running,
    leading) and dies well within its probation."""
    async with bpf_agent(pin_dir, lease_dir, **CRASH_LOOP_ENV) as agent:
        up = time.monotonic()  # start() returns right after the agent is up
        await until("the agent to lead", lambda: agent.leadership.leading, timeout=PROBATION)
        if death == LOOP_ENDED:
            elect = loop_task(agent, "lease.elect")
            elect.cancel()
            await asyncio.gather(elect, return_exceptions=True)
        assert time.monotonic() - up < PROBATION, "too slow to die on probation"
        if death == LOOP_ENDED:
            heartbeat = loop_task(agent, "xdp.heartbeat")
            await until("the heartbeat to give up", heartbeat.done, timeout=2 * PROBATION + 10)


async def crash_loop(pin_dir: str, lease_dir: Path, *, record: tuple[int, int]) -> None:
    """Restarts agents that die on probation, each death in turn, at least four times and until
    the node fails open; after each one the pinned HEARTBEAT record must be `record`."""
    restarts = 0
    while restarts < 4 or not fails_open(pin_dir):
        death = (STOPPED, LOOP_ENDED)[restarts % 2]
        await live_briefly(pin_dir, lease_dir, death)
        restarts += 1
        assert xdp_net.pinned_heartbeat(pin_dir) == record, (
            f"restart {restarts} ({death}) left the heartbeat record at "
            f"{xdp_net.pinned_heartbeat(pin_dir)}, not {record}")


async def test_a_crash_loop_on_probation_never_refreshes_so_the_node_fails_open(
    bpffs_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CrashLoopBackOff after start-up: an agent ran and vouched; each of its successors gets
    fully up (serving, leading) and dies within its probation. None of them refreshes the
    heartbeat, however many restarts, and FAIL_OPEN_AFTER takes effect."""
    caplog.set_level(logging.INFO, logger="gossip_agent.xdp")
    async with bpf_agent(bpffs_dir, tmp_path, **CRASH_LOOP_ENV):
        stamp, _ = xdp_net.pinned_heartbeat(bpffs_dir)  # a new node: the clock's start
        await until("the first refresh",
                    lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != stamp,
                    timeout=PROBATION + 30)
    await crash_loop(bpffs_dir, tmp_path, record=xdp_net.pinned_heartbeat(bpffs_dir))
    assert age_s(bpffs_dir) > CRASH_LOOP_FAIL_OPEN_AFTER
    gave_up = [r.getMessage() for r in caplog.records if "on probation, never" in r.getMessage()]
    assert gave_up and "task lease.elect ended on probation" in gave_up[0], gave_up


async def test_the_heartbeat_starts_once_the_agent_has_been_alive_for_its_probation(
    bpffs_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent that stays up past its probation refreshes, then keeps refreshing; the log
    says when the probation begins and when the heartbeat starts."""
    caplog.set_level(logging.INFO, logger="gossip_agent.xdp")
    async with bpf_agent(bpffs_dir, tmp_path, **CRASH_LOOP_ENV):
        up_ns = time.monotonic_ns()  # start() returns right after the agent is up
        stamp, _ = xdp_net.pinned_heartbeat(bpffs_dir)  # a new node: the clock's start
        await until("the first refresh",
                    lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != stamp,
                    timeout=PROBATION + 30)
        first, after = xdp_net.pinned_heartbeat(bpffs_dir)
        assert after == int(CRASH_LOOP_FAIL_OPEN_AFTER * 1e9)
        assert (first - up_ns) / 1e9 > PROBATION - 0.01, "refreshed on probation"
        await until("the next refresh", lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != first)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("heartbeat:")]
    probation = (f"heartbeat: on probation for {PROBATION:g} s (no refresh until the agent has "
                 "been up and alive that long)")
    assert probation in said, said
    then = said[said.index(probation) + 1:]
    assert then and then[0].startswith("heartbeat: the agent is up, the XDP program "
                                         "enforces"), said


async def test_a_crash_loop_fails_open_where_the_predecessor_never_would(
    bpffs_dir: str, tmp_path: Path
) -> None:
    """An agent run with FAIL_OPEN_AFTER=0 writes "never" on the record (at once: no
    probation). Its successors, with a FAIL_OPEN_AFTER, crash-loop on probation: each puts its
    own FAIL_OPEN_AFTER on the record, keeping the last refresh, and the node fails open."""
    async with bpf_agent(bpffs_dir, tmp_path, FAIL_OPEN_AFTER="0"):
        await until("the predecessor's heartbeat",
                    lambda: xdp_net.pinned_heartbeat(bpffs_dir)[0] != 0)
    refreshed, after = xdp_net.pinned_heartbeat(bpffs_dir)
    assert after == 0
    await crash_loop(bpffs_dir, tmp_path,
                     record=(refreshed, int(CRASH_LOOP_FAIL_OPEN_AFTER * 1e9)))


async def test_a_crash_loop_on_a_new_node_fails_open_after_its_first_start(
    bpffs_dir: str, tmp_path: Path
) -> None:
    """No heartbeat was ever written here (a record of zeros says "never"). The first agent
    starts the clock as it starts, so the node enforces at once, and when every attempt dies on
    probation the node fails open FAIL_OPEN_AFTER after that first start."""
    started = time.monotonic_ns()
    await live_briefly(bpffs_dir, tmp_path, STOPPED)
    refreshed, after = xdp_net.pinned_heartbeat(bpffs_dir)
    assert after == int(CRASH_LOOP_FAIL_OPEN_AFTER * 1e9)
    assert refreshed > started, "the first start did not start the clock"
    await crash_loop(bpffs_dir, tmp_path, record=(refreshed, after))
