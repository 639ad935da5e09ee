"""The fail-open heartbeat of a real agent (in this event loop, on real pinned maps): it is
refreshed while the agent's own loops live, whatever its dependencies do, and stops when one
of the loops it vouches for dies, so FAIL_OPEN_AFTER takes effect.

The heartbeat is read from <pin_dir>/HEARTBEAT as the XDP program reads it. FAIL_OPEN_AFTER is
in minutes: 0.01 is 0.6 s (a refresh every 0.15 s), 0.05 is 3 s (every 0.75 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gossip_agent import agent as agent_mod
from gossip_agent import config, localcluster
from tests.integration import xdp_net
from tests.integration.test_grpc_api import agent_env, settle

pytestmark = pytest.mark.integration


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
