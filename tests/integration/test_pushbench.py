"""tools/pushbench.py measures what it says: every push it times was adopted by a real
follower behind the real PushStream handler, and acknowledged when asked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import require_bpf

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import pushbench  # noqa: E402


@pytest.mark.parametrize(("ack", "path"), [(True, "port"), (False, "port"), (True, "stream")])
def test_push_benchmark_reports_the_follower_and_writer_cpu_of_adopted_pushes(
    ack: bool, path: str
) -> None:
    require_bpf()
    # run() raises unless every push was acknowledged ADOPTED (ack) or none was refused, and
    # unless every measured push took the path asked for (the push port, or the stream).
    result = pushbench.run(count=20, gap=0.005, ack=ack, rest=0.2, path=path)
    assert result["pushes"] == 20 and result["ack"] is ack and result["bpf"] is True
    assert result["path"] == path
    # CPU per push, rest subtracted: positive, and well under a second.
    assert 0 < result["follower_ms_per_push"] < 1000  # type: ignore[operator]
    assert 0 < result["writer_ms_per_push"] < 1000  # type: ignore[operator]
