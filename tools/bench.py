"""Full-convergence latency of gossip-agent on this machine.

For each cluster size N (default 8, 16, 32 agent processes on loopback, bpffs lease, pinned BPF
maps), the leader's table is first filled to 1024 entries; then --changes writes (default 200),
one every --gap seconds after the previous reply, each changing one service's replicas through
the leader's SetService. A change's latency runs from the leader's write
(WriteResponse.written_monotonic_ns) to the moment the LAST agent finished writing it into its
map (applied_monotonic_ns in each agent's GetHistory, read after the changes, so no watcher
stream loads the agents while they are measured). All processes share this host's
CLOCK_MONOTONIC, so the difference is exact.

Prints p50 / p99 / max per N as a table, or with --json one JSON line: a list of objects with
nodes, p50_ms, p99_ms, max_ms (and changes, entries).

--mtls measures every N twice per run, with mutual TLS off and on (a fresh CA, a certificate
per agent, the admin certificate for the benchmark's own calls), --runs times alternating,
and prints the medians and the ratio on/off of the p50 (the goal: under 1.2).

--failover measures leader failover instead (tools/failover.py): SIGKILL of the leader -> every
survivor holds a snapshot of the new term, median and max over --kills rounds per --backend.
`tools/bench.py kube ...` measures the configmap backend instead (tools/bench_kube.py).
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

import failover  # tools/failover.py, next to this script
import mapbench  # tools/ is on sys.path when this file runs as a script
import wakebench  # tools/wakebench.py: the scaling loop's wake-up latency (issue 8)

from gossip_agent import localcluster
from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

TABLE_ENTRIES = 1024
HISTORY_BATCH = 100  # changes between history collections (agents keep 256 adoptions)
SETTLE_SECONDS = 1.0  # before collecting: anything slower than this is a failure to converge
FIRST_IP = 0x0A600000  # 10.96.0.0


def ip_of(index: int) -> str:
    value = FIRST_IP + index
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


async def histories(
    addresses: list[str], channels: tls.ChannelFactory
) -> list[list[tuple[tuple[int, int], int]]]:
    """Each agent's recent adoptions as ((term, seq), applied_monotonic_ns)."""

    async def one(address: str) -> list[tuple[tuple[int, int], int]]:
        async with channels.open(address, []) as channel:
            reply = await pb_grpc.StateStub(channel).GetHistory(pb.GetHistoryRequest(), timeout=10)
        return [((e.version.term, e.version.seq), e.applied_monotonic_ns) for e in reply.events]

    return list(await asyncio.gather(*(one(a) for a in addresses)))


def applied_at(history: list[tuple[tuple[int, int], int]], version: tuple[int, int]) -> int:
    """When an agent's map first held `version`: it may have skipped straight to a newer one."""
    times = [ns for v, ns in history if v >= version and ns > 0]
    if not times:
        raise RuntimeError(f"an agent never adopted {version}")
    return min(times)


def latencies_of(
    written: list[tuple[tuple[int, int], int]],
    agent_histories: list[list[tuple[tuple[int, int], int]]],
) -> list[float]:
    """Leader's write -> the last agent's map write, per change, in milliseconds."""
    return [
        (max(applied_at(h, version) for h in agent_histories) - written_ns) / 1e6
        for version, written_ns in written
    ]


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


async def measure(
    cluster: localcluster.LocalCluster, changes: int, gap: float
) -> list[float]:
    addresses, channels = cluster.addresses, cluster.client
    await localcluster.wait_all(addresses, what="every agent to serve", timeout=120,
                                check=lambda s: True, channels=channels)
    leader, _ = await localcluster.find_leader(addresses, timeout=60, channels=channels)
    async with channels.open(leader, []) as channel:
        stub = pb_grpc.StateStub(channel)
        await fill_table(stub)
        await localcluster.wait_all(addresses, what="the full table everywhere", timeout=120,
                                    check=lambda s: len(s.entries) == TABLE_ENTRIES,
                                    channels=channels)
        latencies: list[float] = []
        written: list[tuple[tuple[int, int], int]] = []
        for change in range(changes):
            reply = await stub.SetService(pb.SetServiceRequest(
                ip=ip_of(change % TABLE_ENTRIES), replicas=2 + change,
                name=f"bench/svc-{change % TABLE_ENTRIES}"), timeout=30)
            written.append(((reply.version.term, reply.version.seq), reply.written_monotonic_ns))
            await asyncio.sleep(gap)
            # Agents keep their last 256 adoptions: collect before they roll over.
            if len(written) == HISTORY_BATCH or change == changes - 1:
                await asyncio.sleep(SETTLE_SECONDS)
                latencies += latencies_of(written, await histories(addresses, channels))
                written = []
    return latencies


