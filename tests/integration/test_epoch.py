"""`gossip-agent epoch show|reset` (leases/epoch.py) against the real backends: a flock lease
directory's record and a real redis-server; the next agent elected leads above the reset."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from gossip_agent.leases import bpffs
from lab import localcluster
from lab import localredis as redisserver
from tests.integration.test_grpc_api import ELECTION_DEADLINE, address, running_agents

pytestmark = pytest.mark.integration


def epoch(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gossip_agent", "epoch", *args],
                          env={"PATH": "/usr/bin:/bin", "PROFILE": "local", **env},
                          capture_output=True, text=True, timeout=60)


async def test_epoch_reset_moves_the_bpffs_record_up_and_refuses_lowering_or_a_held_lease(
    tmp_path: Path,
) -> None:
    env = {"BPF_LEASE_DIR": str(tmp_path)}
    assert "no lease record yet" in epoch(env, "show").stdout
    moved = epoch(env, "reset", "--to", "100")
    assert moved.returncode == 0, moved.stderr
    assert "from 0 to 100" in moved.stdout
    assert "term 100, held by nobody" in epoch(env, "show").stdout
    lower = epoch(env, "reset", "--to", "5")
    assert lower.returncode == 1 and "below the recorded term 100" in lower.stderr
    holder = bpffs.BpffsLease(lease_dir=str(tmp_path), node="node-x")
    grant = await holder.try_acquire(min_term=1)
    assert grant is not None and grant.term == 101
    try:
        held = epoch(env, "reset", "--to", "500")
        assert held.returncode == 1 and "held by node-x" in held.stderr
    finally:
        await holder.release()
    assert "term 101, held by nobody" in epoch(env, "show").stdout
    missing = epoch(env, "reset")
    assert missing.returncode == 2 and "--to" in missing.stderr


async def test_after_an_epoch_reset_on_redis_the_next_leader_leads_above_it(
    tmp_path: Path, redis_server: redisserver.RedisServer,
) -> None:
    backend = {"COORDINATION_BACKEND": "redis", "REDIS_URL": redis_server.url,
               "REDIS_KEY_PREFIX": "epoch:"}
    moved = epoch(backend, "reset", "--to", "1000")
    assert moved.returncode == 0, moved.stderr
    assert "term 1000, held by nobody" in epoch(backend, "show").stdout
    async with running_agents(2, lease_dir=tmp_path, **backend) as agents:
        _, leader = await localcluster.find_leader([address(a) for a in agents],
                                                   ELECTION_DEADLINE)
        assert leader.term == 1001
    assert "term 1001" in epoch(backend, "show").stdout
