"""The namespaced-cluster harness itself (lab.netns): it cleans up whatever
happens, and sweeps what a killed run left behind without touching live runs.

Later issues build on this harness (Redis and Kubernetes backends, chaos tests), so its cleanup
promise is tested on its own: after a failing `with` body, no namespace, process or pin of the
run is left.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from tests.e2e.test_netns_cluster import BPFFS_ROOT, PREFIX, require_netns_cluster

pytestmark = pytest.mark.e2e


def namespaces() -> set[str]:
    try:
        return set(os.listdir(netns.NETNS_DIR))
    except FileNotFoundError:
        return set()


@pytest.fixture
def root() -> Iterator[str]:
    """A bpffs root for one cluster (the cluster removes it); the shared parent goes once
    no other run uses it."""
    require_netns_cluster()
    yield os.path.join(BPFFS_ROOT, uuid.uuid4().hex)
    with contextlib.suppress(OSError):
        os.rmdir(BPFFS_ROOT)


def test_a_failing_body_leaves_no_namespace_process_or_pin_behind(
    tmp_path: Path, root: str,
) -> None:
    cluster = netns.Cluster(2, prefix=PREFIX, bpffs_root=root, log_dir=str(tmp_path),
                            services=("10.96.0.10",))
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="the test body failed"), cluster:
        cluster.start()
        pids = [n.process.pid for n in cluster.nodes if n.process is not None]
        made = {n for n in namespaces() if n.startswith(cluster.run_id + "-")}
        assert len(made) == 1 + 2 * 2  # switch, and a node and a pod namespace per node
        assert os.path.isdir(root)
        raise RuntimeError("the test body failed")
    assert not [n for n in namespaces() if n.startswith(cluster.run_id + "-")]
    assert len(pids) == 2
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "an agent outlived cleanup"
    assert not netns.marked_processes(f"{netns.MARKER}={cluster.run_id}")
    assert not os.path.exists(root)


def test_sweep_removes_namespaces_of_dead_runs_and_keeps_those_of_live_ones() -> None:
    require_netns_cluster()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names a run whose creator is dead
    dead = f"{PREFIX}-{gone.pid}x1-n0"
    live = f"{PREFIX}-{os.getpid()}x999-n0"
    for name in (dead, live):
        netns.run("ip", "netns", "add", name)
    try:
        removed = netns.sweep_stale(PREFIX)
        assert dead in removed
        assert live not in removed
        assert live in namespaces() and dead not in namespaces()
    finally:
        for name in (dead, live):
            netns.run("ip", "netns", "del", name, check=False)


def test_a_spawned_server_on_an_extra_host_is_reachable_from_nodes_and_stopped_by_close(
    tmp_path: Path, root: str,
) -> None:
    """What a Redis or fake-API backend test needs: a server on the cluster network."""
    with netns.Cluster(1, prefix=PREFIX, bpffs_root=root, log_dir=str(tmp_path)) as cluster:
        host = cluster.add_host("store")
        server = cluster.spawn(host.netns, [sys.executable, "-m", "http.server", "--bind",
                                            host.ip, "8080"], log_name="store.log")
        node = cluster.nodes[0]
        deadline = time.monotonic() + 20
        while True:
            sock = netns.socket_in(node.netns, kind=socket.SOCK_STREAM)
            sock.settimeout(2)
            try:
                sock.connect((host.ip, 8080))
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = sock.recv(64)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server at {host.ip}:8080 never answered from {node.name}")
                time.sleep(0.1)
            finally:
                sock.close()
        assert reply.startswith(b"HTTP/1.0 200")
    assert server.poll() is not None, "close() left the spawned server running"
