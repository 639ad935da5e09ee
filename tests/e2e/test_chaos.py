"""A short seeded fault campaign per backend (tools/chaos.py): 5 agents in network namespaces,
25 s of faults while a client writes, then the checker (tools/lab/chaoscheck.py).

Each run must have injected faults of at least two kinds and had writes acknowledged by a
peer, so `violations == []` is a statement about a cluster that was really disturbed; the
checker's rules are shown to fire on wrong histories in tests/unit/test_chaoscheck.py. The long
campaign (10 minutes per backend) is in docs/testing.md's "Fault campaign".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns
from tests.conftest import require, require_bpf

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 25
SEEDS = {"bpffs": 11, "redis": 12, "lease": 13, "configmap": 14}
# Start-up (5 agents importing grpc and kubernetes on 2 shared cores), the faults, the heal and
# the convergence bound (24 s at most), with margin for a loaded machine.
RUN_TIMEOUT = 240


@pytest.mark.parametrize("backend", sorted(SEEDS))
def test_a_seeded_fault_campaign_finds_no_violation(backend: str, tmp_path: Path) -> None:
    gaps = netns.missing()
    require(not gaps, "a namespaced cluster: " + ", ".join(gaps))
    require_bpf()
    require(shutil.which("iptables") is not None, "iptables (tools/setup_system.sh)")
    if backend == "redis":
        require(shutil.which("redis-server") is not None, "redis-server")
    log_dir = tmp_path / backend
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "chaos.py"), "--backend", backend,
         "--seconds", str(SECONDS), "--seed", str(SEEDS[backend]), "--json",
         "--log-dir", str(log_dir)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    print(done.stdout)
    print(done.stderr[-4000:])
    lines = done.stdout.strip().splitlines()
    assert lines, f"chaos.py printed nothing (exit {done.returncode})"
    result = json.loads(lines[-1])
    assert "error" not in result, result["error"]
    assert result["violations"] == [], "\n".join(result["violations"])
    assert done.returncode == 0
    assert result["faults"]["count"] >= 4 and len(result["faults"]["by_kind"]) >= 2, result
    assert result["faults"]["failed_to_apply"] == 0, result["faults"]
    assert result["writes_replicated"] >= 10, result
    assert result["convergence_s"] is not None
