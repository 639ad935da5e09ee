"""tools/simulate.py at N = 1,000 on virtual time: real engines over the in-memory network with
the cost model, 1 % loss, 1 % of agents dead and a leader failover half-way. Every change must
reach every live agent (the run raises otherwise); the figures must say what the star costs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import simulate  # noqa: E402


def test_a_thousand_agents_converge_on_every_change_through_loss_deaths_and_a_failover() -> None:
    started = time.monotonic()
    result = simulate.main_result(["--nodes", "1000", "--changes", "10"])
    assert time.monotonic() - started < 60, "N = 1,000 must run in under a minute"
    assert result["nodes"] == 1000 and result["dead"] == 11  # 1 % and the failed leader
    assert result["failover"] is True and result["loss"] == 0.01
    # The star: the leader sends every change to every live peer, and pays for it.
    assert result["max_sends_per_agent_per_change"] >= 980
    assert result["max_connections_per_agent"] >= 980
    assert result["leader_cpu_ms_per_change"] >= 980 * 0.08
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 1000
