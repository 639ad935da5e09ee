"""Shared test plumbing.

- require(): a missing component (bcc, bpffs, grpcurl, dnsmasq, ...) fails the run when CI=true
  and skips otherwise: CI must never pass by skipping what it was meant to test.
- Every async test is checked for tasks it leaves running: a leaked task is a failure.
- redis_server: a real redis-server per test (gossip_agent/localredis.py, reusable by any
  backend's tests).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
import pytest_asyncio

from lab import localredis as redisserver

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required component missing under CI=true: {what}")
    pytest.skip(f"missing: {what}")


BPFFS_TEST_ROOT = "/sys/fs/bpf/gossip-agent-test"


def require_bpf() -> None:
    """A mounted bpffs where maps can be created (root), bcc, and bpftool as a second reader."""
    from gossip_agent.dataplane import bpfmap

    ok, why = bpfmap.bpf_available()
    require(ok, f"BPF maps on bpffs: {why}")
    require(shutil.which("bpftool") is not None, "bpftool")


def remove_bpffs_tree(path: str) -> None:
    """rm -r for bpffs (pins unlink like files); the shared test root goes once empty."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    if os.path.isdir(path):
        os.rmdir(path)
    try:
        os.rmdir(BPFFS_TEST_ROOT)
    except OSError:
        pass  # other tests (or runs) still use it


@pytest.fixture
def bpffs_dir() -> Iterator[str]:
    """A fresh directory on bpffs for one test, removed with everything pinned in it."""
    require_bpf()
    path = f"{BPFFS_TEST_ROOT}/{uuid.uuid4().hex}"
    yield path
    remove_bpffs_tree(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            # First in the list: set up first, torn down last, after the test's own fixtures.
            item.fixturenames.insert(0, "_no_leaked_tasks")


@pytest_asyncio.fixture
async def _no_leaked_tasks():  # type: ignore[no-untyped-def]
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks()
        if t not in before and t is not asyncio.current_task() and not t.done()
    ]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test left tasks running: {[t.get_name() for t in leaked]}"


@pytest.fixture
def fake_kube() -> Iterator[object]:
    """A fresh fake Kubernetes API server on 127.0.0.1 (lab.fakekube)."""
    from lab import fakekube

    with fakekube.FakeKube() as kube:
        yield kube


@pytest.fixture
def kubeconfig(fake_kube, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An ordinary kubeconfig file pointing at fake_kube, for KUBECONFIG and kubectl."""
    return str(fake_kube.write_kubeconfig(str(tmp_path / "kubeconfig")))


@pytest.fixture
def redis_server() -> Iterator[redisserver.RedisServer]:
    """A fresh redis-server on a free loopback port (no persistence), killed by PID after."""
    require(redisserver.available(), "redis-server (Debian package redis-server)")
    server = redisserver.RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()
