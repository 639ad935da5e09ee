"""The bpffs lease against the real kernel: flock on bpffs directories, the record in a pinned
BPF map read back with bpftool, failover when a holder process is SIGKILLed, and the
ordinary-directory fallback. Without bpffs, bcc or bpftool the bpffs tests skip locally and
FAIL in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gossip_agent import errors
from gossip_agent.dataplane import bpfmap
from gossip_agent.leases import base, bpffs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture
def lease_dir(bpffs_dir: str) -> str:
    return bpffs_dir


async def poll(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Waits until check() is true; fails naming what was awaited."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def bpftool_record(lease_dir: str) -> tuple[str, int, int]:
    """(holder, term, acquired_unix_ns) as bpftool, an independent reader, shows LEADER."""
    out = subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", f"{lease_dir}/LEADER"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    [item] = json.loads(out.stdout)
    raw = bytes(int(b, 16) for b in item["value"])
    holder, term, acquired_ns = struct.unpack("=128sQQ", raw)
    return holder.rstrip(b"\0").decode(), term, acquired_ns


def bpftool_write_record(lease_dir: str, holder: str, term: int) -> None:
    raw = struct.pack("=128sQQ", holder.encode(), term, time.time_ns())
    out = subprocess.run(
        ["bpftool", "map", "update", "pinned", f"{lease_dir}/LEADER", "key", "0", "0", "0", "0"]
        + ["value", *(str(b) for b in raw)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


async def test_second_lease_on_the_same_dir_gets_none(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    b = bpffs.BpffsLease(lease_dir=lease_dir, node="node-b")
    try:
        grant = await a.try_acquire(min_term=0)
        assert grant == base.Grant(a.holder, 1)
        assert await b.try_acquire(min_term=0) is None
        assert (a.note, a.backend) == ("", "bpffs")
        assert await a.renew() and not await b.renew()
    finally:
        await a.close()
        await b.close()


async def test_terms_strictly_increase_and_release_hands_over(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    b = bpffs.BpffsLease(lease_dir=lease_dir, node="node-b")
    seen: list[int] = []
    try:
        for holder in (a, b, a, b):
            grant = await holder.try_acquire(min_term=0)
            assert grant is not None, f"{holder.holder} could not acquire after a release"
            seen.append(grant.term)
            await holder.release()
            released = await holder.read()
            assert released is not None and (released.holder, released.term) == ("", grant.term)
    finally:
        await a.close()
        await b.close()
    assert seen == [1, 2, 3, 4]


async def test_min_term_lifts_the_term(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    b = bpffs.BpffsLease(lease_dir=lease_dir, node="node-b")
    try:
        assert (await a.try_acquire(min_term=42)) == base.Grant(a.holder, 42)
        await a.release()
        # The backend's counter (43) is above min_term: the counter wins.
        assert (await b.try_acquire(min_term=5)) == base.Grant(b.holder, 43)
    finally:
        await a.close()
        await b.close()


async def test_sigkilled_holder_frees_the_lease_at_once(lease_dir: str) -> None:
    script = (
        "import asyncio, sys, time\n"
        "from gossip_agent.leases import bpffs\n"
        "lease = bpffs.BpffsLease(lease_dir=sys.argv[1], node='child')\n"
        "asyncio.run(lease.try_acquire(min_term=7))\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, lease_dir, env=env)
    observer = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    try:

        async def child_holds() -> bool:
            record = await observer.read()
            return record is not None and record.node == "child"

        await poll("the child process to acquire the lease", child_holds)
        assert await observer.try_acquire(min_term=0) is None
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), timeout=30)

        grant = await observer.try_acquire(min_term=0)
        assert grant == base.Grant(observer.holder, 8)
    finally:
        if child.returncode is None:
            child.kill()
            await asyncio.wait_for(child.wait(), timeout=30)
        await observer.close()


async def test_bump_moves_the_term_and_needs_the_lease(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    b = bpffs.BpffsLease(lease_dir=lease_dir, node="node-b")
    try:
        await a.try_acquire(min_term=0)
        assert await a.bump(min_term=0) == 2
        assert await a.bump(min_term=10) == 10
        record = await b.read()
        assert record is not None and (record.holder, record.term) == (a.holder, 10)
        with pytest.raises(errors.LeaseLost, match="not held"):
            await b.bump(min_term=0)
    finally:
        await a.close()
        await b.close()


async def test_renew_steps_down_when_someone_rewrote_the_record(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    b = bpffs.BpffsLease(lease_dir=lease_dir, node="node-b")
    try:
        await a.try_acquire(min_term=0)
        bpftool_write_record(lease_dir, "intruder#1-abcdef", 5)

        assert not await a.renew()
        assert not a.held
        with pytest.raises(errors.LeaseLost, match="not held"):
            await a.bump(min_term=0)
        # Stepping down dropped the lock: another agent takes over above the intruder's term.
        assert (await b.try_acquire(min_term=0)) == base.Grant(b.holder, 6)
    finally:
        await a.close()
        await b.close()


async def test_record_is_readable_with_bpftool(lease_dir: str) -> None:
    a = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    before = time.time_ns()
    try:
        grant = await a.try_acquire(min_term=3)
        assert grant is not None
        holder, term, acquired_ns = bpftool_record(lease_dir)
        assert (holder, term) == (a.holder, 3)
        assert before - 10**9 <= acquired_ns <= time.time_ns() + 10**9
    finally:
        await a.close()
    assert bpftool_record(lease_dir)[:2] == ("", 3)


async def test_lease_and_data_plane_can_share_one_directory(lease_dir: str) -> None:
    plane = bpfmap.open_pinned(pin_dir=lease_dir, max_entries=16)
    lease = bpffs.BpffsLease(lease_dir=lease_dir, node="node-a")
    try:
        assert await lease.try_acquire(min_term=0) is not None
    finally:
        await lease.close()
        plane.close()


async def test_ordinary_directory_fallback_works_and_says_so(tmp_path: Path) -> None:
    directory = str(tmp_path / "lease")
    a = bpffs.BpffsLease(lease_dir=directory, node="node-a")
    b = bpffs.BpffsLease(lease_dir=directory, node="node-b")
    try:
        assert a.note == (
            f"flock on an ordinary directory: the BPF filesystem is not available at {directory}"
        )
        assert await a.read() is None
        assert (await a.try_acquire(min_term=0)) == base.Grant(a.holder, 1)
        assert await b.try_acquire(min_term=0) is None
        stored = await asyncio.to_thread((tmp_path / "lease" / "LEADER.json").read_text)
        assert json.loads(stored)["holder"] == a.holder
        assert await a.bump(min_term=4) == 4
        await a.release()
        assert (await b.try_acquire(min_term=0)) == base.Grant(b.holder, 5)
    finally:
        await a.close()
        await b.close()
    assert sorted(os.listdir(directory)) == ["LEADER.json", "leader_lock"]


async def test_unusable_lease_dir_raises_lease_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    lease = bpffs.BpffsLease(lease_dir=str(blocker / "lease"), node="node-a")

    with pytest.raises(errors.LeaseUnavailable, match=str(blocker)):
        await lease.try_acquire(min_term=0)
