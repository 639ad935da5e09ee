"""tools/mapbench.py measures what it says: real pinned maps end up holding the last table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import require_bpf

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import mapbench  # noqa: E402


def test_map_benchmark_reports_both_cases_over_every_run() -> None:
    require_bpf()
    results = mapbench.run(runs=5)  # raises if the map does not hold the last table
    assert [r["case"] for r in results] == ["full-churn", "one-entry"]
    for result in results:
        assert result["runs"] == 5
        assert 0 < result["median_us"] <= result["p99_us"]  # type: ignore[operator]
