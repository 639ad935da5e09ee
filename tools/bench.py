"""Full-convergence latency of gossip-agent on this machine.

For each cluster size N (default 8, 16, 32 agent processes on loopback, bpffs lease, pinned BPF
maps), the leader's table is first filled to 1024 entries; then --changes writes (default 200),
one at a time, each changing one service's replicas through the leader's SetService. A change's
latency runs from the leader's write (WriteResponse.written_monotonic_ns) to the moment the LAST
agent finished writing it into its map (StateEvent.applied_monotonic_ns from each agent's
WatchState). All processes share this host's CLOCK_MONOTONIC, so the difference is exact.

Prints p50 / p99 / max per N as a table, or with --json one JSON line: a list of objects with
nodes, p50_ms, p99_ms, max_ms (and changes, entries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import grpc.aio

from gossip_agent import localcluster
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

TABLE_ENTRIES = 1024
FIRST_IP = 0x0A600000  # 10.96.0.0


def ip_of(index: int) -> str:
    value = FIRST_IP + index
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


class Watcher:
    """Keeps a WatchState stream open to one agent and records when each version applied."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.applied: dict[tuple[int, int], int] = {}
        self.latest = (0, 0)
        self.event = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"bench.watch[{address}]")

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            async for event in pb_grpc.StateStub(channel).WatchState(pb.WatchStateRequest()):
                version = (event.version.term, event.version.seq)
                self.applied[version] = event.applied_monotonic_ns
                self.latest = max(self.latest, version)
                self.event.set()

    async def wait_for(self, version: tuple[int, int], timeout: float) -> int:
        async with asyncio.timeout(timeout):
            while self.latest < version:
                self.event.clear()
                await self.event.wait()
        # A watcher that skipped to a newer version applied ours at that moment at the latest.
        return min(ns for v, ns in self.applied.items() if v >= version)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def fill_table(stub: pb_grpc.StateStub) -> None:
    semaphore = asyncio.Semaphore(64)

    async def one(index: int) -> None:
        async with semaphore:
            await stub.SetService(pb.SetServiceRequest(
                ip=ip_of(index), replicas=1, name=f"bench/svc-{index}"), timeout=30)

    await asyncio.gather(*(one(i) for i in range(TABLE_ENTRIES)))


async def measure(cluster: localcluster.LocalCluster, changes: int) -> list[float]:
    addresses = cluster.addresses
    await localcluster.wait_all(addresses, what="every agent to serve", timeout=120,
                                check=lambda s: True)
    leader, _ = await localcluster.find_leader(addresses, timeout=60)
    async with grpc.aio.insecure_channel(leader) as channel:
        stub = pb_grpc.StateStub(channel)
        await fill_table(stub)
        await localcluster.wait_all(addresses, what="the full table everywhere", timeout=120,
                                    check=lambda s: len(s.entries) == TABLE_ENTRIES)
        watchers = [Watcher(a) for a in addresses]
        latencies = []
        try:
            for change in range(changes):
                reply = await stub.SetService(pb.SetServiceRequest(
                    ip=ip_of(change % TABLE_ENTRIES), replicas=2 + change,
                    name=f"bench/svc-{change % TABLE_ENTRIES}"), timeout=30)
                version = (reply.version.term, reply.version.seq)
                applied = await asyncio.gather(*(w.wait_for(version, 30) for w in watchers))
                latencies.append((max(applied) - reply.written_monotonic_ns) / 1e6)
        finally:
            for watcher in watchers:
                watcher.task.cancel()
            await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
    if os.environ.get("BENCH_DEBUG"):
        print([round(x, 1) for x in latencies], file=sys.stderr)
    return latencies


def run_size(nodes: int, changes: int, root: str) -> dict[str, object]:
    log_dir = tempfile.mkdtemp(prefix=f"gossip-bench-{nodes}-")
    shutil.rmtree(root, ignore_errors=True)  # fresh maps: every size starts from the same state
    cluster = localcluster.LocalCluster(
        nodes, root=root, log_dir=log_dir, extra_env={"LOG_LEVEL": "warning"})
    started = time.monotonic()
    cluster.start()
    try:
        latencies = asyncio.run(measure(cluster, changes))
    finally:
        cluster.stop()
    print(f"N={nodes}: {changes} changes in {time.monotonic() - started:.1f}s (logs {log_dir})",
          file=sys.stderr)
    shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "nodes": nodes,
        "changes": changes,
        "entries": TABLE_ENTRIES,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, action="append",
                        help="cluster size; repeat for several (default 8, 16, 32)")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.nodes or [8, 16, 32]
    root = (localcluster.BPFFS_ROOT + "-bench" if localcluster.bpffs_mounted()
            and os.geteuid() == 0 else tempfile.mkdtemp(prefix="gossip-bench-"))
    results = [run_size(n, args.changes, root) for n in sizes]
    shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'nodes':>5} {'changes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for r in results:
            print(f"{r['nodes']:>5} {r['changes']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{r['max_ms']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
