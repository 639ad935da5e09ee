"""Wake-up latency: from the first packet to a zero-replica service on any node to the scale-up
request (the /scale PATCH) at the API server.

A namespaced cluster (lab.netns) of --nodes agent processes, each with the real
XDP program on its pod's veth, SOURCE=kubernetes against the fake API server on the cluster
network. --wakes Services (10.96.200.0 and up), each naming its own Deployment at 0 replicas,
are in every node's map at 0. Then, one at a time, one UDP datagram goes from a pod (round robin
over the nodes, so most wakes start on a follower and travel: XDP ring buffer -> that agent's
reporter -> Gossip/Report to the leader -> the scaler's /scale read and PATCH) to the next
sleeping Service. A wake's latency runs from just before the datagram is sent to the moment the
fake API server received the PATCH (its request log, stamped with this process's
time.monotonic(), the clock the send was timed with).

Measured on a cluster at rest: every map holds the sleeping Services, every program is attached
and the leader's scaler has made its warm-up read (scaling/loop.py). Each Service is woken once,
so the SCALE_UP_COOLDOWN never delays a measurement. Prints median,
p99 and max per run and the medians over --runs runs (or one JSON line with --json).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from typing import Any

from gossip_agent.core import services, snapshots
from lab import fakekube, netns

PREFIX = "ga8w"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-wakebench"
FIRST_IP = snapshots.parse_ip("10.96.200.0")
PORT = 7777
START_DEADLINE = 120.0  # seconds: N agents compile the XDP program (~3 s of CPU each) on 2 cores
WAKE_DEADLINE = 10.0  # one wake; anything near this is a failure, not a latency
ENV = {"SOURCE": "kubernetes", "SCALE_UP_COOLDOWN": "5"}


def service_ip(index: int) -> str:
    return snapshots.format_ip(FIRST_IP + index)


def sleeping(index: int) -> list[dict[str, Any]]:
    name = f"w{index}"
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": "default"},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}},
                               "spec": {"containers": [{"name": "c", "image": "x"}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": "default", "annotations": {
             services.REFERENCE: f"deployment/{name}", services.SCALE_DOWN_TIME: "3600"}},
         "spec": {"clusterIP": service_ip(index), "ports": [{"port": PORT}]}},
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ready(cluster: netns.Cluster, wakes: int) -> bool:
    expected = {FIRST_IP + i: 0 for i in range(wakes)}
    for node in cluster.nodes:
        if cluster.pinned_table(node) != expected:
            return False
        link = netns.ip(node.netns, "link", "show", node.veth, check=False).stdout
        if "xdp" not in link:
            return False
    return True


def wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def patch_at(kube: fakekube.FakeKube, name: str) -> float | None:
    for request in reversed(kube.requests):
        if request.verb == "patch" and request.resource == "deployments/scale" and (
                request.name == name):
            return request.at
    return None


def run_once(*, nodes: int, wakes: int, log_dir: str) -> list[float]:
    """One cluster, `wakes` wakes; their latencies in ms."""
    netns.sweep_stale(PREFIX)
    root = os.path.join(BPFFS_ROOT, uuid.uuid4().hex)
    with netns.Cluster(nodes, prefix=PREFIX, bpffs_root=root, log_dir=log_dir,
                       env=ENV) as cluster:
        host = cluster.add_host("api")
        kube = fakekube.FakeKube(host=host.ip)
        netns.run_in(host.netns, kube.start)
        try:
            cluster.env["KUBECONFIG"] = kube.write_kubeconfig(os.path.join(log_dir, "kubeconfig"))
            for index in range(wakes):
                for obj in sleeping(index):
                    kube.create_object(obj)
            cluster.start()
            wait("every map holding the sleeping services and every XDP program attached",
                 lambda: ready(cluster, wakes), START_DEADLINE)
            # A cluster at rest: the leader's scaler has made its warm-up read (its client's
            # first call costs hundreds of ms; a leader makes it right after taking office).
            wait("the leader's warm-up read of /scale", lambda: kube.request_count(
                verb="get", resource="deployments/scale") > 0, START_DEADLINE)
            return [wake(cluster, kube, index) for index in range(wakes)]
        finally:
            kube.close()


def wake(cluster: netns.Cluster, kube: fakekube.FakeKube, index: int) -> float:
    node = cluster.nodes[index % len(cluster.nodes)]
    sent = time.monotonic()
    cluster.send_from_pod(node, service_ip(index), port=PORT, count=1)
    name = f"w{index}"
    wait(f"the scale-up PATCH of {name}", lambda: patch_at(kube, name) is not None,
         WAKE_DEADLINE)
    at = patch_at(kube, name)
    assert at is not None
    return (at - sent) * 1000


def report(*, nodes: int, wakes: int, runs: int, as_json: bool) -> int:
    results = []
    for run in range(runs):
        log_dir = tempfile.mkdtemp(prefix="gossip-wakebench-")
        try:
            latencies = run_once(nodes=nodes, wakes=wakes, log_dir=log_dir)
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)
        results.append({"run": run + 1, "nodes": nodes, "wakes": len(latencies),
                        "p50_ms": round(statistics.median(latencies), 2),
                        "p99_ms": round(percentile(latencies, 0.99), 2),
                        "max_ms": round(max(latencies), 2)})
    with contextlib.suppress(OSError):
        os.rmdir(BPFFS_ROOT)  # each run's cluster removed its own directory under it
    summary = {"nodes": nodes, "runs": runs,
               "median_p50_ms": round(statistics.median(r["p50_ms"] for r in results), 2),
               "median_p99_ms": round(statistics.median(r["p99_ms"] for r in results), 2)}
    if as_json:
        print(json.dumps({"runs": results, "summary": summary}))
        return 0
    print(f"{'run':>3} {'nodes':>5} {'wakes':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in results:
        print(f"{r['run']:>3} {r['nodes']:>5} {r['wakes']:>5} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8} {r['max_ms']:>8}")
    print(f"median over {runs} runs: p50 {summary['median_p50_ms']} ms, "
          f"p99 {summary['median_p99_ms']} ms")
    return 0