def run_size(
    nodes: int, changes: int, gap: float, root: str, *, mtls: bool = False
) -> dict[str, object]:
    log_dir = tempfile.mkdtemp(prefix=f"gossip-bench-{nodes}-")
    shutil.rmtree(root, ignore_errors=True)  # fresh maps: every size starts from the same state
    cluster = localcluster.LocalCluster(
        nodes, root=root, log_dir=log_dir, extra_env={"LOG_LEVEL": "warning"}, mtls=mtls)
    started = time.monotonic()
    cluster.start()
    try:
        latencies = asyncio.run(measure(cluster, changes, gap))
    finally:
        cluster.stop()
    print(f"N={nodes}{' mTLS' if mtls else ''}: {changes} changes in "
          f"{time.monotonic() - started:.1f}s (logs {log_dir})", file=sys.stderr)
    shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "nodes": nodes,
        "mtls": mtls,
        "changes": changes,
        "entries": TABLE_ENTRIES,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
    }


def mtls_main(args: argparse.Namespace, root: str) -> int:
    """Each N with mTLS off then on, --runs times; medians of the runs' p50 and p99."""
    rows = []
    for nodes in args.nodes or [8, 32]:
        runs: dict[bool, list[dict[str, object]]] = {False: [], True: []}
        for _ in range(args.runs):
            for mtls in (False, True):
                runs[mtls].append(run_size(nodes, args.changes, args.gap, root, mtls=mtls))
        row: dict[str, object] = {"nodes": nodes, "runs": args.runs, "changes": args.changes}
        for mtls, name in ((False, "plain"), (True, "mtls")):
            for key in ("p50_ms", "p99_ms"):
                row[f"{name}_{key}"] = round(statistics.median(
                    float(str(r[key])) for r in runs[mtls]), 2)
        row["ratio_p50"] = round(float(str(row["mtls_p50_ms"])) /
                                 float(str(row["plain_p50_ms"])), 3)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'nodes':>5} {'runs':>4} {'plain p50':>9} {'mTLS p50':>9} {'plain p99':>9} "
          f"{'mTLS p99':>9} {'ratio p50':>9}")
    for r in rows:
        print(f"{r['nodes']:>5} {r['runs']:>4} {r['plain_p50_ms']:>9} {r['mtls_p50_ms']:>9} "
              f"{r['plain_p99_ms']:>9} {r['mtls_p99_ms']:>9} {r['ratio_p50']:>9}")
    return 0


def failover_main(args: argparse.Namespace) -> int:
    results = failover.run(backends=args.backend or failover.BACKENDS,
                           nodes=args.failover_nodes, kills=args.kills, env=args.env)
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    else:
        print(failover.table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kube"]:  # the Kubernetes backends' failover and API load (bench_kube.py)
        import bench_kube

        return bench_kube.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, action="append",
                        help="cluster size; repeat for several (default 8, 16, 32)")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05,
                        help="seconds between changes (after the leader's reply)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--failover", action="store_true",
                        help="measure leader failover per backend (tools/failover.py)")
    parser.add_argument("--backend", action="append", choices=failover.BACKENDS,
                        help="--failover: backend to measure; repeat (default bpffs and redis)")
    parser.add_argument("--kills", type=int, default=10, help="--failover: rounds per backend")
    parser.add_argument("--failover-nodes", type=int, default=5, help="--failover: agents")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="--failover: extra agent environment, e.g. LEASE_TTL=5")
    parser.add_argument("--map", action="store_true",
                        help="run the map-write benchmark instead (tools/mapbench.py)")
    parser.add_argument("--map-runs", type=int, default=1000,
                        help="applications per case for --map")
    parser.add_argument("--mtls", action="store_true",
                        help="each N with mutual TLS off and on; prints the ratio (default N: "
                             "8 and 32)")
    parser.add_argument("--wake", action="store_true",
                        help="measure wake-up latency, first packet -> /scale PATCH "
                             "(tools/wakebench.py; root, netns, bcc)")
    parser.add_argument("--wakes", type=int, default=60, help="--wake: wakes per run")
    parser.add_argument("--wake-nodes", type=int, default=8, help="--wake: agents")
    parser.add_argument("--runs", type=int, default=3,
                        help="--mtls: runs per N and mode; --wake: runs (medians reported)")
    args = parser.parse_args(argv)
    if args.wake:
        return wakebench.report(nodes=args.wake_nodes, wakes=args.wakes, runs=args.runs,
                                as_json=args.json)
    if args.map:
        return mapbench.report(runs=args.map_runs, as_json=args.json)
    if args.failover:
        return failover_main(args)
    sizes = args.nodes or [8, 16, 32]
    # A root of this run's own (pid): two benchmarks at once must not wipe each other's maps.
    root = (localcluster.BPFFS_ROOT + f"-bench-{os.getpid()}" if localcluster.bpffs_mounted()
            and os.geteuid() == 0 else tempfile.mkdtemp(prefix="gossip-bench-"))
    if args.mtls:
        code = mtls_main(args, root)
        shutil.rmtree(root, ignore_errors=True)
        return code
    results = [run_size(n, args.changes, args.gap, root) for n in sizes]
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
